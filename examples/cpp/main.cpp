// The smallest kvserve embedder: report the library version.
#include <cstdio>

#include "kvserve/status.h"

int main() {
  std::printf("embedding kvserve %s\n", kvserve::version());
  return 0;
}
