// silu_and_mul_cuda: grid (token, chunk of the row); 16-byte packs where every row start is
// 16-byte aligned and the width divides into packs; each element rounded as silu.cuh says.
#include <climits>

#include "numeric.cuh"
#include "silu.cuh"
#include "kvserve/layer_ops.h"

namespace kvserve {

namespace {

using namespace gpu;

constexpr int kThreads = 256;

template <class T, int kPack>
__global__ void __launch_bounds__(kThreads) silu_and_mul_kernel(const SiluAndMulParams p) {
  wait_for_prior_grid();
  using Packed = Pack<T, kPack>;
  const int64_t token = blockIdx.x;
  const T* gate = static_cast<const T*>(p.input) + token * p.input_stride_token;
  const T* up = gate + p.size;
  T* out = static_cast<T*>(p.out) + token * p.out_stride_token;
  for (int64_t i = (static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x) * kPack; i < p.size;
       i += static_cast<int64_t>(gridDim.y) * kThreads * kPack) {
    const Packed g = *reinterpret_cast<const Packed*>(gate + i);
    const Packed u = *reinterpret_cast<const Packed*>(up + i);
    Packed y;
#pragma unroll
    for (int k = 0; k < kPack; ++k) y.values[k] = silu_and_mul_value(g.values[k], u.values[k]);
    *reinterpret_cast<Packed*>(out + i) = y;
  }
}

bool packs_of_16_bytes(const SiluAndMulParams& p) {
  return all_16_byte_aligned({p.input, p.out}, {p.size, p.input_stride_token, p.out_stride_token},
                             dtype_bytes(p.dtype));
}

}  // namespace

Status silu_and_mul_cuda(const SiluAndMulParams& p, void* stream) {
  if (check_silu_and_mul(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  if (p.num_tokens == 0) return Status::kOk;
  if (p.num_tokens > INT_MAX) return Status::kUnsupported;
  const auto s = static_cast<kvGpuStream_t>(stream);
  const bool packed = packs_of_16_bytes(p);
  return with_float_type(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t pack = packed ? static_cast<int64_t>(16 / sizeof(T)) : 1;
    const dim3 grid = row_chunks_grid(p.num_tokens, p.size, kThreads * pack);
    if (packed) {
      launch_kernel(silu_and_mul_kernel<T, 16 / sizeof(T)>, grid, kThreads, 0, s, p);
    } else {
      launch_kernel(silu_and_mul_kernel<T, 1>, grid, kThreads, 0, s, p);
    }
    return launch_status();
  });
}

}  // namespace kvserve
