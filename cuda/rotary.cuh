// The rotary kernel behind rotary_embedding_cuda (query and key rotated in place) and
// rotary_and_cache_cuda (the same, with the rotated key and the value written into their cache
// slot): one kernel, the cache write a compile-time option.
//
// Grid (token, chunk): a token's items spread over blocks of kRotaryThreads, so that a decode step's
// few tokens still keep many threads busy, each with independent loads. Item i < rotated turns kPack
// consecutive pairs (d, d + half) of one query or key head, with 16-byte loads of both halves, cos
// and sin where every row and head starts on 16 bytes (one element otherwise); with the cache write,
// a key head's rotated pairs also go to the slot, and the items after the pairs copy the value
// heads' packs into it (rounded to the cache's element type C where it is narrower).
//
// With the heads' norms (kNorm: rotary_and_cache's query_norm_weight and key_norm_weight), a head's
// items sit in consecutive lanes of one warp: item j holds the head's packs j and j + P / 2 (P packs
// a head), where rms_norm's warp gives a lane one pack each. The item sums its two packs' squares
// (the norm kernel's butterfly step across P / 2 lanes, which adds the same two numbers), then the
// lanes of the head take the butterfly's remaining steps: the norm kernel's total, bit for bit, and
// its rounding of each normalized value before the rotation.
#pragma once

#include "cache_slot.cuh"
#include "rms.cuh"
#include "kvserve/layer_ops.h"
#include "kvserve/reshape_and_cache.h"
#include "kvserve/rotary_and_cache.h"

