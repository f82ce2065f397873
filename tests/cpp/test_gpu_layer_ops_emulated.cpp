// The fused layer kernels and copy_blocks, run by the GPU emulator (gpu_emulator/), against plain
// loops that round to the storage dtype where torch does.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "emulated_buffers.h"
#include "kvserve/argmax.h"
#include "kvserve/copy_blocks.h"
#include "kvserve/layer_ops.h"
#include "kvserve/linear.h"
#include "kvserve/linear_rotary_and_cache.h"
#include "kvserve/reshape_and_cache.h"
#include "kvserve/rotary_and_cache.h"

namespace {

using kvserve::Status;
using namespace emulated_test;

// ---- fused layer helpers -------------------------------------------------------------------------

TEST(EmulatedLayerOps, RmsNormAndFusedResidualAdd) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    // Narrow rows take a warp each; wide ones (over 128 packs: 4096, 2600 and unaligned 4099) a block,
    // whose threads keep 4 packs in registers (8200 and 4099: more, from memory in the second pass).
    for (int64_t hidden : {256, 100, 33, 4096, 2600, 4099, 8200}) {
      std::mt19937 rng(3);
      const int64_t tokens = 3, stride = hidden + 16;
      Buffer x = random_buffer(dtype, static_cast<size_t>(tokens * stride), rng);
      Buffer residual = random_buffer(dtype, static_cast<size_t>(tokens * stride), rng);
      Buffer weight = random_buffer(dtype, static_cast<size_t>(hidden), rng);
      Buffer expected_sum(dtype, 1), expected_out(dtype, 1);
      std::vector<float> sums(static_cast<size_t>(tokens * hidden)), outs(sums.size());
      for (int64_t t = 0; t < tokens; ++t) {
        double squares = 0;
        for (int64_t i = 0; i < hidden; ++i) {
          const float s = expected_sum.rounded(x.get(t * stride + i) + residual.get(t * stride + i));
          sums[t * hidden + i] = s;
          squares += static_cast<double>(s) * s;
        }
        const float inverse = 1.f / std::sqrt(static_cast<float>(squares / hidden) + 1e-5f);
        for (int64_t i = 0; i < hidden; ++i) {
          const float normed = expected_out.rounded(sums[t * hidden + i] * inverse);
          outs[t * hidden + i] = expected_out.rounded(weight.get(i) * normed);
        }
      }
      kvserve::RmsNormParams p;
      p.out = x.data();  // in place, as the model calls it
      p.input = x.data();
      p.out_stride_token = p.input_stride_token = stride;
      p.residual = residual.data();
      p.residual_stride_token = stride;
      p.weight = weight.data();
      p.dtype = dtype;
      p.num_tokens = tokens;
      p.hidden = hidden;
      p.eps = 1e-5f;
      ASSERT_EQ(kvserve::rms_norm_cuda(p, nullptr), Status::kOk);
      // Before the wait for the kernel before (compat.cuh), only the weight, which no kernel writes.
      const size_t weight_bytes = static_cast<size_t>(hidden) * (dtype == DType::kFloat32 ? 4 : 2);
      const EarlyLoads early = loads_before_wait({{weight.data(), weight_bytes}});
      EXPECT_GT(early.all, 0u);
      EXPECT_EQ(early.outside, 0u) << name(dtype) << " hidden " << hidden;
      const double tol = dtype == DType::kFloat32 ? 1e-5 : 1e-2;
      for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t i = 0; i < hidden; ++i) {
          ASSERT_EQ(residual.get(t * stride + i), sums[t * hidden + i]) << name(dtype) << " hidden " << hidden;
          ASSERT_NEAR(x.get(t * stride + i), outs[t * hidden + i], tol * (1 + std::abs(outs[t * hidden + i])))
              << name(dtype) << " hidden " << hidden << " token " << t << " i " << i;
        }
      }
    }
  }
}

