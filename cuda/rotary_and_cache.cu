// rotary_and_cache_cuda: rotary_embedding_cuda's kernel (rotary.cuh's grid) with the cache write folded in.
// A thread turns kPack pairs of a query or key head in place, as rotary_embedding.cu does; a key
// head's rotated pairs also go to the token's cache slot, and the items after the heads' pairs copy
// the value heads' packs into it. One kernel per layer instead of two: at batch 1 each of a decode
// step's kernels costs microseconds of launch and ramp for a few KB of work.
#include <climits>

#include "rotary.cuh"
#include "kvserve/rotary_and_cache.h"

namespace kvserve {

namespace {

using namespace gpu;

template <class T, int kPack>
__global__ void __launch_bounds__(kRotaryThreads)
    rotary_and_cache_kernel(const RotaryEmbeddingParams r, const ReshapeAndCacheParams c) {
  using Packed = Pack<T, kPack>;
  const int64_t token = blockIdx.x;
  const auto head_dim = static_cast<int32_t>(r.head_dim), half = head_dim / 2;
  const int32_t pairs_per_head = half / kPack, packs_per_head = head_dim / kPack;
  const T* cos = static_cast<const T*>(r.cos) + token * r.cos_sin_stride_token;
  const T* sin = static_cast<const T*>(r.sin) + token * r.cos_sin_stride_token;
  // The token's slot in both caches (nullptr: -1, a padding row, or out of range: not written).
  const int64_t slot = c.slot_mapping_dtype == DType::kInt64 ? static_cast<const int64_t*>(c.slot_mapping)[token]
                                                             : static_cast<const int32_t*>(c.slot_mapping)[token];
  T* key_slot = nullptr;
  T* value_slot = nullptr;
  if (slot >= 0 && slot < c.num_blocks * c.block_size) {
    const int64_t at = (slot / c.block_size) * c.cache_stride_block + (slot % c.block_size) * c.num_kv_heads * head_dim;
    key_slot = static_cast<T*>(c.key_cache) + at;
    value_slot = static_cast<T*>(c.value_cache) + at;
  }
  const auto rotated = static_cast<int32_t>((r.num_heads + r.num_kv_heads) * pairs_per_head);
  const auto items = rotated + static_cast<int32_t>(r.num_kv_heads * packs_per_head);
  for (int32_t i = blockIdx.y * kRotaryThreads + threadIdx.x; i < items; i += gridDim.y * kRotaryThreads) {
    if (i < rotated) {
      const int32_t head = i / pairs_per_head, d = (i % pairs_per_head) * kPack;
      const bool is_key = head >= r.num_heads;
      T* x = is_key ? static_cast<T*>(r.key) + token * r.key_stride_token + (head - r.num_heads) * r.key_stride_head
                    : static_cast<T*>(r.query) + token * r.query_stride_token + head * r.query_stride_head;
      const Packed x1 = *reinterpret_cast<const Packed*>(x + d), x2 = *reinterpret_cast<const Packed*>(x + d + half);
      const Packed cs = *reinterpret_cast<const Packed*>(cos + d), sn = *reinterpret_cast<const Packed*>(sin + d);
      Packed y1, y2;
      rotate_pairs<T, kPack>(x1, x2, cs, sn, &y1, &y2);
      *reinterpret_cast<Packed*>(x + d) = y1;
      *reinterpret_cast<Packed*>(x + d + half) = y2;
      if (is_key && key_slot != nullptr) {
        T* cached = key_slot + (head - r.num_heads) * head_dim;
        *reinterpret_cast<Packed*>(cached + d) = y1;
        *reinterpret_cast<Packed*>(cached + d + half) = y2;
      }
    } else if (value_slot != nullptr) {
      const int32_t j = i - rotated, head = j / packs_per_head, d = (j % packs_per_head) * kPack;
      const T* value = static_cast<const T*>(c.value) + token * c.value_stride_token + head * c.value_stride_head;
      *reinterpret_cast<Packed*>(value_slot + head * head_dim + d) = *reinterpret_cast<const Packed*>(value + d);
    }
  }
}

// Every row, head, slot and half head starts on 16 bytes: then pairs move in 16-byte packs.
bool packs_of_16_bytes(const RotaryAndCacheParams& p) {
  const RotaryEmbeddingParams& r = p.rotary;
  const ReshapeAndCacheParams& c = p.cache;
  return all_16_byte_aligned({r.query, r.key, r.cos, r.sin, c.value, c.key_cache, c.value_cache},
                             {r.head_dim / 2, r.query_stride_token, r.query_stride_head, r.key_stride_token,
                              r.key_stride_head, r.cos_sin_stride_token, c.value_stride_token, c.value_stride_head,
                              c.cache_stride_block},
                             dtype_bytes(r.dtype));
}

template <class T, int kPack>
Status launch(const RotaryAndCacheParams& p, kvGpuStream_t stream) {
  const RotaryEmbeddingParams& r = p.rotary;
  const int64_t items = (r.num_heads + 2 * r.num_kv_heads) * (r.head_dim / 2 / kPack);
  launch_kernel(rotary_and_cache_kernel<T, kPack>, rotary_grid(r.num_tokens, items), kRotaryThreads, 0, stream, r, p.cache);
  return launch_status();
}

}  // namespace

Status rotary_and_cache_cuda(const RotaryAndCacheParams& p, void* stream) {
  if (check_rotary_and_cache_layout(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  const RotaryEmbeddingParams& r = p.rotary;
  if (r.num_tokens == 0) return Status::kOk;
  if (r.num_tokens > INT_MAX || (r.num_heads + 2 * r.num_kv_heads) * r.head_dim > INT_MAX) return Status::kUnsupported;
  const auto s = static_cast<kvGpuStream_t>(stream);
  return with_float_type(r.dtype, [&](auto tag) {
    using T = decltype(tag);
    return packs_of_16_bytes(p) ? launch<T, 16 / sizeof(T)>(p, s) : launch<T, 1>(p, s);
  });
}

}  // namespace kvserve
