// The few-rows product over quantized weights (linear_cuda with uint4, int8 and e4m3 codes) and
// dequantize_weight_cuda, run by the GPU emulator (gpu_emulator/) on random codes and scales: the
// product against a float64 reference over each code's value rounded to the dtype, its fusions
// against the kernels they replace, and the widened weight bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "emulated_buffers.h"
#include "emulated_layer_steps.h"
#include "emulated_quantized_weight.h"
#include "kvserve/layer_ops.h"
#include "kvserve/linear.h"
#include "kvserve/linear_rotary_and_cache.h"

namespace {

using kvserve::Status;
using namespace emulated_test;

TEST(EmulatedLinearCodes, MatchesAFloat64Reference) {
  // 1 to 32 rows (1, 2 and 4 groups of 8, the last groups partly filled); out_features not a
  // multiple of the block's 16; in_features of one chunk, of more chunks than warps, and (int8, e4m3)
  // not whole chunks; strided rows everywhere, with and without a bias.
  for (DType kind : kKinds) {
    const int64_t ragged = kind == DType::kUInt4 ? 32 : kind == DType::kInt8 ? 80 : 40;
    const int64_t pad = kind == DType::kUInt4 ? 4 : 8;
    for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
      for (const auto& [rows, in, out_features] : {std::tuple<int64_t, int64_t, int64_t>{1, 64, 48}, {3, ragged, 40},
                                                   {8, 288, 17}, {13, ragged, 33}, {27, 96, 16}, {32, 288, 20}}) {
        for (bool with_bias : {false, true}) {
          const std::string what = product_name(kind, dtype, rows, in, with_bias);
          std::mt19937 rng(static_cast<uint32_t>(rows * 1000 + in));
          CodesProduct product(kind, dtype, rows, in, out_features, pad, with_bias, rng);
          product.run_and_expect_correct(what);
          kvserve::LinearParams& p = product.p;
          // Rows of codes whose starts a lane's load cannot take, and float32: cuBLAS's work.
          p.weight_stride += pad / 2;
          EXPECT_FALSE(kvserve::linear_cuda_takes(p)) << what;
          EXPECT_EQ(kvserve::linear_cuda(p, nullptr), Status::kUnsupported) << what;
          p.weight_stride -= pad / 2;
          p.dtype = DType::kFloat32;
          EXPECT_EQ(kvserve::linear_cuda(p, nullptr), Status::kUnsupported) << what;
        }
      }
    }
  }
}

TEST(EmulatedLinearCodes, FusionsEqualTheProductThenTheKernel) {
  // With codes as with a plain weight: the gate_up projection writing silu(gate) * up gives the bits of
  // the product, then silu_and_mul; the qkv projection rotating q and k into the caches gives those
  // of the product, then rotary_and_cache. 3 tokens, and 20 (groups of 8 rows: 4 a block).
  const RotaryShape shape{4, 2, 16};
  const int64_t hidden = 96, size = 24;
  const std::vector<int64_t> few = {5, -1, 10}, many = {5, -1, 10, 0, 1, 2, 3, 4, 6, 7, 8, 9, 11, 12, 13, 14, 15,
                                                          16, 17, 31};
  for (DType kind : kKinds) {
    for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
      for (const std::vector<int64_t>& slots : {few, many}) {
        const int64_t rows = static_cast<int64_t>(slots.size());
        const std::string what = kind_name(kind) + " " + name(dtype) + " rows " + std::to_string(rows);
        std::mt19937 rng(13);
        Buffer x = random_buffer(dtype, static_cast<size_t>(rows * hidden), rng);
        expect_silu_and_mul_fused(kind, x, rows, hidden, size, 0, rng, what);

        FusedQkvStep apart(dtype, shape, slots), together(dtype, shape, slots);
        const QuantizedWeight qkv_weight(kind, apart.row, hidden, 0, rng);
        kvserve::LinearParams product = linear_params(apart.qkv, apart.row, x, hidden, x, nullptr, rows, hidden,
                                                      apart.row, dtype);
        qkv_weight.attach(product);
        ASSERT_EQ(kvserve::linear_cuda(product, nullptr), Status::kOk) << what;
        ASSERT_EQ(kvserve::rotary_and_cache_cuda(apart.params, nullptr), Status::kOk) << what;
        product.out = together.qkv.data();
        ASSERT_EQ(kvserve::linear_rotary_and_cache_cuda(product, together.params, nullptr), Status::kOk) << what;
        EXPECT_EQ(together.qkv.words, apart.qkv.words) << what;
        EXPECT_EQ(together.key_cache.words, apart.key_cache.words) << what;
        EXPECT_EQ(together.value_cache.words, apart.value_cache.words) << what;
      }
    }
  }
}

TEST(EmulatedDequantizeWeight, GivesEachCodesValueRoundedOnce) {
  // Every kind into every dtype, out's rows strided; in_features of many chunks of the grid's
  // threads (600 > 256) and a few; rows of codes padded.
  for (DType kind : kKinds) {
    for (DType dtype : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
      for (int64_t in : {int64_t{64}, int64_t{608}}) {
        const std::string what = kind_name(kind) + " " + name(dtype) + " in " + std::to_string(in);
        std::mt19937 rng(static_cast<uint32_t>(in));
        const int64_t out_features = 5, out_stride = in + 3;
        const QuantizedWeight w(kind, out_features, in, 4, rng);
        Buffer out = nan_buffer(dtype, static_cast<size_t>(out_features * out_stride)), scratch(dtype, 1);
        kvserve::LinearParams p;
        w.attach(p);
        p.out = out.data();
        p.out_stride = out_stride;
        p.in_features = in;
        p.out_features = out_features;
        p.dtype = dtype;
        ASSERT_EQ(kvserve::dequantize_weight_cuda(p, nullptr), Status::kOk) << what;
        for (int64_t n = 0; n < out_features; ++n) {
          for (int64_t k = 0; k < out_stride; ++k) {
            const float got = out.get(static_cast<size_t>(n * out_stride + k));
            if (k >= in) {
              ASSERT_TRUE(std::isnan(got)) << what << ": written between the rows";
              continue;
            }
            const float value = w.value(n, k) * w.row_scale(n);
            const float expected = scratch.rounded(value);
            ASSERT_EQ(std::memcmp(&got, &expected, sizeof got), 0)
                << what << " row " << n << " column " << k << ": " << got << " vs " << expected;
          }
        }
        p.weight_dtype.reset();
        EXPECT_EQ(kvserve::dequantize_weight_cuda(p, nullptr), Status::kInvalidArgument) << what;
      }
    }
  }
}

}  // namespace