TEST(EmulatedLayerOps, RmsNormOverStridedHeads) {
  std::mt19937 rng(4);
  const int64_t tokens = 2, heads = 3, head_dim = 32, row = 5 * head_dim;  // q heads of a fused projection
  Buffer x = random_buffer(DType::kBFloat16, static_cast<size_t>(tokens * row), rng);
  Buffer weight = random_buffer(DType::kBFloat16, static_cast<size_t>(head_dim), rng);
  Buffer out = nan_buffer(DType::kBFloat16, static_cast<size_t>(tokens * heads * head_dim)), scratch(DType::kBFloat16, 1);
  kvserve::RmsNormParams p;
  p.input = x.data();
  p.input_stride_token = row;
  p.input_stride_head = head_dim;
  p.out = out.data();
  p.out_stride_token = heads * head_dim;
  p.out_stride_head = head_dim;
  p.weight = weight.data();
  p.dtype = DType::kBFloat16;
  p.num_tokens = tokens;
  p.num_heads = heads;
  p.hidden = head_dim;
  ASSERT_EQ(kvserve::rms_norm_cuda(p, nullptr), Status::kOk);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      double squares = 0;
      for (int64_t i = 0; i < head_dim; ++i) squares += std::pow(x.get(t * row + h * head_dim + i), 2);
      const float inverse = 1.f / std::sqrt(static_cast<float>(squares / head_dim) + p.eps);
      for (int64_t i = 0; i < head_dim; ++i) {
        const float expected = scratch.rounded(weight.get(i) * scratch.rounded(x.get(t * row + h * head_dim + i) * inverse));
        ASSERT_NEAR(out.get((t * heads + h) * head_dim + i), expected, 1e-2 * (1 + std::abs(expected)));
      }
    }
  }
}

