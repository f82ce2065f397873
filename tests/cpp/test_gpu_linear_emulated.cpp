// The few-rows product (linear_cuda) and its fusions, run by the GPU emulator (gpu_emulator/):
// against a float64 reference, and against the kernels each fusion replaces (silu_and_mul,
// rotary_and_cache), on the same data.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "emulated_buffers.h"
#include "emulated_layer_steps.h"
#include "kvserve/layer_ops.h"
#include "kvserve/linear.h"
#include "kvserve/linear_rotary_and_cache.h"

namespace {

using kvserve::Status;
using namespace emulated_test;

TEST(EmulatedLinear, MatchesAFloat64Reference) {
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

TEST(EmulatedLinear, WithSiluAndMulOutputEqualsTheTwoKernels) {
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

class EmulatedLinearRotaryAndCache : public ::testing::TestWithParam<RotaryShape> {};

// linear_rotary_and_cache against linear_cuda, then rotary_and_cache_cuda, on the same input, weight
// and bias: the same bits in q, k, v and both caches (of the rows' dtype or fp8; a padding slot, one
// out of range); refused
// where head_dim is not a multiple of 16, and where q, k, v are not the product's columns.
TEST_P(EmulatedLinearRotaryAndCache, EqualsTheProjectionThenTheKernel) {
  const RotaryShape shape = GetParam();
  const int64_t hidden = 96, rows = FusedQkvStep::kTokens;
  for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    for (std::optional<DType> cache : every_cache(dtype)) {
      std::mt19937 rng(11);
      const std::string what = name(dtype) + cache_name(cache);
      FusedQkvStep apart(dtype, shape, {5, -1, 12 * 1000}, cache), fused(dtype, shape, {5, -1, 12 * 1000}, cache);
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
      EXPECT_EQ(fused.qkv.words, apart.qkv.words) << what;
      EXPECT_EQ(fused.key_cache.words, apart.key_cache.words) << what;
      EXPECT_EQ(fused.value_cache.words, apart.value_cache.words) << what;
      EXPECT_FALSE(std::isnan(fused.value_cache.get(5 * shape.kv_heads * shape.head_dim))) << what;
      // Qwen3's head norms: a block holds 16 of a head's dims, a norm needs them all.
      fused.params.query_norm_weight = fused.params.key_norm_weight = w.data();
      EXPECT_EQ(kvserve::linear_rotary_and_cache_cuda(product, fused.params, nullptr), Status::kUnsupported);
      fused.params.query_norm_weight = fused.params.key_norm_weight = nullptr;
      fused.params.cache.value = fused.params.rotary.key;  // a value, but not the product's v columns
      std::string why;
      EXPECT_EQ(kvserve::check_linear_rotary_and_cache(product, fused.params, &why), Status::kInvalidArgument);
      EXPECT_NE(why.find("the q, k and v columns of linear.out"), std::string::npos) << why;
      EXPECT_EQ(kvserve::linear_rotary_and_cache_cuda(product, fused.params, nullptr), Status::kInvalidArgument);
    }
  }
}

TEST(EmulatedLinearRotaryAndCache, TakesOneTokensViewsAsTorchMakesThem) {
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

INSTANTIATE_TEST_SUITE_P(Shapes, EmulatedLinearRotaryAndCache,
                         ::testing::Values(RotaryShape{4, 2, 16}, RotaryShape{32, 8, 128}, RotaryShape{4, 2, 12}));

}  // namespace
