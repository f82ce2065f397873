// rotary_and_cache_cuda: rotary.cuh's kernel with the cache write (and the heads' norms where it
// takes them; else the norm kernels run first). One kernel per layer instead of two (four with the
// norms): at batch 1 each of a decode step's kernels costs microseconds of launch and ramp for a few
// KB of work.
#include <climits>

#include "rotary.cuh"
#include "kvserve/rotary_and_cache.h"

namespace kvserve {

Status rotary_and_cache_cuda(const RotaryAndCacheParams& p, void* stream) {
  if (check_rotary_and_cache_layout(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  const RotaryEmbeddingParams& r = p.rotary;
  const ReshapeAndCacheParams& c = p.cache;
  if (r.num_tokens == 0) return Status::kOk;
  if (r.num_tokens > INT_MAX || (r.num_heads + 2 * r.num_kv_heads) * r.head_dim > INT_MAX) return Status::kUnsupported;
  // The value rows move in 16-byte packs too, and both caches' slots in packs of as many elements
  // (fewer bytes in a narrower cache).
  const int64_t row_bytes = dtype_bytes(r.dtype), cache_bytes = dtype_bytes(c.cache_dtype.value_or(c.dtype));
  const bool packed =
      gpu::rotary_packs_of_16_bytes(r) &&
      gpu::all_16_byte_aligned({c.value}, {c.value_stride_token, c.value_stride_head}, row_bytes) &&
      gpu::all_aligned(16 / row_bytes * cache_bytes, {c.key_cache, c.value_cache}, {c.cache_stride_block}, cache_bytes);
  const auto s = static_cast<kvGpuStream_t>(stream);
  if (p.query_norm_weight == nullptr || gpu::head_norms_fused(p, packed)) return gpu::launch_rotary<true>(p, packed, s);
  Status status = rms_norm_cuda(rotary_head_norm_params(p, false), stream);
  if (status == Status::kOk) status = rms_norm_cuda(rotary_head_norm_params(p, true), stream);
  RotaryAndCacheParams normed = p;
  normed.query_norm_weight = normed.key_norm_weight = nullptr;
  return status == Status::kOk ? gpu::launch_rotary<true>(normed, packed, s) : status;
}

}  // namespace kvserve