// out [rows, out_stride] = x [rows, input_stride] @ w [out_features, in]^T (+ bias), w's rows packed.
kvserve::LinearParams linear_params(Buffer& out, int64_t out_stride, Buffer& x, int64_t input_stride, Buffer& w,
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

// Shapes: 16-byte packs of pairs (head_dim 16), a grid of several chunks per token (40 heads of
// 128), and one element at a time (head_dim 12: half a head is not a whole pack).
struct RotaryShape {
  int64_t heads, kv_heads, head_dim;
};

std::ostream& operator<<(std::ostream& os, const RotaryShape& s) {
  return os << s.heads << " heads / " << s.kv_heads << " kv heads of " << s.head_dim;
}

// cos and sin [tokens, half] of position t + 1's angles.
std::pair<Buffer, Buffer> cos_sin_table(DType dtype, int64_t tokens, int64_t half) {
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

// A step of three tokens as a layer has it before attention: random q | k | v rows of one fused
// projection, cos/sin, caches poisoned with NaN, and the params of rotary_embedding (params.rotary),
// reshape_and_cache (params.cache) and their fusion (params) over them.
struct FusedQkvStep {
  static constexpr int64_t kTokens = 3, kBlocks = 3, kBlockSize = 4;
  int64_t row;
  Buffer qkv, cos, sin, key_cache, value_cache;
  std::vector<int64_t> slots;
  kvserve::RotaryAndCacheParams params;

  FusedQkvStep(DType dtype, const RotaryShape& shape, std::vector<int64_t> slot_mapping)
      : row((shape.heads + 2 * shape.kv_heads) * shape.head_dim), qkv(dtype, 0), cos(dtype, 0), sin(dtype, 0),
        key_cache(dtype, 0), value_cache(dtype, 0), slots(std::move(slot_mapping)) {
    std::mt19937 rng(7);
    const auto [heads, kv_heads, head_dim] = shape;
    const int64_t cache_size = kBlocks * kBlockSize * kv_heads * head_dim;
    qkv = random_buffer(dtype, static_cast<size_t>(kTokens * row), rng);
    std::tie(cos, sin) = cos_sin_table(dtype, kTokens, head_dim / 2);
    key_cache = nan_buffer(dtype, static_cast<size_t>(cache_size));
    value_cache = nan_buffer(dtype, static_cast<size_t>(cache_size));
    const int64_t element = dtype == DType::kFloat32 ? 4 : 2;
    kvserve::RotaryEmbeddingParams& r = params.rotary;
    r.query = qkv.data();
    r.key = static_cast<char*>(qkv.data()) + heads * head_dim * element;
    r.query_stride_token = r.key_stride_token = row;
    r.query_stride_head = r.key_stride_head = head_dim;
    r.cos = cos.data();
    r.sin = sin.data();
    r.cos_sin_stride_token = head_dim / 2;
    r.dtype = dtype;
    r.num_tokens = kTokens;
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
    c.num_tokens = kTokens;
    c.num_kv_heads = kv_heads;
    c.head_dim = head_dim;
    c.num_blocks = kBlocks;
    c.block_size = kBlockSize;
  }
};

class EmulatedRotary : public ::testing::TestWithParam<RotaryShape> {};

TEST_P(EmulatedRotary, InPlaceOnFusedQk) {
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    const auto [heads, kv_heads, head_dim] = GetParam();
    FusedQkvStep step(dtype, GetParam(), {0, 1, 2});
    const Buffer before = step.qkv;
    ASSERT_EQ(kvserve::rotary_embedding_cuda(step.params.rotary, nullptr), Status::kOk);
    const int64_t half = head_dim / 2, row = step.row;
    Buffer scratch(dtype, 1);
    for (int64_t t = 0; t < FusedQkvStep::kTokens; ++t) {
      for (int64_t h = 0; h < heads + 2 * kv_heads; ++h) {
        for (int64_t i = 0; i < half; ++i) {
          const size_t a = static_cast<size_t>(t * row + h * head_dim + i), b = a + static_cast<size_t>(half);
          if (h >= heads + kv_heads) {  // v: untouched
            ASSERT_EQ(step.qkv.get(a), before.get(a));
            continue;
          }
          // Hugging Face's `q * cos + rotate_half(q) * sin`: each product stored in the dtype, then the sum.
          const float c = step.cos.get(t * half + i), s = step.sin.get(t * half + i);
          const float x1 = before.get(a), x2 = before.get(b);
          ASSERT_EQ(step.qkv.get(a), scratch.rounded(scratch.rounded(x1 * c) - scratch.rounded(x2 * s))) << name(dtype);
          ASSERT_EQ(step.qkv.get(b), scratch.rounded(scratch.rounded(x2 * c) + scratch.rounded(x1 * s))) << name(dtype);
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, EmulatedRotary,
                         ::testing::Values(RotaryShape{4, 2, 16}, RotaryShape{32, 8, 128}, RotaryShape{4, 2, 12}));

// rotary_and_cache against rotary_embedding then reshape_and_cache (the kernels it fuses, checked
// above and in test_gpu_attention_emulated.cpp) on the same data: the same bits in q, k, v and both
// caches.
class EmulatedRotaryAndCache : public ::testing::TestWithParam<RotaryShape> {};

TEST_P(EmulatedRotaryAndCache, EqualsTheTwoKernelsItFuses) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    FusedQkvStep apart(dtype, GetParam(), {5, -1, 10}), fused(dtype, GetParam(), {5, -1, 10});
    ASSERT_EQ(kvserve::rotary_embedding_cuda(apart.params.rotary, nullptr), Status::kOk);
    ASSERT_EQ(kvserve::reshape_and_cache_cuda(apart.params.cache, nullptr), Status::kOk);
    ASSERT_EQ(kvserve::rotary_and_cache_cuda(fused.params, nullptr), Status::kOk);
    EXPECT_EQ(fused.qkv.words, apart.qkv.words) << name(dtype);
    EXPECT_EQ(fused.key_cache.words, apart.key_cache.words) << name(dtype);
    EXPECT_EQ(fused.value_cache.words, apart.value_cache.words) << name(dtype);
    EXPECT_FALSE(std::isnan(fused.key_cache.get(5 * GetParam().kv_heads * GetParam().head_dim))) << "slot 5 written";
  }
}

TEST_P(EmulatedRotaryAndCache, SkipsSlotsOutOfRange) {
  // Slots live in device memory: the host cannot check them, the kernel skips the token's write
  // (as reshape_and_cache_cuda does) and still rotates its query and key.
  FusedQkvStep expected(DType::kBFloat16, GetParam(), {5, -1, 10});
  FusedQkvStep run(DType::kBFloat16, GetParam(), {5, 12 * 1000, 10});
  ASSERT_EQ(kvserve::rotary_and_cache_cuda(expected.params, nullptr), Status::kOk);
  ASSERT_EQ(kvserve::rotary_and_cache_cuda(run.params, nullptr), Status::kOk);
  EXPECT_EQ(run.qkv.words, expected.qkv.words);
  EXPECT_EQ(run.key_cache.words, expected.key_cache.words);
  EXPECT_EQ(run.value_cache.words, expected.value_cache.words);
}

TEST(EmulatedRotaryAndCache, RejectsACacheKeyThatIsNotTheRotatedOne) {
  FusedQkvStep run(DType::kBFloat16, RotaryShape{4, 2, 16}, {5, -1, 10});
  run.params.cache.key = run.params.cache.value;
  std::string why;
  EXPECT_EQ(kvserve::check_rotary_and_cache_layout(run.params, &why), Status::kInvalidArgument);
  EXPECT_NE(why.find("cache.key"), std::string::npos) << why;
  EXPECT_EQ(kvserve::rotary_and_cache_cuda(run.params, nullptr), Status::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Shapes, EmulatedRotaryAndCache,
                         ::testing::Values(RotaryShape{4, 2, 16}, RotaryShape{32, 8, 128}, RotaryShape{4, 2, 12}));

// linear_rotary_and_cache against linear_cuda, then rotary_and_cache_cuda, on the same input, weight
// and bias: the same bits in q, k, v and both caches (a padding slot, one out of range); refused
// where head_dim is not a multiple of 16, and where q, k, v are not the product's columns.
TEST_P(EmulatedRotaryAndCache, FusedIntoTheProjectionEqualsTheProjectionThenTheKernel) {
  const RotaryShape shape = GetParam();
  const int64_t hidden = 96, rows = FusedQkvStep::kTokens;
  for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    std::mt19937 rng(11);
    FusedQkvStep apart(dtype, shape, {5, -1, 12 * 1000}), fused(dtype, shape, {5, -1, 12 * 1000});
    Buffer x = random_buffer(dtype, static_cast<size_t>(rows * hidden), rng);
    Buffer w = random_buffer(dtype, static_cast<size_t>(apart.row * hidden), rng);
    Buffer b = random_buffer(dtype, static_cast<size_t>(apart.row), rng);
    kvserve::LinearParams product = linear_params(apart.qkv, apart.row, x, hidden, w, b.data(), rows, hidden,
                                                  apart.row, dtype);
    ASSERT_EQ(kvserve::linear_cuda(product, nullptr), Status::kOk);
    ASSERT_EQ(kvserve::rotary_and_cache_cuda(apart.params, nullptr), Status::kOk);
    product.out = fused.qkv.data();
    if (shape.head_dim % 16 != 0) {
      EXPECT_EQ(kvserve::linear_rotary_and_cache_cuda(product, fused.params, nullptr), Status::kUnsupported);
      continue;
    }
    ASSERT_EQ(kvserve::linear_rotary_and_cache_cuda(product, fused.params, nullptr), Status::kOk);
    EXPECT_EQ(fused.qkv.words, apart.qkv.words) << name(dtype);
    EXPECT_EQ(fused.key_cache.words, apart.key_cache.words) << name(dtype);
    EXPECT_EQ(fused.value_cache.words, apart.value_cache.words) << name(dtype);
    EXPECT_FALSE(std::isnan(fused.value_cache.get(5 * shape.kv_heads * shape.head_dim))) << "slot 5 written";
    fused.params.cache.value = fused.params.rotary.key;  // a value, but not the product's v columns
    std::string why;
    EXPECT_EQ(kvserve::check_linear_rotary_and_cache(product, fused.params, &why), Status::kInvalidArgument);
    EXPECT_NE(why.find("the q, k and v columns of linear.out"), std::string::npos) << why;
    EXPECT_EQ(kvserve::linear_rotary_and_cache_cuda(product, fused.params, nullptr), Status::kInvalidArgument);
  }
}

TEST(EmulatedRotaryAndCache, FusedIntoTheProjectionTakesOneTokensViewsAsTorchMakesThem) {
  // A one-token view of the product has a packed token stride in torch (heads * head_dim, not the
  // product's row), and a one-head view any head stride: strides that place nothing, accepted, with
  // the bits of the two kernels; one token of two keeps its row stride.
  const RotaryShape shape{4, 1, 16};
  const int64_t hidden = 64;
  std::mt19937 rng(12);
  FusedQkvStep apart(DType::kBFloat16, shape, {5, -1, 10}), fused(DType::kBFloat16, shape, {5, -1, 10});
  for (FusedQkvStep* step : {&apart, &fused}) {
    step->params.rotary.num_tokens = step->params.cache.num_tokens = 1;
  }
  kvserve::RotaryEmbeddingParams& r = fused.params.rotary;
  r.query_stride_token = shape.heads * shape.head_dim;
  r.key_stride_token = fused.params.cache.key_stride_token = fused.params.cache.value_stride_token = shape.head_dim;
  r.key_stride_head = fused.params.cache.key_stride_head = fused.params.cache.value_stride_head = 7;
  Buffer x = random_buffer(DType::kBFloat16, static_cast<size_t>(hidden), rng);
  Buffer w = random_buffer(DType::kBFloat16, static_cast<size_t>(apart.row * hidden), rng);
  kvserve::LinearParams product =
      linear_params(apart.qkv, apart.row, x, hidden, w, nullptr, 1, hidden, apart.row, DType::kBFloat16);
  ASSERT_EQ(kvserve::linear_cuda(product, nullptr), Status::kOk);
  ASSERT_EQ(kvserve::rotary_and_cache_cuda(apart.params, nullptr), Status::kOk);
  product.out = fused.qkv.data();
  std::string why;
  ASSERT_EQ(kvserve::check_linear_rotary_and_cache(product, fused.params, &why), Status::kOk) << why;
  ASSERT_EQ(kvserve::linear_rotary_and_cache_cuda(product, fused.params, nullptr), Status::kOk);
  EXPECT_EQ(fused.qkv.words, apart.qkv.words);
  EXPECT_EQ(fused.key_cache.words, apart.key_cache.words);
  EXPECT_EQ(fused.value_cache.words, apart.value_cache.words);
  product.num_rows = r.num_tokens = fused.params.cache.num_tokens = 2;
  EXPECT_EQ(kvserve::check_linear_rotary_and_cache(product, fused.params, &why), Status::kInvalidArgument);
}

// silu_and_mul over `tokens` rows of [gate | up] (2 * size wide) into rows of `size`, both packed.
kvserve::SiluAndMulParams silu_and_mul_params(Buffer& gate_up, Buffer& out, DType dtype, int64_t tokens, int64_t size) {
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

TEST(EmulatedLayerOps, SiluAndMul) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    for (int64_t size : {4096, 13}) {
      std::mt19937 rng(6);
      const int64_t tokens = 2;
      Buffer x = random_buffer(dtype, static_cast<size_t>(tokens * 2 * size), rng);
      Buffer out = nan_buffer(dtype, static_cast<size_t>(tokens * size)), scratch(dtype, 1);
      ASSERT_EQ(kvserve::silu_and_mul_cuda(silu_and_mul_params(x, out, dtype, tokens, size), nullptr), Status::kOk);
      for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t i = 0; i < size; ++i) {
          const float g = x.get(t * 2 * size + i), u = x.get(t * 2 * size + size + i);
          const float expected = scratch.rounded(scratch.rounded(g / (1.f + std::exp(-g))) * u);
          ASSERT_NEAR(out.get(t * size + i), expected, 1e-6 * (1 + std::abs(expected))) << name(dtype);
        }
      }
    }
  }
}

