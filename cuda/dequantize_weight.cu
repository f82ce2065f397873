// dequantize_weight_cuda: grid (weight row, chunk of the row), a thread an element: each code's
// value, in float32 as dequantize_weight_cpu computes it (uint4: code * scale + offset, one
// rounding; int8: code * scale; e4m3: the code's value times its row's scale), rounded once to the
// dtype. A prefill's products over quantized weights widen them with it for cuBLAS.
#include <climits>

#include "numeric.cuh"
#include "kvserve/linear.h"

namespace kvserve {

namespace {

using namespace gpu;

constexpr int kThreads = 256;

template <class T, DType kCodes>
__global__ void __launch_bounds__(kThreads) dequantize_weight_kernel(const LinearParams p) {
  wait_for_prior_grid();
  const int64_t n = blockIdx.x;
  const auto* codes = static_cast<const unsigned char*>(p.weight) + n * p.weight_stride;
  T* out = static_cast<T*>(p.out) + n * p.out_stride;
  for (int64_t k = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x; k < p.in_features;
       k += static_cast<int64_t>(gridDim.y) * kThreads) {
    float value;
    if constexpr (kCodes == DType::kUInt4) {
      // Group k / 32: byte j holds codes j (low nibble) and 16 + j (high).
      const int64_t group = n * (p.in_features / kUInt4GroupSize) + k / kUInt4GroupSize;
      const unsigned byte = codes[k / kUInt4GroupSize * 16 + k % 16];
      const unsigned code = k % kUInt4GroupSize < 16 ? byte & 15u : byte >> 4;
      value = fmaf(static_cast<float>(code), p.weight_scale[group], p.weight_offset[group]);
    } else if constexpr (kCodes == DType::kInt8) {
      const float scale = p.weight_scale[n * (p.in_features / kInt8GroupSize) + k / kInt8GroupSize];
      value = static_cast<float>(static_cast<int8_t>(codes[k])) * scale;
    } else {
      value = to_float(Float8E4M3{codes[k]}) * p.weight_scale[n];
    }
    out[k] = from_float<T>(value);
  }
}

}  // namespace

Status dequantize_weight_cuda(const LinearParams& p, void* stream) {
  if (check_dequantize_weight(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  if (p.out_features > INT_MAX) return Status::kUnsupported;
  const auto s = static_cast<kvGpuStream_t>(stream);
  const dim3 grid = row_chunks_grid(p.out_features, p.in_features, kThreads);
  return with_float_type(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    switch (*p.weight_dtype) {
      case DType::kUInt4: launch_kernel(dequantize_weight_kernel<T, DType::kUInt4>, grid, kThreads, 0, s, p); break;
      case DType::kInt8: launch_kernel(dequantize_weight_kernel<T, DType::kInt8>, grid, kThreads, 0, s, p); break;
      default: launch_kernel(dequantize_weight_kernel<T, DType::kFloat8E4M3>, grid, kThreads, 0, s, p); break;
    }
    return launch_status();
  });
}

}  // namespace kvserve
