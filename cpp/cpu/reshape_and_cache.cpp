#include "kvserve/reshape_and_cache.h"

#include <cstring>

namespace kvserve {

namespace {

// One token's heads into one cache slot: one copy when the heads are adjacent, else one per head.
void copy_heads(char* dst, const char* src, int64_t stride_head_bytes, int64_t num_heads, int64_t head_bytes) {
  if (stride_head_bytes == head_bytes || num_heads == 1) {
    std::memcpy(dst, src, num_heads * head_bytes);
    return;
  }
  for (int64_t h = 0; h < num_heads; ++h) std::memcpy(dst + h * head_bytes, src + h * stride_head_bytes, head_bytes);
}

}  // namespace

Status reshape_and_cache_cpu(const ReshapeAndCacheParams& p) {
  if (check_reshape_and_cache(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  const int64_t elem = dtype_bytes(p.dtype), head_bytes = p.head_dim * elem;
  const int64_t slot_bytes = p.num_kv_heads * head_bytes;
  const auto* key = static_cast<const char*>(p.key);
  const auto* value = static_cast<const char*>(p.value);
  auto* key_cache = static_cast<char*>(p.key_cache);
  auto* value_cache = static_cast<char*>(p.value_cache);
  // Single-threaded: a decode step copies a few KB per layer and a 2k-token prefill ~1 MB (~0.1 ms,
  // small beside its attention), less than a thread team's wake-up would be worth.
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    const int64_t slot = p.slot_mapping_dtype == DType::kInt64 ? static_cast<const int64_t*>(p.slot_mapping)[t]
                                                               : static_cast<const int32_t*>(p.slot_mapping)[t];
    if (slot < 0) continue;
    const int64_t at = (slot / p.block_size) * p.cache_stride_block * elem + (slot % p.block_size) * slot_bytes;
    copy_heads(key_cache + at, key + t * p.key_stride_token * elem, p.key_stride_head * elem, p.num_kv_heads, head_bytes);
    copy_heads(value_cache + at, value + t * p.value_stride_token * elem, p.value_stride_head * elem, p.num_kv_heads,
               head_bytes);
  }
  return Status::kOk;
}

}  // namespace kvserve