TEST(EmulatedLayerOps, ArgmaxMatchesCpu) {
  // Widths in 16-byte packs (a vocabulary) and not; rows with ties, NaN, -inf and no number at all.
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    for (int64_t width : {8200, 1001}) {
      std::mt19937 rng(7);
      const int64_t rows = 6, stride = width + 8;
      Buffer x = random_buffer(dtype, static_cast<size_t>(rows * stride), rng);
      x.set(static_cast<size_t>(1 * stride + 10), 9.f);  // a tie: the first column wins
      x.set(static_cast<size_t>(1 * stride + width - 3), 9.f);
      x.set(static_cast<size_t>(2 * stride + 5), NAN);   // NaN never wins
      x.set(static_cast<size_t>(2 * stride + width - 1), 20.f);
      for (int64_t i = 0; i < width; ++i) {
        x.set(static_cast<size_t>(3 * stride + i), NAN);  // no number: 0
        x.set(static_cast<size_t>(4 * stride + i), i % 2 ? -INFINITY : NAN);  // -inf is a number
      }
      kvserve::ArgmaxParams p;
      p.input = x.data();
      p.input_stride = stride;
      p.num_rows = rows;
      p.num_cols = width;
      p.dtype = dtype;
      std::vector<int32_t> cpu(rows, -1), gpu(rows, -1);
      p.out = cpu.data();
      ASSERT_EQ(kvserve::argmax_cpu(p), Status::kOk);
      p.out = gpu.data();
      ASSERT_EQ(kvserve::argmax_cuda(p, nullptr), Status::kOk);
      EXPECT_EQ(gpu, cpu) << name(dtype) << " width " << width;
      EXPECT_EQ(cpu[1], 10);
      EXPECT_EQ(cpu[2], width - 1);
      EXPECT_EQ(cpu[3], 0);
      EXPECT_EQ(cpu[4], 1);
    }
  }
}

