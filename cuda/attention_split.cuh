// Split keys (flash-decoding): when a step has too few (request, kv head, tile) blocks to fill the
// GPU, each one's keys are cut into `num_splits` ranges handled by separate thread blocks. Each
// writes its rows' unnormalized output with their running max and sum; a second kernel merges them:
//
//   out = sum_s o_s * 2^(m_s - M) / sum_s l_s * 2^(m_s - M),   M = max_s m_s
//
//   out:   float32 [num_splits, num_tokens, num_heads, head_dim]
//   stats: float32 [num_splits, num_tokens, num_heads, 2]   {m (base-2 exponent), l}
//
// A split that saw no key writes m = -inf, l = 0 and weighs nothing; one that met bad metadata
// writes NaN, which the merge carries into the output.
#pragma once

#include "numeric.cuh"
#include "kvserve/paged_attention.h"

namespace kvserve::gpu {

struct SplitPartials {
  float* out = nullptr;
  float* stats = nullptr;
  int32_t num_splits = 1;
};

__host__ __device__ inline int64_t partial_row(const PagedAttentionParams& p, int64_t split, int64_t token,
                                               int64_t head) {
  return (split * p.num_tokens + token) * p.num_heads + head;
}

constexpr int kMergeWarps = 4;
constexpr int kMaxSplits = 64;
constexpr int kSplitsPerLane = kMaxSplits / kWarpSize;

// One warp per (token, head). The lanes read the splits' statistics side by side (split lane and
// lane + 32), so that the maximum and the weights are two warp reductions, not a walk over the
// splits; then each lane sums its kHeadDim / 32 consecutive dims over the splits that carry weight
// (a decode graph sizes its splits for the longest context the block table can hold, so most of a
// short context's are empty), one vector load per split.
template <class T, int kHeadDim>
__global__ void __launch_bounds__(kMergeWarps * kWarpSize)
    merge_splits_kernel(const PagedAttentionParams p, const SplitPartials partials) {
  constexpr int kDims = kHeadDim / kWarpSize;  // consecutive dims per lane: 2, 4 or 8
  static_assert(kHeadDim % kWarpSize == 0 && kDims % 2 == 0, "whole float2 per lane");
  using Dims = Pack<float, kDims>;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kMergeWarps + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (item >= p.num_tokens * p.num_heads) return;
  const int64_t token = item / p.num_heads, head = item % p.num_heads;
  const int splits = partials.num_splits;

  float m[kSplitsPerLane], l[kSplitsPerLane];
  float top = -INFINITY;
#pragma unroll
  for (int k = 0; k < kSplitsPerLane; ++k) {
    const int s = lane + k * kWarpSize;
    m[k] = -INFINITY;
    l[k] = 0.f;
    if (s < splits) {
      const float* stats = partials.stats + 2 * partial_row(p, s, token, head);
      m[k] = stats[0];
      l[k] = stats[1];
    }
    if (l[k] != 0.f) top = fmaxf(top, m[k]);
  }
  for (int mask = kWarpSize / 2; mask > 0; mask /= 2) top = fmaxf(top, shfl_xor(top, mask));
  float weight[kSplitsPerLane], total = 0.f;
#pragma unroll
  for (int k = 0; k < kSplitsPerLane; ++k) {
    weight[k] = l[k] != 0.f ? exp2f(m[k] - top) : 0.f;  // NaN statistics (bad metadata) stay NaN
    total += weight[k] * l[k];
  }
  total = warp_sum(total);

  Dims value;
#pragma unroll
  for (int j = 0; j < kDims; ++j) value.values[j] = 0.f;
  for (int s = 0; s < splits; ++s) {
    float mine = weight[0];
#pragma unroll
    for (int k = 1; k < kSplitsPerLane; ++k) {
      if (s >= k * kWarpSize) mine = weight[k];
    }
    const float w = shfl(mine, s % kWarpSize);
    if (w == 0.f) continue;  // an empty split (or one whose weight underflows): adds nothing
    const Dims part = *reinterpret_cast<const Dims*>(partials.out + partial_row(p, s, token, head) * kHeadDim +
                                                     lane * kDims);
#pragma unroll
    for (int j = 0; j < kDims; ++j) value.values[j] += w * part.values[j];
  }
  T* out = static_cast<T*>(p.out) + token * p.out_stride_token + head * p.out_stride_head + lane * kDims;
  Pack<T, kDims> result;
#pragma unroll
  for (int j = 0; j < kDims; ++j) result.values[j] = from_float<T>(value.values[j] / total);
  *reinterpret_cast<Pack<T, kDims>*>(out) = result;
}

}  // namespace kvserve::gpu