namespace kvserve::gpu {

constexpr int kRotaryThreads = 256;

// One pair (a, b) = (x[d], x[d + half]) of a head rotated by (cos, sin) as Hugging Face's
// `x * cos + rotate_half(x) * sin`: each product stored in T, then their sum (rotary_kernel and the
// few-rows linear with the cache write, cuda/linear.cu, both).
template <class T>
__device__ inline void rotate_pair(float a, float b, float cos, float sin, T* first, T* second) {
  *first = from_float<T>(product_in<T>(a, cos) - product_in<T>(b, sin));
  *second = from_float<T>(product_in<T>(b, cos) + product_in<T>(a, sin));
}

// Row `token` of q or k head `head` (the key's heads numbered after the query's), rotated in place.
template <class T>
__device__ inline T* rotated_head(const RotaryEmbeddingParams& r, int64_t token, int64_t head) {
  return head >= r.num_heads
             ? static_cast<T*>(r.key) + token * r.key_stride_token + (head - r.num_heads) * r.key_stride_head
             : static_cast<T*>(r.query) + token * r.query_stride_token + head * r.query_stride_head;
}

// p.cache: read only with kCache (C: its element type); the norm weights only with kNorm. A slot of
// -1 (a padding row) or out of range is not written.
template <class T, int kPack, bool kCache, bool kNorm, class C = T>
__global__ void __launch_bounds__(kRotaryThreads) rotary_kernel(const RotaryAndCacheParams p) {
  wait_for_prior_grid();
  using Packed = Pack<T, kPack>;
  const RotaryEmbeddingParams& r = p.rotary;
  const ReshapeAndCacheParams& c = p.cache;
  const int64_t token = blockIdx.x;
  const auto head_dim = static_cast<int32_t>(r.head_dim), half = head_dim / 2;
  const int32_t pairs_per_head = half / kPack;
  const T* cos = static_cast<const T*>(r.cos) + token * r.cos_sin_stride_token;
  const T* sin = static_cast<const T*>(r.sin) + token * r.cos_sin_stride_token;
  C* key_slot = nullptr;
  C* value_slot = nullptr;
  if constexpr (kCache) {
    const int64_t at = cache_slot(c, token);
    if (at >= 0) {
      key_slot = static_cast<C*>(c.key_cache) + at;
      value_slot = static_cast<C*>(c.value_cache) + at;
    }
  }
  const auto rotated = static_cast<int32_t>((r.num_heads + r.num_kv_heads) * pairs_per_head);
  const int32_t items = kCache ? rotated + static_cast<int32_t>(r.num_kv_heads * (head_dim / kPack)) : rotated;
  // kNorm: whole warps take each trip (their lanes meet in shuffles), those past `items` idle.
  const int32_t trips_end = kNorm ? (items + kWarpSize - 1) / kWarpSize * kWarpSize : items;
  for (int32_t i = blockIdx.y * kRotaryThreads + threadIdx.x; i < trips_end; i += gridDim.y * kRotaryThreads) {
    const int32_t head = i / pairs_per_head, d = (i % pairs_per_head) * kPack;
    const bool is_key = head >= r.num_heads;
    T* x = rotated_head<T>(r, token, head);
    Packed x1{}, x2{};
    if (i < rotated) {
      x1 = *reinterpret_cast<const Packed*>(x + d);
      x2 = *reinterpret_cast<const Packed*>(x + d + half);
    }
    if constexpr (kNorm) {  // see the top of this file; lanes past the heads add zeros among themselves
      float squares = add_squares(x1, 0.f) + add_squares(x2, 0.f);
      for (int32_t mask = pairs_per_head / 2; mask > 0; mask /= 2) squares += shfl_xor(squares, mask);
      if (i < rotated) {
        const T* weight = static_cast<const T*>(is_key ? p.key_norm_weight : p.query_norm_weight);
        const float inverse = inverse_rms(squares, head_dim, p.norm_eps);
        x1 = normalized(x1, *reinterpret_cast<const Packed*>(weight + d), inverse);
        x2 = normalized(x2, *reinterpret_cast<const Packed*>(weight + d + half), inverse);
      }
    }
    if (i < rotated) {
      const Packed cs = *reinterpret_cast<const Packed*>(cos + d), sn = *reinterpret_cast<const Packed*>(sin + d);
      Packed y1, y2;
#pragma unroll
      for (int k = 0; k < kPack; ++k) {
        rotate_pair(to_float(x1.values[k]), to_float(x2.values[k]), to_float(cs.values[k]), to_float(sn.values[k]),
                    &y1.values[k], &y2.values[k]);
      }
      *reinterpret_cast<Packed*>(x + d) = y1;
      *reinterpret_cast<Packed*>(x + d + half) = y2;
      if (is_key && key_slot != nullptr) {
        C* cached = key_slot + (head - r.num_heads) * head_dim;
        store_cached(cached + d, y1);
        store_cached(cached + d + half, y2);
      }
    } else if (i < items && value_slot != nullptr) {
      const int32_t j = i - rotated, v_head = j / (head_dim / kPack), v_d = (j % (head_dim / kPack)) * kPack;
      const T* value = static_cast<const T*>(c.value) + token * c.value_stride_token + v_head * c.value_stride_head;
      store_cached(value_slot + v_head * head_dim + v_d, *reinterpret_cast<const Packed*>(value + v_d));
    }
  }
}

// Whether query, key, cos and sin rows and heads (and half a head) move in 16-byte packs.
inline bool rotary_packs_of_16_bytes(const RotaryEmbeddingParams& r) {
  return all_16_byte_aligned({r.query, r.key, r.cos, r.sin},
                             {r.head_dim / 2, r.query_stride_token, r.query_stride_head, r.key_stride_token,
                              r.key_stride_head, r.cos_sin_stride_token},
                             dtype_bytes(r.dtype));
}

// Whether rotary_kernel<kNorm = true> takes p's head norms: query, key and the weights in 16-byte
// packs (`packed` says the first two), 2 to 32 packs a head, a power of two (see the top of this
// file).
inline bool head_norms_fused(const RotaryAndCacheParams& p, bool packed) {
  const int64_t element = dtype_bytes(p.rotary.dtype), packs = p.rotary.head_dim * element / 16;
  return packed && all_16_byte_aligned({p.query_norm_weight, p.key_norm_weight}, {}, element) && packs >= 2 &&
         packs <= kWarpSize && (packs & (packs - 1)) == 0;
}

// Launches rotary_kernel for p.rotary's dtype (and with kCache, p.cache's), in 16-byte packs of rows
// when `packed`, with the heads' norms when p has them (then head_norms_fused must hold);
// r.num_tokens > 0.
template <bool kCache>
Status launch_rotary(const RotaryAndCacheParams& p, bool packed, kvGpuStream_t stream) {
  const RotaryEmbeddingParams& r = p.rotary;
  const bool norm = p.query_norm_weight != nullptr;
  return with_float_type(r.dtype, [&](auto tag) {
    using T = decltype(tag);
    auto launch_kernels = [&](auto element) {
      using C = decltype(element);
      auto launch = [&](auto kernel, int64_t pack) {
        const int64_t items = (r.num_heads + (kCache ? 2 : 1) * r.num_kv_heads) * (r.head_dim / 2 / pack);
        launch_kernel(kernel, row_chunks_grid(r.num_tokens, items, kRotaryThreads), kRotaryThreads, 0, stream, p);
        return launch_status();
      };
      constexpr int kPack = 16 / sizeof(T);
      if constexpr (kCache) {  // (rotary_embedding takes no norms)
        if (norm) return launch(rotary_kernel<T, kPack, kCache, true, C>, kPack);
      }
      return packed ? launch(rotary_kernel<T, kPack, kCache, false, C>, kPack)
                    : launch(rotary_kernel<T, 1, kCache, false, C>, 1);
    };
    if constexpr (kCache) {
      return with_cache_type<T>(p.cache.cache_dtype.value_or(r.dtype), launch_kernels);
    } else {
      return launch_kernels(T{});
    }
  });
}

}  // namespace kvserve::gpu
