#include "kvserve/copy_blocks.h"

#include <cstring>

#include "block_pairs.h"

namespace kvserve {

Status copy_blocks_cpu(void* cache, int64_t num_blocks, int64_t block_bytes,
                       const int64_t* block_pairs, int64_t num_pairs) {
  if (!block_pairs_valid(cache, num_blocks, block_bytes, block_pairs, num_pairs)) {
    return Status::kInvalidArgument;
  }
  auto* bytes = static_cast<char*>(cache);
  for (int64_t p = 0; p < num_pairs; ++p) {
    const int64_t src = block_pairs[2 * p], dst = block_pairs[2 * p + 1];
    if (src != dst) std::memcpy(bytes + dst * block_bytes, bytes + src * block_bytes, block_bytes);
  }
  return Status::kOk;
}

}  // namespace kvserve
