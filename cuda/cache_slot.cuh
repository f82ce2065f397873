// Where a token's K/V rows go in the paged caches (ReshapeAndCacheParams::slot_mapping), for every
// kernel that writes them: reshape_and_cache, rotary_and_cache and the few-rows qkv projection.
#pragma once

#include "compat.cuh"
#include "kvserve/reshape_and_cache.h"

namespace kvserve::gpu {

// The element offset of `token`'s slot in either cache, or -1 for a slot of -1 (a padding row) or
// out of range, which is not written.
__device__ inline int64_t cache_slot(const ReshapeAndCacheParams& c, int64_t token) {
  const int64_t slot = c.slot_mapping_dtype == DType::kInt64 ? static_cast<const int64_t*>(c.slot_mapping)[token]
                                                             : static_cast<const int32_t*>(c.slot_mapping)[token];
  if (slot < 0 || slot >= c.num_blocks * c.block_size) return -1;
  return (slot / c.block_size) * c.cache_stride_block + (slot % c.block_size) * c.num_kv_heads * c.head_dim;
}

}  // namespace kvserve::gpu
