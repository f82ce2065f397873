// The fused layer kernels and copy_blocks, run by the GPU emulator (gpu_emulator/), against plain
// loops that round to the storage dtype where torch does.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <numeric>
#include <ostream>
#include <random>
#include <vector>

#include "emulated_buffers.h"
#include "kvserve/copy_blocks.h"
#include "kvserve/layer_ops.h"

namespace {

using kvserve::Status;
using namespace emulated_test;

// ---- fused layer helpers -------------------------------------------------------------------------

TEST(EmulatedLayerOps, RmsNormAndFusedResidualAdd) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    // Narrow rows take a warp each; wide ones (over 128 packs: 4096, 2600 and unaligned 4099) a block.
    for (int64_t hidden : {256, 100, 33, 4096, 2600, 4099}) {
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

// Shapes: 16-byte packs of pairs (head_dim 16), a grid of several chunks per token (40 heads of
// 128), and one element at a time (head_dim 12: half a head is not a whole pack).
struct RotaryShape {
  int64_t heads, kv_heads, head_dim;
};

std::ostream& operator<<(std::ostream& os, const RotaryShape& s) {
  return os << s.heads << " heads / " << s.kv_heads << " kv heads of " << s.head_dim;
}

class EmulatedRotary : public ::testing::TestWithParam<RotaryShape> {};

TEST_P(EmulatedRotary, InPlaceOnFusedQk) {
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    std::mt19937 rng(5);
    const auto [heads, kv_heads, head_dim] = GetParam();
    const int64_t tokens = 3, half = head_dim / 2;
    const int64_t row = (heads + 2 * kv_heads) * head_dim;
    Buffer qkv = random_buffer(dtype, static_cast<size_t>(tokens * row), rng);
    Buffer before = qkv;
    Buffer cos(dtype, static_cast<size_t>(tokens * half)), sin(dtype, static_cast<size_t>(tokens * half));
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(t + 1) * std::pow(100.f, -static_cast<float>(i) / half);
        cos.set(t * half + i, std::cos(angle));
        sin.set(t * half + i, std::sin(angle));
      }
    }
    const int64_t element = dtype == DType::kFloat32 ? 4 : 2;
    kvserve::RotaryEmbeddingParams p;
    p.query = qkv.data();
    p.key = static_cast<char*>(qkv.data()) + heads * head_dim * element;
    p.query_stride_token = p.key_stride_token = row;
    p.query_stride_head = p.key_stride_head = head_dim;
    p.cos = cos.data();
    p.sin = sin.data();
    p.cos_sin_stride_token = half;
    p.dtype = dtype;
    p.num_tokens = tokens;
    p.num_heads = heads;
    p.num_kv_heads = kv_heads;
    p.head_dim = head_dim;
    ASSERT_EQ(kvserve::rotary_embedding_cuda(p, nullptr), Status::kOk);
    Buffer scratch(dtype, 1);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t h = 0; h < heads + 2 * kv_heads; ++h) {
        for (int64_t i = 0; i < half; ++i) {
          const size_t a = static_cast<size_t>(t * row + h * head_dim + i), b = a + static_cast<size_t>(half);
          if (h >= heads + kv_heads) {  // v: untouched
            ASSERT_EQ(qkv.get(a), before.get(a));
            continue;
          }
          // Hugging Face's `q * cos + rotate_half(q) * sin`: each product stored in the dtype, then the sum.
          const float c = cos.get(t * half + i), s = sin.get(t * half + i);
          const float x1 = before.get(a), x2 = before.get(b);
          ASSERT_EQ(qkv.get(a), scratch.rounded(scratch.rounded(x1 * c) - scratch.rounded(x2 * s))) << name(dtype);
          ASSERT_EQ(qkv.get(b), scratch.rounded(scratch.rounded(x2 * c) + scratch.rounded(x1 * s))) << name(dtype);
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, EmulatedRotary,
                         ::testing::Values(RotaryShape{4, 2, 16}, RotaryShape{32, 8, 128}, RotaryShape{4, 2, 12}));

TEST(EmulatedLayerOps, SiluAndMul) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    for (int64_t size : {4096, 13}) {
      std::mt19937 rng(6);
      const int64_t tokens = 2;
      Buffer x = random_buffer(dtype, static_cast<size_t>(tokens * 2 * size), rng);
      Buffer out = nan_buffer(dtype, static_cast<size_t>(tokens * size)), scratch(dtype, 1);
      kvserve::SiluAndMulParams p;
      p.input = x.data();
      p.input_stride_token = 2 * size;
      p.out = out.data();
      p.out_stride_token = size;
      p.dtype = dtype;
      p.num_tokens = tokens;
      p.size = size;
      ASSERT_EQ(kvserve::silu_and_mul_cuda(p, nullptr), Status::kOk);
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

TEST(EmulatedCopyBlocks, CopiesWholeBlocks) {
  std::vector<float> cache(4 * 8);
  std::iota(cache.begin(), cache.end(), 0.f);
  const int64_t pairs[] = {1, 3, 2, 2};
  ASSERT_EQ(kvserve::copy_blocks_cuda(cache.data(), 4, 8 * sizeof(float), pairs, 2, nullptr), Status::kOk);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(cache[3 * 8 + i], 8.f + i);
}

}  // namespace
