// The portable paged-attention kernel: every dtype and cache dtype, any head_dim up to
// kPortableMaxHeadDim, CUDA and HIP. It serves float32, the head_dims the tensor-core kernel has no
// instance for, and HIP.
//
// One thread block per (query token, query head). Its warps take the visible keys in turn (warp w
// takes keys w, w + 4, ...), each keeping its own running max, sum and output (lane l holds dims
// l, l + 32, ...); the four states are merged through shared memory at the end. float32 throughout:
// the rows are of T, the caches of C (T, or narrower: cache_dtype).
#pragma once

#include <cmath>

#include "attention_metadata.cuh"
#include "numeric.cuh"

namespace kvserve::gpu {

constexpr int kPortableThreads = 128;
constexpr int kPortableMaxHeadDim = 512;

template <class T, class C>
__global__ void __launch_bounds__(kPortableThreads) attention_portable_kernel(const PagedAttentionParams p) {
  wait_for_prior_grid();
  constexpr int kWarps = kPortableThreads / kWarpSize;
  constexpr int kDimsPerLane = kPortableMaxHeadDim / kWarpSize;
  __shared__ float s_max[kWarps], s_sum[kWarps];
  __shared__ int s_bad_block[kWarps];
  __shared__ float s_out[kWarps][kPortableMaxHeadDim];

  const int64_t token = blockIdx.x, head = blockIdx.y;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t group = p.num_heads / p.num_kv_heads, kv_head = head / group, dim = p.head_dim;
  T* out = static_cast<T*>(p.out) + token * p.out_stride_token + head * p.out_stride_head;

  const int64_t req = request_of_token(p, token);
  const RequestRows r = read_request(p, req);
  if (!r.rows_ok || token < r.token_begin || token >= r.token_begin + r.num_queries) return;  // not ours to write
  if (!r.context_ok) {
    for (int64_t d = threadIdx.x; d < dim; d += kPortableThreads) out[d] = from_float<T>(NAN);
    return;
  }
  const int64_t position = r.seq_len - r.num_queries + (token - r.token_begin);
  const int64_t key_begin = first_visible_key(p, position), key_end = visible_key_end(p, position, r.seq_len);

  const T* query = static_cast<const T*>(p.query) + token * p.query_stride_token + head * p.query_stride_head;
  float q[kDimsPerLane], acc[kDimsPerLane];
#pragma unroll
  for (int j = 0; j < kDimsPerLane; ++j) {
    const int64_t d = lane + j * kWarpSize;
    q[j] = d < dim ? to_float(query[d]) : 0.f;
    acc[j] = 0.f;
  }
  const C* key_cache = static_cast<const C*>(p.key_cache);
  const C* value_cache = static_cast<const C*>(p.value_cache);
  const int32_t* block_row = p.block_table + req * p.block_table_stride;
  float running_max = -INFINITY, sum = 0.f;
  int bad_block = 0;
  for (int64_t key = key_begin + warp; key < key_end; key += kWarps) {
    const int64_t block = block_of_key(p, block_row, static_cast<int32_t>(key));
    if (block < 0) {
      bad_block = 1;
      continue;
    }
    const int64_t at = cache_offset(p, block, static_cast<int32_t>(key), kv_head);
    float dot = 0.f;
#pragma unroll
    for (int j = 0; j < kDimsPerLane; ++j) {
      const int64_t d = lane + j * kWarpSize;
      if (d < dim) dot += q[j] * to_float(key_cache[at + d]);
    }
    const float score = attention_score(p, warp_sum(dot));
    const float new_max = fmaxf(running_max, score);
    const float rescale = running_max == -INFINITY ? 0.f : expf(running_max - new_max);
    const float weight = expf(score - new_max);
    sum = sum * rescale + weight;
#pragma unroll
    for (int j = 0; j < kDimsPerLane; ++j) {
      const int64_t d = lane + j * kWarpSize;
      if (d < dim) acc[j] = acc[j] * rescale + weight * to_float(value_cache[at + d]);
    }
    running_max = new_max;
  }

  if (lane == 0) {
    s_max[warp] = running_max;
    s_sum[warp] = sum;
    s_bad_block[warp] = bad_block;
  }
#pragma unroll
  for (int j = 0; j < kDimsPerLane; ++j) {
    const int64_t d = lane + j * kWarpSize;
    if (d < dim) s_out[warp][d] = acc[j];
  }
  __syncthreads();
  float top = -INFINITY;
  int bad = 0;
  for (int w = 0; w < kWarps; ++w) {
    top = fmaxf(top, s_max[w]);
    bad |= s_bad_block[w];
  }
  float weights[kWarps], total = 0.f;
  for (int w = 0; w < kWarps; ++w) {
    weights[w] = s_sum[w] > 0.f ? expf(s_max[w] - top) : 0.f;
    total += weights[w] * s_sum[w];
  }
  for (int64_t d = threadIdx.x; d < dim; d += kPortableThreads) {
    float value = 0.f;
    for (int w = 0; w < kWarps; ++w) value += weights[w] * s_out[w][d];
    out[d] = from_float<T>(bad ? NAN : value / total);
  }
}

}  // namespace kvserve::gpu
