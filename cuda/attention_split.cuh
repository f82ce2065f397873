// Split keys (flash-decoding): when a step has too few (request, kv head, tile) blocks to fill the
// GPU, each one's keys are cut into ranges handled by separate thread blocks: the launch allows up to
// `num_splits`, a tile uses as many of them as it has stages of keys (`splits` below). Each writes its
// rows' unnormalized output with their running max and sum, then counts itself in; the block that
// arrives last for its tile merges every split's rows into the output (no second kernel):
//
//   out = sum_s o_s * 2^(m_s - M) / sum_s l_s * 2^(m_s - M),   M = max_s m_s
//
//   out:      float32 [num_splits, num_tokens, num_heads, head_dim]
//   stats:    float32 [num_splits, num_tokens, num_heads, 2]   {m (base-2 exponent), l}
//   arrivals: int32 [kMaxSplitTiles]  blocks of a tile (blockIdx.x, blockIdx.y) that have written
//             their partials; zero between launches (the last block resets its tile's), so a
//             captured launch replays without a reset of its own
//
// A split that saw no key writes m = -inf, l = 0 and weighs nothing; one that met bad metadata
// writes NaN, which the merge carries into the output.
#pragma once

#include "numeric.cuh"
#include "kvserve/paged_attention.h"

namespace kvserve::gpu {

// Tiles (x * gridDim.y + y) that may split: the launcher splits only grids of fewer blocks.
constexpr int kMaxSplitTiles = 4096;
constexpr int kMaxSplits = 64;
constexpr int kSplitsPerLane = kMaxSplits / kWarpSize;

struct SplitPartials {
  float* out = nullptr;
  float* stats = nullptr;
  int32_t* arrivals = nullptr;
  int32_t num_splits = 1;
};

__host__ __device__ inline int64_t partial_row(const PagedAttentionParams& p, int64_t split, int64_t token,
                                               int64_t head) {
  return (split * p.num_tokens + token) * p.num_heads + head;
}

// One warp merges the `splits` splits of (token, head). The lanes read the splits' statistics side by
// side (split lane and lane + 32), so that the maximum and the weights are two warp reductions, not a
// walk over the splits; then each lane sums its kHeadDim / 32 consecutive dims over the splits, a
// batch of kBatch splits' loads in flight at once (one trip to L2 per batch, not per split), each
// split's weight taken from the lane that holds it. The loops over the splits stay loops: the code
// runs once per row, fetched cold (the engine's decode call waits on instruction fetches).
template <class T, int kHeadDim>
__device__ inline void merge_split_row(const PagedAttentionParams& p, const SplitPartials& partials, int splits,
                                       int64_t token, int64_t head, int lane) {
  constexpr int kDims = kHeadDim / kWarpSize;  // consecutive dims per lane: 2, 4 or 8
  static_assert(kHeadDim % kWarpSize == 0 && kDims % 2 == 0, "whole float2 per lane");
  constexpr int kPairs = kDims / 2;
  constexpr int kBatch = 16 / kPairs;  // 16 float2 loads in flight per lane
  static_assert(kWarpSize % kBatch == 0, "a batch takes its weights from one lane's splits");

  float m[kSplitsPerLane], l[kSplitsPerLane];
  float top = -INFINITY;
#pragma unroll
  for (int k = 0; k < kSplitsPerLane; ++k) {
    const int s = lane + k * kWarpSize;
    m[k] = -INFINITY;
    l[k] = 0.f;
    if (s < splits) {
      const float* stats = partials.stats + 2 * partial_row(p, s, token, head);
      m[k] = load_through_l2(stats);
      l[k] = load_through_l2(stats + 1);
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

  // Split s's rows lie split_step floats apart.
  const float* first_part = partials.out + partial_row(p, 0, token, head) * kHeadDim + lane * kDims;
  const int64_t split_step = p.num_tokens * p.num_heads * kHeadDim;
  float value[kDims] = {};
#pragma unroll 1
  for (int k = 0; k * kWarpSize < splits; ++k) {
    float mine = weight[0];  // the weight of this lane's split k * 32 + lane
#pragma unroll
    for (int j = 1; j < kSplitsPerLane; ++j) {
      if (k == j) mine = weight[j];
    }
#pragma unroll 1
    for (int from = 0; from < kWarpSize && k * kWarpSize + from < splits; from += kBatch) {
      float w[kBatch];
      float2 pairs[kBatch][kPairs];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int s = k * kWarpSize + from + b;
        w[b] = shfl(mine, from + b);
        // A split past the tile's count, or whose weight underflows, adds nothing and is not read.
        const bool read = s < splits && w[b] != 0.f;
        const auto* part = reinterpret_cast<const float2*>(first_part + (read ? s : 0) * split_step);
#pragma unroll
        for (int j = 0; j < kPairs; ++j) pairs[b][j] = read ? load_through_l2(part + j) : make_float2(0.f, 0.f);
        if (!read) w[b] = 0.f;
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
#pragma unroll
        for (int j = 0; j < kPairs; ++j) {
          value[2 * j] += w[b] * pairs[b][j].x;
          value[2 * j + 1] += w[b] * pairs[b][j].y;
        }
      }
    }
  }
  T* out = static_cast<T*>(p.out) + token * p.out_stride_token + head * p.out_stride_head + lane * kDims;
  const float inverse = 1.f / total;
  Pack<T, kDims> result;
#pragma unroll
  for (int j = 0; j < kDims; ++j) result.values[j] = from_float<T>(value[j] * inverse);
  *reinterpret_cast<Pack<T, kDims>*>(out) = result;
}

// Called by every thread of a split block once its partials are written (each thread's own writes
// made visible first). The block that arrives last of the tile's `splits` merges the tile's `rows`
// rows, row i being (token, head) = row_item(i), one warp per row, and resets the tile's count.
template <class T, int kHeadDim, int kWarps, class RowItem>
__device__ inline void merge_if_last_split(const PagedAttentionParams& p, const SplitPartials& partials, int splits,
                                           int64_t tile, int64_t rows, RowItem row_item) {
  __shared__ int s_last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(partials.arrivals + tile, 1) == splits - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize, lane = static_cast<int>(threadIdx.x) % kWarpSize;
  for (int64_t i = warp; i < rows; i += kWarps) {
    int64_t token = 0, head = 0;
    row_item(i, &token, &head);
    merge_split_row<T, kHeadDim>(p, partials, splits, token, head, lane);
  }
  if (threadIdx.x == 0) partials.arrivals[tile] = 0;
}

}  // namespace kvserve::gpu
