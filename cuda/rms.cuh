// The arithmetic of RMSNorm, shared by the kernels that normalize (rms_norm.cu; rotary.cuh's
// per-head norm before the rotation), so that each rounds and sums exactly as the others do and a
// fused kernel gives the bits of the norm kernel, then the next.
#pragma once

#include "numeric.cuh"

namespace kvserve::gpu {

// `squares` plus the squares of a pack's values, in order (one fma each).
template <class T, int N>
__device__ inline float add_squares(const Pack<T, N>& x, float squares) {
#pragma unroll
  for (int k = 0; k < N; ++k) squares = fmaf(to_float(x.values[k]), to_float(x.values[k]), squares);
  return squares;
}

// 1 / sqrt(mean + eps) of a row of `width` values whose squares sum to `total`.
__device__ inline float inverse_rms(float total, int64_t width, float eps) {
  return rsqrtf(total / static_cast<float>(width) + eps);
}

// weight * x / rms as the reference checkpoints compute it: the normalized value stored in T, then
// scaled by the weight and stored again.
template <class T, int N>
__device__ inline Pack<T, N> normalized(const Pack<T, N>& x, const Pack<T, N>& weight, float inverse) {
  Pack<T, N> y;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const float scaled = to_float(from_float<T>(to_float(x.values[k]) * inverse));
    y.values[k] = from_float<T>(to_float(weight.values[k]) * scaled);
  }
  return y;
}

}  // namespace kvserve::gpu
