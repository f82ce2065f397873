#include "kvserve/reshape_and_cache.h"

#include <cstring>

#include "half.h"

namespace kvserve {

namespace {

using cpu::BFloat16;
using cpu::Float16;
using cpu::Float8E4M3;
using cpu::Float8E5M2;

// One token's heads into one cache slot of the rows' own dtype: one copy when the heads are
// adjacent, else one per head.
void copy_heads(char* dst, const char* src, int64_t stride_head_bytes, int64_t num_heads, int64_t head_bytes) {
  if (stride_head_bytes == head_bytes || num_heads == 1) {
    std::memcpy(dst, src, num_heads * head_bytes);
    return;
  }
  for (int64_t h = 0; h < num_heads; ++h) std::memcpy(dst + h * head_bytes, src + h * stride_head_bytes, head_bytes);
}

// The same into a cache of a narrower float C, each element rounded (strides in elements).
template <class T, class C>
void convert_heads(C* dst, const T* src, int64_t stride_head, int64_t num_heads, int64_t head_dim) {
  for (int64_t h = 0; h < num_heads; ++h) {
    for (int64_t d = 0; d < head_dim; ++d) {
      cpu::from_float(cpu::to_float(src[h * stride_head + d]), dst + h * head_dim + d);
    }
  }
}

int64_t slot_of(const ReshapeAndCacheParams& p, int64_t t) {
  return p.slot_mapping_dtype == DType::kInt64 ? static_cast<const int64_t*>(p.slot_mapping)[t]
                                               : static_cast<const int32_t*>(p.slot_mapping)[t];
}

template <class T, class C>
void write_converted(const ReshapeAndCacheParams& p) {
  const int64_t slot_elems = p.num_kv_heads * p.head_dim;
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    const int64_t slot = slot_of(p, t);
    if (slot < 0) continue;
    const int64_t at = (slot / p.block_size) * p.cache_stride_block + (slot % p.block_size) * slot_elems;
    convert_heads(static_cast<C*>(p.key_cache) + at, static_cast<const T*>(p.key) + t * p.key_stride_token,
                  p.key_stride_head, p.num_kv_heads, p.head_dim);
    convert_heads(static_cast<C*>(p.value_cache) + at, static_cast<const T*>(p.value) + t * p.value_stride_token,
                  p.value_stride_head, p.num_kv_heads, p.head_dim);
  }
}

template <class T>
void write_converted_from(const ReshapeAndCacheParams& p) {
  switch (*p.cache_dtype) {
    case DType::kFloat8E4M3: return write_converted<T, Float8E4M3>(p);
    case DType::kFloat8E5M2: return write_converted<T, Float8E5M2>(p);
    case DType::kBFloat16: return write_converted<T, BFloat16>(p);  // float32 rows only (checked)
    default: return write_converted<T, Float16>(p);
  }
}

}  // namespace

Status reshape_and_cache_cpu(const ReshapeAndCacheParams& p) {
  if (check_reshape_and_cache(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  // Single-threaded: a decode step copies a few KB per layer and a 2k-token prefill ~1 MB (~0.1 ms,
  // small beside its attention), less than a thread team's wake-up would be worth.
  if (p.cache_dtype.value_or(p.dtype) != p.dtype) {
    switch (p.dtype) {
      case DType::kBFloat16: write_converted_from<BFloat16>(p); break;
      case DType::kFloat16: write_converted_from<Float16>(p); break;
      default: write_converted_from<float>(p); break;
    }
    return Status::kOk;
  }
  const int64_t elem = dtype_bytes(p.dtype), head_bytes = p.head_dim * elem;
  const int64_t slot_bytes = p.num_kv_heads * head_bytes;
  const auto* key = static_cast<const char*>(p.key);
  const auto* value = static_cast<const char*>(p.value);
  auto* key_cache = static_cast<char*>(p.key_cache);
  auto* value_cache = static_cast<char*>(p.value_cache);
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    const int64_t slot = slot_of(p, t);
    if (slot < 0) continue;
    const int64_t at = (slot / p.block_size) * p.cache_stride_block * elem + (slot % p.block_size) * slot_bytes;
    copy_heads(key_cache + at, key + t * p.key_stride_token * elem, p.key_stride_head * elem, p.num_kv_heads, head_bytes);
    copy_heads(value_cache + at, value + t * p.value_stride_token * elem, p.value_stride_head * elem, p.num_kv_heads,
               head_bytes);
  }
  return Status::kOk;
}

}  // namespace kvserve
