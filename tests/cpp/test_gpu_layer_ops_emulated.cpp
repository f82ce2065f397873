// The fused layer kernels and copy_blocks, run by the GPU emulator (gpu_emulator/), against plain
// loops that round to the storage dtype where torch does (the few-rows product and its fusions:
// test_gpu_linear_emulated.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "emulated_buffers.h"
#include "emulated_layer_steps.h"
#include "kvserve/argmax.h"
#include "kvserve/copy_blocks.h"
#include "kvserve/layer_ops.h"
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
// caches, of the rows' dtype or narrower.
class EmulatedRotaryAndCache : public ::testing::TestWithParam<RotaryShape> {};

TEST_P(EmulatedRotaryAndCache, EqualsTheTwoKernelsItFuses) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    for (std::optional<DType> cache : every_cache(dtype)) {
      FusedQkvStep apart(dtype, GetParam(), {5, -1, 10}, cache), fused(dtype, GetParam(), {5, -1, 10}, cache);
      ASSERT_EQ(kvserve::rotary_embedding_cuda(apart.params.rotary, nullptr), Status::kOk);
      ASSERT_EQ(kvserve::reshape_and_cache_cuda(apart.params.cache, nullptr), Status::kOk);
      ASSERT_EQ(kvserve::rotary_and_cache_cuda(fused.params, nullptr), Status::kOk);
      const std::string what = name(dtype) + cache_name(cache);
      EXPECT_EQ(fused.qkv.words, apart.qkv.words) << what;
      EXPECT_EQ(fused.key_cache.words, apart.key_cache.words) << what;
      EXPECT_EQ(fused.value_cache.words, apart.value_cache.words) << what;
      EXPECT_FALSE(std::isnan(fused.key_cache.get(5 * GetParam().kv_heads * GetParam().head_dim))) << what;
    }
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

// rms_norm_cuda over the q heads and the k heads of `step` (in place) with weights q_weight and
// k_weight, then rotary_and_cache_cuda without norms. The norms' params are written out here, not
// taken from rotary_head_norm_params: the op's fallback uses that, and the reference must not.
void norms_then_rotary_and_cache(FusedQkvStep& step, const void* q_weight, const void* k_weight) {
  const kvserve::RotaryEmbeddingParams& r = step.params.rotary;
  for (bool key : {false, true}) {
    kvserve::RmsNormParams n;
    n.out = key ? r.key : r.query;
    n.input = n.out;
    n.out_stride_token = n.input_stride_token = step.row;
    n.out_stride_head = n.input_stride_head = r.head_dim;
    n.weight = key ? k_weight : q_weight;
    n.dtype = r.dtype;
    n.num_tokens = FusedQkvStep::kTokens;
    n.num_heads = key ? r.num_kv_heads : r.num_heads;
    n.hidden = r.head_dim;
    n.eps = 1e-5f;
    ASSERT_EQ(kvserve::rms_norm_cuda(n, nullptr), Status::kOk);
  }
  ASSERT_EQ(kvserve::rotary_and_cache_cuda(step.params, nullptr), Status::kOk);
}

// With Qwen3's head norms: the one kernel that normalizes each head's lanes as the norm kernel's
// warp does, against rms_norm_cuda over q's heads and over k's, then the kernel: the same bits. A
// head in single elements (head_dim 12: half a head is no whole pack), or weights out of 16-byte
// packs, take the norm kernels first: their bits again (the norm kernel's own, which depend on the
// packs it reads).
TEST_P(EmulatedRotaryAndCache, WithHeadNormsEqualsTheNormsThenTheKernel) {
  const RotaryShape shape = GetParam();
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    std::mt19937 rng(13);
    Buffer q_weight = random_buffer(dtype, static_cast<size_t>(shape.head_dim), rng);
    Buffer k_weight = random_buffer(dtype, static_cast<size_t>(shape.head_dim), rng);
    std::vector<uint32_t> shifted(k_weight.words.size() + 4);  // the key's weight an element past a pack
    void* k_unaligned = reinterpret_cast<char*>(shifted.data()) + kvserve::dtype_bytes(dtype);
    memcpy(k_unaligned, k_weight.data(), k_weight.words.size() * 4);
    for (const void* k : {static_cast<const void*>(k_weight.data()), static_cast<const void*>(k_unaligned)}) {
      // (an fp8 cache for the 16-bit dtypes: the normed kernel's own store into a narrower cache)
      const std::optional<DType> cache = dtype == DType::kFloat32 ? std::nullopt : std::optional(DType::kFloat8E4M3);
      FusedQkvStep apart(dtype, shape, {5, -1, 10}, cache), fused(dtype, shape, {5, -1, 10}, cache);
      norms_then_rotary_and_cache(apart, q_weight.data(), k);
      fused.params.query_norm_weight = q_weight.data();
      fused.params.key_norm_weight = k;
      fused.params.norm_eps = 1e-5f;
      ASSERT_EQ(kvserve::rotary_and_cache_cuda(fused.params, nullptr), Status::kOk);
      EXPECT_EQ(fused.qkv.words, apart.qkv.words) << name(dtype);
      EXPECT_EQ(fused.key_cache.words, apart.key_cache.words) << name(dtype);
      EXPECT_EQ(fused.value_cache.words, apart.value_cache.words) << name(dtype);
      fused.params.key_norm_weight = nullptr;
      std::string why;
      EXPECT_EQ(kvserve::check_rotary_and_cache_layout(fused.params, &why), Status::kInvalidArgument);
      EXPECT_NE(why.find("query_norm_weight, key_norm_weight: expected both or neither"), std::string::npos) << why;
    }
  }
}

// Heads of 2 to 32 packs (16-bit: 16, 64, 128, 256 elements; float32: 4 to 64 packs, the last
// beyond the fused norm), and of single elements (12).
INSTANTIATE_TEST_SUITE_P(Shapes, EmulatedRotaryAndCache,
                         ::testing::Values(RotaryShape{4, 2, 16}, RotaryShape{32, 8, 128}, RotaryShape{4, 2, 12},
                                           RotaryShape{4, 2, 64}, RotaryShape{2, 1, 256}));

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

TEST(EmulatedCopyBlocks, CopiesWholeBlocks) {
  std::vector<float> cache(4 * 8);
  std::iota(cache.begin(), cache.end(), 0.f);
  const int64_t pairs[] = {1, 3, 2, 2};
  ASSERT_EQ(kvserve::copy_blocks_cuda(cache.data(), 4, 8 * sizeof(float), pairs, 2, nullptr), Status::kOk);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(cache[3 * 8 + i], 8.f + i);
}

}  // namespace
