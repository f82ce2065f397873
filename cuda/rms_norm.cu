// rms_norm_cuda: a row (token, head) per warp when rows are narrow (per-head norms, small models),
// a row per 256-thread block when they are wide (a hidden state of thousands): a decode step has few
// rows, and one warp walking 4096 elements was a chain of dependent loads. A first pass adds the
// residual (when fused), writes it back and sums the squares; after the row's sum, a second pass
// over the same elements of the same thread (so no other thread's write is read) normalizes and
// scales, from registers for a thread's first packs. Rows move 16 bytes per access when every row
// start is 16-byte aligned and the width divides into 16-byte packs.
#include <climits>

#include "rms.cuh"
#include "kvserve/layer_ops.h"

namespace kvserve {

namespace {

using namespace gpu;

constexpr int kThreads = 256;
constexpr int kCached = 4;  // packs per thread kept in registers between the passes
// Rows of more packs than this take a block each (a warp would walk them in over 4 steps).
constexpr int64_t kWarpRowMaxPacks = 4 * kWarpSize;

// The sum of `value` over the block's threads, in every thread; every thread of the block calls it.
__device__ inline float block_sum(float value) {
  __shared__ float partial[kThreads / kWarpSize];
  value = warp_sum(value);
  if (threadIdx.x % kWarpSize == 0) partial[threadIdx.x / kWarpSize] = value;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < kThreads / kWarpSize; ++w) total += partial[w];
  return total;
}

// kRowThreads: the threads of one row, a warp or the whole block.
template <class T, int kPack, int kRowThreads>
__global__ void __launch_bounds__(kThreads) rms_norm_kernel(const RmsNormParams p) {
  using Packed = Pack<T, kPack>;
  constexpr int kRowsPerBlock = kThreads / kRowThreads;
  constexpr int64_t kStride = static_cast<int64_t>(kRowThreads) * kPack;
  const int t = threadIdx.x % kRowThreads;
  const T* weight = static_cast<const T*>(p.weight);
  // The weight of the thread's first kCached packs (see below), read before the wait for the kernel
  // before (compat.cuh): no kernel writes it.
  Packed cached_weight[kCached];
#pragma unroll
  for (int j = 0; j < kCached; ++j) {
    const int64_t i = t * kPack + j * kStride;
    if (i < p.hidden) cached_weight[j] = load_through_l2(reinterpret_cast<const Packed*>(weight + i));
  }
  wait_for_prior_grid();
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kRowThreads;
  // A block-wide row is the block's (the grid has one block per row); a warp's may lie past the end.
  if constexpr (kRowThreads == kWarpSize) {
    if (row >= p.num_tokens * p.num_heads) return;
  }
  const int64_t token = row / p.num_heads, head = row % p.num_heads;
  const T* input = static_cast<const T*>(p.input) + token * p.input_stride_token + head * p.input_stride_head;
  T* residual = p.residual == nullptr ? nullptr : static_cast<T*>(p.residual) + token * p.residual_stride_token;
  T* out = static_cast<T*>(p.out) + token * p.out_stride_token + head * p.out_stride_head;

  // The row's first kCached packs of this thread (all of them for rows up to kCached * kRowThreads
  // packs: a hidden state of 4096 in bfloat16 holds 2 per thread) are loaded together and kept in
  // registers, with their weight, across the reduction: one trip to memory before it, none after.
  // Packs past them take the second pass from memory.
  float squares = 0.f;
  auto add_and_square = [&](int64_t i) {
    Packed x = *reinterpret_cast<const Packed*>(input + i);
    if (residual != nullptr) {
      const Packed r = *reinterpret_cast<const Packed*>(residual + i);
#pragma unroll
      for (int k = 0; k < kPack; ++k) x.values[k] = from_float<T>(to_float(x.values[k]) + to_float(r.values[k]));
      *reinterpret_cast<Packed*>(residual + i) = x;
    }
    squares = add_squares(x, squares);
    return x;
  };
  Packed cached[kCached];
#pragma unroll
  for (int j = 0; j < kCached; ++j) {
    const int64_t i = t * kPack + j * kStride;
    if (i < p.hidden) cached[j] = add_and_square(i);
  }
  for (int64_t i = t * kPack + kCached * kStride; i < p.hidden; i += kStride) add_and_square(i);
  float total;
  if constexpr (kRowThreads == kWarpSize) {
    total = warp_sum(squares);
  } else {
    total = block_sum(squares);
  }
  const float inverse = inverse_rms(total, p.hidden, p.eps);
  auto normalize = [&](int64_t i, const Packed& x, const Packed& w) {
    *reinterpret_cast<Packed*>(out + i) = normalized(x, w, inverse);
  };
#pragma unroll
  for (int j = 0; j < kCached; ++j) {
    const int64_t i = t * kPack + j * kStride;
    if (i < p.hidden) normalize(i, cached[j], cached_weight[j]);
  }
  const T* normed = residual != nullptr ? residual : input;
  for (int64_t i = t * kPack + kCached * kStride; i < p.hidden; i += kStride) {
    normalize(i, *reinterpret_cast<const Packed*>(normed + i), *reinterpret_cast<const Packed*>(weight + i));
  }
}

bool packs_of_16_bytes(const RmsNormParams& p) {
  return all_16_byte_aligned({p.input, p.out, p.residual, p.weight},
                             {p.hidden, p.input_stride_token, p.input_stride_head, p.out_stride_token,
                              p.out_stride_head, p.residual_stride_token},
                             dtype_bytes(p.dtype));
}

template <class T, int kPack>
Status launch_rows(const RmsNormParams& p, int64_t rows, kvGpuStream_t stream) {
  if (p.hidden / kPack > kWarpRowMaxPacks) {
    if (rows > INT_MAX) return Status::kUnsupported;
    launch_kernel(rms_norm_kernel<T, kPack, kThreads>, static_cast<unsigned>(rows), kThreads, 0, stream, p);
  } else {
    constexpr int kRowsPerBlock = kThreads / kWarpSize;
    if ((rows + kRowsPerBlock - 1) / kRowsPerBlock > INT_MAX) return Status::kUnsupported;
    launch_kernel(rms_norm_kernel<T, kPack, kWarpSize>, static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock),
                  kThreads, 0, stream, p);
  }
  return launch_status();
}

}  // namespace

Status rms_norm_cuda(const RmsNormParams& p, void* stream) {
  if (check_rms_norm(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  const int64_t rows = p.num_tokens * p.num_heads;
  if (rows == 0) return Status::kOk;
  const auto s = static_cast<kvGpuStream_t>(stream);
  const bool packed = packs_of_16_bytes(p);
  return with_float_type(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    return packed ? launch_rows<T, 16 / sizeof(T)>(p, rows, s) : launch_rows<T, 1>(p, rows, s);
  });
}

}  // namespace kvserve