TEST(EmulatedLayerOps, LinearMatchesAFloat64Reference) {
  // 1 to 8 rows; out_features not a multiple of the block's 16, in_features not of the warps' 32;
  // strided input and output rows; with and without a bias.
  for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    for (const auto& [rows, in, out_features] : {std::tuple<int64_t, int64_t, int64_t>{1, 512, 48},
                                                 {3, 200, 40}, {8, 1032, 17}}) {
      for (bool with_bias : {false, true}) {
        std::mt19937 rng(static_cast<uint32_t>(rows * 1000 + in));
        const int64_t input_stride = in + 16, out_stride = out_features + 5;
        Buffer x = random_buffer(dtype, static_cast<size_t>(rows * input_stride), rng);
        Buffer w = random_buffer(dtype, static_cast<size_t>(out_features * in), rng);
        Buffer b = random_buffer(dtype, static_cast<size_t>(out_features), rng);
        Buffer y = nan_buffer(dtype, static_cast<size_t>(rows * out_stride)), scratch(dtype, 1);
        kvserve::LinearParams p = linear_params(y, out_stride, x, input_stride, w, with_bias ? b.data() : nullptr, rows,
                                                in, out_features, dtype);
        ASSERT_EQ(kvserve::linear_cuda(p, nullptr), Status::kOk) << name(dtype);
        // Before the wait for the kernel before (compat.cuh), only the weight, which no kernel writes.
        const EarlyLoads early = loads_before_wait({{w.data(), static_cast<size_t>(out_features * in) * 2}});
        EXPECT_GT(early.all, 0u);
        EXPECT_EQ(early.outside, 0u) << name(dtype) << " rows " << rows << " in " << in;
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t n = 0; n < out_features; ++n) {
            double sum = with_bias ? b.get(static_cast<size_t>(n)) : 0.0;
            for (int64_t k = 0; k < in; ++k) {
              sum += static_cast<double>(x.get(static_cast<size_t>(r * input_stride + k))) *
                     w.get(static_cast<size_t>(n * in + k));
            }
            const float expected = scratch.rounded(static_cast<float>(sum));
            ASSERT_NEAR(y.get(static_cast<size_t>(r * out_stride + n)), expected, 1e-2 * (1 + std::abs(expected)))
                << name(dtype) << " rows " << rows << " in " << in << " row " << r << " feature " << n;
          }
          for (int64_t n = out_features; n < out_stride; ++n) {  // nothing written between the rows
            ASSERT_TRUE(std::isnan(y.get(static_cast<size_t>(r * out_stride + n))));
          }
        }
      }
    }
  }
  // More rows than a block takes, float32, and unpacked in_features: cuBLAS's work.
  std::mt19937 rng(1);
  Buffer x = random_buffer(DType::kBFloat16, 9 * 64, rng);
  Buffer y = nan_buffer(DType::kBFloat16, 9 * 16);
  kvserve::LinearParams p;
  p.out = y.data();
  p.input = x.data();
  p.weight = x.data();
  p.num_rows = 9;
  p.in_features = p.input_stride = p.weight_stride = 64;
  p.out_features = p.out_stride = 16;
  p.dtype = DType::kBFloat16;
  EXPECT_EQ(kvserve::linear_cuda(p, nullptr), Status::kUnsupported);
  p.num_rows = 8;
  p.in_features = 60;
  EXPECT_EQ(kvserve::linear_cuda(p, nullptr), Status::kUnsupported);
  p.in_features = 64;
  p.dtype = DType::kFloat32;
  EXPECT_EQ(kvserve::linear_cuda(p, nullptr), Status::kUnsupported);
}

