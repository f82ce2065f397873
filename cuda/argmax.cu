// argmax_cuda: a block per row (greedy sampling reads a few rows of a vocabulary each step). Each
// thread walks its columns in order, several 16-byte packs in flight at once, keeping the largest
// value and the first column that holds it (NaN never compares greater, so it never wins); the
// block then keeps the largest value and, among equals, the first column. Without a number in the
// row the answer is 0, as on the CPU. Packs where the row start is 16-byte aligned and the width
// divides into packs; one element at a time otherwise.
#include <climits>

#include "numeric.cuh"
#include "kvserve/argmax.h"

namespace kvserve {

namespace {

using namespace gpu;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kUnroll = 4;                 // packs a thread has in flight
constexpr uint32_t kNone = UINT32_MAX;     // no column yet

struct Best {
  float value = -INFINITY;
  uint32_t column = kNone;

  // Column `column` holds `value`: it wins if larger, or equal and earlier (NaN: neither).
  __device__ void offer(float v, uint32_t c) {
    if (v > value || (v == value && c < column)) {
      value = v;
      column = c;
    }
  }
};

__device__ inline Best warp_best(Best b) {
  for (int mask = kWarpSize / 2; mask > 0; mask /= 2) {
    const float v = shfl_xor(b.value, mask);
    const uint32_t c = __float_as_uint(shfl_xor(__uint_as_float(b.column), mask));
    b.offer(v, c);
  }
  return b;
}

template <class T, int kPack>
__global__ void __launch_bounds__(kThreads) argmax_kernel(const ArgmaxParams p) {
  wait_for_prior_grid();
  using Packed = Pack<T, kPack>;
  const T* row = static_cast<const T*>(p.input) + static_cast<int64_t>(blockIdx.x) * p.input_stride;
  const auto n = static_cast<uint32_t>(p.num_cols);
  constexpr uint32_t kStride = kThreads * kPack;
  Best best;
  for (uint32_t first = threadIdx.x * kPack; first < n; first += kUnroll * kStride) {
    Packed packs[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint32_t at = first + u * kStride;
      if (at < n) packs[u] = *reinterpret_cast<const Packed*>(row + at);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint32_t at = first + u * kStride;
      if (at >= n) break;
#pragma unroll
      for (int k = 0; k < kPack; ++k) best.offer(to_float(packs[u].values[k]), at + k);
    }
  }
  __shared__ float s_value[kWarps];
  __shared__ uint32_t s_column[kWarps];
  best = warp_best(best);
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize, lane = static_cast<int>(threadIdx.x) % kWarpSize;
  if (lane == 0) {
    s_value[warp] = best.value;
    s_column[warp] = best.column;
  }
  __syncthreads();
  if (warp == 0) {
    Best b;
    if (lane < kWarps) {
      b.value = s_value[lane];
      b.column = s_column[lane];
    }
    b = warp_best(b);
    if (lane == 0) p.out[blockIdx.x] = b.column == kNone ? 0 : static_cast<int32_t>(b.column);
  }
}

}  // namespace

Status argmax_cuda(const ArgmaxParams& p, void* stream) {
  if (check_argmax(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  if (p.num_rows == 0) return Status::kOk;
  if (p.num_rows > INT_MAX) return Status::kUnsupported;
  const auto s = static_cast<kvGpuStream_t>(stream);
  const bool packed = all_16_byte_aligned({p.input}, {p.num_cols, p.input_stride}, dtype_bytes(p.dtype));
  return with_float_type(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(static_cast<unsigned>(p.num_rows));
    if (packed) {
      launch_kernel(argmax_kernel<T, 16 / sizeof(T)>, grid, kThreads, 0, s, p);
    } else {
      launch_kernel(argmax_kernel<T, 1>, grid, kThreads, 0, s, p);
    }
    return launch_status();
  });
}

}  // namespace kvserve
