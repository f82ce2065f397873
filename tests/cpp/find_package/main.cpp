// Links kvserve::engine from an installed package and checks that it works.
#include <cstdio>
#include <cstring>

#include "kvserve/copy_blocks.h"
#include "kvserve/status.h"

int main() {
  float cache[2][4] = {{1, 2, 3, 4}, {0, 0, 0, 0}};
  const int64_t pairs[] = {0, 1};
  if (kvserve::copy_blocks_cpu(cache, 2, sizeof(cache[0]), pairs, 1) != kvserve::Status::kOk) return 1;
  if (std::memcmp(cache[0], cache[1], sizeof(cache[0])) != 0) return 2;
  std::printf("kvserve %s found and linked\n", kvserve::version());
  return 0;
}