TEST(EmulatedLayerOps, LinearWithSiluAndMulOutputEqualsTheTwoKernels) {
  // The gate_up projection writing silu(gate) * up gives the bits of the product, then silu_and_mul:
  // with and without a bias, an intermediate size not a multiple of the blocks' 8 features, strided
  // output rows. An odd number of weight rows has no [gate; up] halves; the CPU leaves it to CUDA.
  for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    for (const auto& [rows, in, size] : {std::tuple<int64_t, int64_t, int64_t>{1, 512, 48}, {7, 200, 13}}) {
      for (bool with_bias : {false, true}) {
        std::mt19937 rng(static_cast<uint32_t>(rows * 100 + size));
        Buffer x = random_buffer(dtype, static_cast<size_t>(rows * in), rng);
        Buffer w = random_buffer(dtype, static_cast<size_t>(2 * size * in), rng);
        Buffer b = random_buffer(dtype, static_cast<size_t>(2 * size), rng);
        Buffer gate_up = nan_buffer(dtype, static_cast<size_t>(rows * 2 * size));
        Buffer unfused = nan_buffer(dtype, static_cast<size_t>(rows * size));
        const int64_t out_stride = size + 3;
        Buffer fused = nan_buffer(dtype, static_cast<size_t>(rows * out_stride));
        kvserve::LinearParams p =
            linear_params(gate_up, 2 * size, x, in, w, with_bias ? b.data() : nullptr, rows, in, 2 * size, dtype);
        ASSERT_EQ(kvserve::linear_cuda(p, nullptr), Status::kOk);
        ASSERT_EQ(kvserve::silu_and_mul_cuda(silu_and_mul_params(gate_up, unfused, dtype, rows, size), nullptr),
                  Status::kOk);
        p.out = fused.data();
        p.out_stride = out_stride;
        p.silu_and_mul_output = true;
        ASSERT_EQ(kvserve::linear_cuda(p, nullptr), Status::kOk);
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t f = 0; f < out_stride; ++f) {
            const float got = fused.get(static_cast<size_t>(r * out_stride + f));
            if (f >= size) {
              ASSERT_TRUE(std::isnan(got)) << "written between the rows";
            } else {
              ASSERT_EQ(got, unfused.get(static_cast<size_t>(r * size + f)))
                  << name(dtype) << " rows " << rows << " row " << r << " feature " << f;
            }
          }
        }
        EXPECT_EQ(kvserve::linear_cpu(p), Status::kUnsupported);
        p.out_features = 2 * size - 1;
        std::string why;
        EXPECT_EQ(kvserve::check_linear(p, &why), Status::kInvalidArgument);
        EXPECT_NE(why.find("out_features: expected an even number"), std::string::npos) << why;
        EXPECT_EQ(kvserve::linear_cuda(p, nullptr), Status::kInvalidArgument);
      }
    }
  }
}

TEST(EmulatedCopyBlocks, CopiesWholeBlocks) {
  std::vector<float> cache(4 * 8);
  std::iota(cache.begin(), cache.end(), 0.f);
  const int64_t pairs[] = {1, 3, 2, 2};
  ASSERT_EQ(kvserve::copy_blocks_cuda(cache.data(), 4, 8 * sizeof(float), pairs, 2, nullptr), Status::kOk);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(cache[3 * 8 + i], 8.f + i);
}

}  // namespace
