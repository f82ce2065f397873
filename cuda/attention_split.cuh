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

// One warp per (token, head).
template <class T>
__global__ void __launch_bounds__(kMergeWarps * kWarpSize)
    merge_splits_kernel(const PagedAttentionParams p, const SplitPartials partials) {
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kMergeWarps + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (item >= p.num_tokens * p.num_heads) return;
  const int64_t token = item / p.num_heads, head = item % p.num_heads;
  float top = -INFINITY;
  for (int s = 0; s < partials.num_splits; ++s) {
    const float* stats = partials.stats + 2 * partial_row(p, s, token, head);
    if (stats[1] != 0.f) top = fmaxf(top, stats[0]);
  }
  float total = 0.f;
  for (int s = 0; s < partials.num_splits; ++s) {
    const float* stats = partials.stats + 2 * partial_row(p, s, token, head);
    if (stats[1] != 0.f) total += exp2f(stats[0] - top) * stats[1];
  }
  T* out = static_cast<T*>(p.out) + token * p.out_stride_token + head * p.out_stride_head;
  for (int64_t d = lane; d < p.head_dim; d += kWarpSize) {
    float value = 0.f;
    for (int s = 0; s < partials.num_splits; ++s) {
      const int64_t row = partial_row(p, s, token, head);
      const float* stats = partials.stats + 2 * row;
      if (stats[1] != 0.f) value += exp2f(stats[0] - top) * partials.out[row * p.head_dim + d];
    }
    out[d] = from_float<T>(value / total);
  }
}

}  // namespace kvserve::gpu
