// Validation shared by the CPU and CUDA copy_blocks: every id of every {src, dst} pair in range.
#pragma once

#include <cstdint>

namespace kvserve {

inline bool block_pairs_valid(const void* cache, int64_t num_blocks, int64_t block_bytes,
                              const int64_t* block_pairs, int64_t num_pairs) {
  if (cache == nullptr || block_bytes <= 0 || num_pairs < 0 ||
      (num_pairs > 0 && block_pairs == nullptr)) {
    return false;
  }
  for (int64_t p = 0; p < 2 * num_pairs; ++p) {
    if (block_pairs[p] < 0 || block_pairs[p] >= num_blocks) return false;
  }
  return true;
}

}  // namespace kvserve
