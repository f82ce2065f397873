// paged_attention_cuda: checks the call, then launches it for its rows' and cache's storage types
// (paged_attention_launch.cuh).
#include <climits>

#include "paged_attention_launch.cuh"

namespace kvserve {

namespace gpu {
KVSERVE_FP8_ATTENTION(extern, Float8E4M3)
KVSERVE_FP8_ATTENTION(extern, Float8E5M2)
}  // namespace gpu

Status paged_attention_cuda(const PagedAttentionParams& p, void* stream) {
  if (check_paged_attention_layout(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  if (p.num_tokens == 0) return Status::kOk;
  // Grid limits (x: tokens or tiles, y: heads) and 32-bit key and row arithmetic in the kernels.
  if (p.num_tokens > INT_MAX || p.num_heads > 65535 || p.block_size > INT_MAX ||
      p.num_tokens * (p.num_heads / p.num_kv_heads) > INT_MAX) {
    return Status::kUnsupported;
  }
  const auto s = static_cast<kvGpuStream_t>(stream);
  using gpu::with_cache_type;
  using gpu::with_float_type;
  return with_float_type(p.dtype, [&](auto rows) -> Status {
    using T = decltype(rows);
    return with_cache_type<T>(p.cache_dtype.value_or(p.dtype), [&](auto element) -> Status {
      return gpu::launch_paged_attention<T, decltype(element)>(p, s);
    });
  });
}

}  // namespace kvserve
