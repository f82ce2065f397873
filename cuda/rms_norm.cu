// rms_norm_cuda: one warp per row (token, head). A first pass adds the residual (when fused), writes
// it back and sums the squares; a second pass, over the same elements of the same lane (so no
// other thread's write is read), normalizes and scales. Rows move 16 bytes per access when every
// row start is 16-byte aligned and the width divides into 16-byte packs.
#include <climits>

#include "numeric.cuh"
#include "kvserve/layer_ops.h"

namespace kvserve {

namespace {

using namespace gpu;

constexpr int kWarps = 4;

template <class T, int kPack>
__global__ void __launch_bounds__(kWarps * kWarpSize) rms_norm_kernel(const RmsNormParams p) {
  using Packed = Pack<T, kPack>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarpSize;
  if (row >= p.num_tokens * p.num_heads) return;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t token = row / p.num_heads, head = row % p.num_heads;
  const T* input = static_cast<const T*>(p.input) + token * p.input_stride_token + head * p.input_stride_head;
  T* residual = p.residual == nullptr ? nullptr : static_cast<T*>(p.residual) + token * p.residual_stride_token;
  T* out = static_cast<T*>(p.out) + token * p.out_stride_token + head * p.out_stride_head;
  const T* weight = static_cast<const T*>(p.weight);

  float squares = 0.f;
  for (int64_t i = lane * kPack; i < p.hidden; i += kWarpSize * kPack) {
    Packed x = *reinterpret_cast<const Packed*>(input + i);
    if (residual != nullptr) {
      const Packed r = *reinterpret_cast<const Packed*>(residual + i);
#pragma unroll
      for (int k = 0; k < kPack; ++k) x.values[k] = from_float<T>(to_float(x.values[k]) + to_float(r.values[k]));
      *reinterpret_cast<Packed*>(residual + i) = x;
    }
#pragma unroll
    for (int k = 0; k < kPack; ++k) squares += to_float(x.values[k]) * to_float(x.values[k]);
  }
  const float inverse_rms = rsqrtf(warp_sum(squares) / static_cast<float>(p.hidden) + p.eps);
  const T* normed = residual != nullptr ? residual : input;
  for (int64_t i = lane * kPack; i < p.hidden; i += kWarpSize * kPack) {
    const Packed x = *reinterpret_cast<const Packed*>(normed + i);
    const Packed w = *reinterpret_cast<const Packed*>(weight + i);
    Packed y;
#pragma unroll
    for (int k = 0; k < kPack; ++k) {
      const float scaled = to_float(from_float<T>(to_float(x.values[k]) * inverse_rms));
      y.values[k] = from_float<T>(to_float(w.values[k]) * scaled);
    }
    *reinterpret_cast<Packed*>(out + i) = y;
  }
}

bool packs_of_16_bytes(const RmsNormParams& p) {
  const int64_t elem = dtype_bytes(p.dtype);
  const uintptr_t pointers[] = {reinterpret_cast<uintptr_t>(p.input), reinterpret_cast<uintptr_t>(p.out),
                                reinterpret_cast<uintptr_t>(p.residual), reinterpret_cast<uintptr_t>(p.weight)};
  const int64_t lengths[] = {p.hidden, p.input_stride_token, p.input_stride_head, p.out_stride_token,
                             p.out_stride_head, p.residual_stride_token};
  for (uintptr_t pointer : pointers) {
    if (pointer % 16 != 0) return false;
  }
  for (int64_t length : lengths) {
    if (length * elem % 16 != 0) return false;
  }
  return true;
}

}  // namespace

Status rms_norm_cuda(const RmsNormParams& p, void* stream) {
  if (check_rms_norm(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  const int64_t rows = p.num_tokens * p.num_heads;
  if (rows == 0) return Status::kOk;
  if ((rows + kWarps - 1) / kWarps > INT_MAX) return Status::kUnsupported;
  const auto blocks = static_cast<unsigned>((rows + kWarps - 1) / kWarps);
  const auto s = static_cast<kvGpuStream_t>(stream);
  const bool packed = packs_of_16_bytes(p);
  return with_float_type(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (packed) {
      launch_kernel(rms_norm_kernel<T, 16 / sizeof(T)>, blocks, kWarps * kWarpSize, 0, s, p);
    } else {
      launch_kernel(rms_norm_kernel<T, 1>, blocks, kWarps * kWarpSize, 0, s, p);
    }
    return launch_status();
  });
}

}  // namespace kvserve
