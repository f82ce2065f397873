// The rotation of rotary embedding, shared by rotary_embedding.cu and rotary_and_cache.cu.
#pragma once

#include "numeric.cuh"

namespace kvserve::gpu {

// Both rotary kernels run on a (token, chunk) grid: a token's items (pairs to turn, and with the
// cache write, value packs to copy) spread over blocks of kRotaryThreads, so that a decode step's
// few tokens still keep many threads busy, each with independent loads.
constexpr int kRotaryThreads = 256;

inline dim3 rotary_grid(int64_t num_tokens, int64_t items) {
  constexpr int64_t kMaxChunks = 65535;  // gridDim.y
  const int64_t chunks = min_i64(kMaxChunks, (items + kRotaryThreads - 1) / kRotaryThreads);
  return dim3(static_cast<unsigned>(num_tokens), static_cast<unsigned>(chunks));
}

// kPack consecutive pairs (x1[k], x2[k]) of one head, x2 half a head after x1, turned by the angles
// whose cos and sin are c[k], s[k]. In float32, rounded as Hugging Face's `q * cos + rotate_half(q)
// * sin` rounds: each product stored in T, then their sum.
template <class T, int kPack>
__device__ inline void rotate_pairs(const Pack<T, kPack>& x1, const Pack<T, kPack>& x2, const Pack<T, kPack>& c,
                                    const Pack<T, kPack>& s, Pack<T, kPack>* y1, Pack<T, kPack>* y2) {
#pragma unroll
  for (int k = 0; k < kPack; ++k) {
    const float a = to_float(x1.values[k]), b = to_float(x2.values[k]);
    const float ck = to_float(c.values[k]), sk = to_float(s.values[k]);
    y1->values[k] = from_float<T>(product_in<T>(a, ck) - product_in<T>(b, sk));
    y2->values[k] = from_float<T>(product_in<T>(b, ck) + product_in<T>(a, sk));
  }
}

}  // namespace kvserve::gpu
