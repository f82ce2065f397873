// Helpers of the emulated layer-kernel tests (test_gpu_layer_ops_emulated.cpp and
// test_gpu_linear_emulated.cpp): the params of the products and of SiLU-and-mul over test buffers,
// and a decode step's q | k | v rows with their rotary tables and caches.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <ostream>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#include "emulated_buffers.h"
#include "kvserve/layer_ops.h"
#include "kvserve/linear.h"
#include "kvserve/rotary_and_cache.h"

namespace emulated_test {

// out [rows, out_stride] = x [rows, input_stride] @ w [out_features, in]^T (+ bias), w's rows packed.
inline kvserve::LinearParams linear_params(Buffer& out, int64_t out_stride, Buffer& x, int64_t input_stride, Buffer& w,
                                    const void* bias, int64_t rows, int64_t in, int64_t out_features, DType dtype) {
  kvserve::LinearParams p;
  p.out = out.data();
  p.out_stride = out_stride;
  p.input = x.data();
  p.input_stride = input_stride;
  p.weight = w.data();
  p.weight_stride = in;
  p.bias = bias;
  p.num_rows = rows;
  p.in_features = in;
  p.out_features = out_features;
  p.dtype = dtype;
  return p;
}

// silu_and_mul over `tokens` rows of [gate | up] (2 * size wide) into rows of `size`, both packed.
inline kvserve::SiluAndMulParams silu_and_mul_params(Buffer& gate_up, Buffer& out, DType dtype, int64_t tokens,
                                                     int64_t size) {
  kvserve::SiluAndMulParams p;
  p.input = gate_up.data();
  p.input_stride_token = 2 * size;
  p.out = out.data();
  p.out_stride_token = size;
  p.dtype = dtype;
  p.num_tokens = tokens;
  p.size = size;
  return p;
}

// Shapes: 16-byte packs of pairs (head_dim 16), a grid of several chunks per token (40 heads of
// 128), and one element at a time (head_dim 12: half a head is not a whole pack).
struct RotaryShape {
  int64_t heads, kv_heads, head_dim;
};

inline std::ostream& operator<<(std::ostream& os, const RotaryShape& s) {
  return os << s.heads << " heads / " << s.kv_heads << " kv heads of " << s.head_dim;
}

// cos and sin [tokens, half] of position t + 1's angles.
inline std::pair<Buffer, Buffer> cos_sin_table(DType dtype, int64_t tokens, int64_t half) {
  Buffer cos(dtype, static_cast<size_t>(tokens * half)), sin(dtype, static_cast<size_t>(tokens * half));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(t + 1) * std::pow(100.f, -static_cast<float>(i) / half);
      cos.set(t * half + i, std::cos(angle));
      sin.set(t * half + i, std::sin(angle));
    }
  }
  return {cos, sin};
}

// A step of tokens (one a slot given; most tests take kTokens) as a layer has it before attention:
// random q | k | v rows of one fused
// projection, cos/sin, caches poisoned with NaN (of cache_dtype when given: narrower), and the params
// of rotary_embedding (params.rotary), reshape_and_cache (params.cache) and their fusion (params)
// over them.
struct FusedQkvStep {
  static constexpr int64_t kTokens = 3, kBlocks = 8, kBlockSize = 4;
  int64_t tokens, row;  // tokens: one a slot given (kTokens in most tests)
  Buffer qkv, cos, sin, key_cache, value_cache;
  std::vector<int64_t> slots;
  kvserve::RotaryAndCacheParams params;

  FusedQkvStep(DType dtype, const RotaryShape& shape, std::vector<int64_t> slot_mapping,
               std::optional<DType> cache_dtype = std::nullopt)
      : tokens(static_cast<int64_t>(slot_mapping.size())), row((shape.heads + 2 * shape.kv_heads) * shape.head_dim),
        qkv(dtype, 0), cos(dtype, 0), sin(dtype, 0),
        key_cache(dtype, 0), value_cache(dtype, 0), slots(std::move(slot_mapping)) {
    std::mt19937 rng(7);
    const auto [heads, kv_heads, head_dim] = shape;
    const int64_t cache_size = kBlocks * kBlockSize * kv_heads * head_dim;
    qkv = random_buffer(dtype, static_cast<size_t>(tokens * row), rng);
    std::tie(cos, sin) = cos_sin_table(dtype, tokens, head_dim / 2);
    key_cache = nan_buffer(cache_dtype.value_or(dtype), static_cast<size_t>(cache_size));
    value_cache = nan_buffer(cache_dtype.value_or(dtype), static_cast<size_t>(cache_size));
    const int64_t element = kvserve::dtype_bytes(dtype);
    kvserve::RotaryEmbeddingParams& r = params.rotary;
    r.query = qkv.data();
    r.key = static_cast<char*>(qkv.data()) + heads * head_dim * element;
    r.query_stride_token = r.key_stride_token = row;
    r.query_stride_head = r.key_stride_head = head_dim;
    r.cos = cos.data();
    r.sin = sin.data();
    r.cos_sin_stride_token = head_dim / 2;
    r.dtype = dtype;
    r.num_tokens = tokens;
    r.num_heads = heads;
    r.num_kv_heads = kv_heads;
    r.head_dim = head_dim;
    kvserve::ReshapeAndCacheParams& c = params.cache;
    c.key = r.key;
    c.key_stride_token = row;
    c.key_stride_head = head_dim;
    c.value = static_cast<char*>(qkv.data()) + (heads + kv_heads) * head_dim * element;
    c.value_stride_token = row;
    c.value_stride_head = head_dim;
    c.key_cache = key_cache.data();
    c.value_cache = value_cache.data();
    c.cache_stride_block = kBlockSize * kv_heads * head_dim;
    c.slot_mapping = slots.data();
    c.slot_mapping_dtype = DType::kInt64;
    c.dtype = dtype;
    c.cache_dtype = cache_dtype;
    c.num_tokens = tokens;
    c.num_kv_heads = kv_heads;
    c.head_dim = head_dim;
    c.num_blocks = kBlocks;
    c.block_size = kBlockSize;
  }
};

}  // namespace emulated_test
