// The tiled product over quantized weights (linear_cuda past kLinearCudaMaxCodeRows rows of uint4,
// int8 and e4m3 codes: cuda/linear_tiles.cu), run by the GPU emulator (gpu_emulator/) on random
// codes and scales: against a float64 reference, with in_features split across blocks and not, the
// same bits on a second call, nothing but weights read before the wait for the kernel before,
// SiLU-and-mul fused as the product then the kernel, and what it refuses.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
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

constexpr int64_t kPad = 16;  // bytes past a row of codes: the tiled kernel's rows start 16 bytes apart

TEST(EmulatedLinearTiles, MatchesAFloat64Reference) {
  // 33 to 150 rows: one tile of 64 rows partly filled, whole tiles, tiles past the last row; weight
  // rows ragged against the block's 128 (130, 136) and fewer than a warp's 16 (20); in_features of one
  // stage to 5, and of 16 and 32 stages (grids of four tiles or one on the emulator's 132 SMs split
  // them in 2 and 4); strided rows everywhere, with and without a bias.
  for (DType kind : kKinds) {
    for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
      for (const auto& [rows, in, out_features, with_bias] :
           {std::tuple<int64_t, int64_t, int64_t, bool>{33, 64, 40, false}, {64, 96, 130, true}, {97, 160, 20, false},
            {150, 32, 136, true}, {40, 1024, 40, true}, {70, 512, 200, false}}) {
        const std::string what = product_name(kind, dtype, rows, in, with_bias);
        std::mt19937 rng(static_cast<uint32_t>(rows * 1000 + in));
        CodesProduct product(kind, dtype, rows, in, out_features, kPad, with_bias, rng);
        product.run_and_expect_correct(what);
        // Again, into another output: the same bits, whichever block of a tile arrives last (the
        // emulator runs them in a random order): splits summed in their order, the arrival counters
        // back at zero (or the second call's tiles would finish early or never).
        kvserve::LinearParams& p = product.p;
        Buffer again = nan_buffer(dtype, static_cast<size_t>(rows * product.out_stride));
        p.out = again.data();
        ASSERT_EQ(kvserve::linear_cuda(p, nullptr), Status::kOk) << what;
        EXPECT_EQ(again.words, product.y.words) << what;
        // Rows of codes that start 8 bytes off 16 (taken at 32 rows, kind by kind), and float32.
        p.weight_stride += 8;
        EXPECT_FALSE(kvserve::linear_cuda_takes(p)) << what;
        EXPECT_EQ(kvserve::linear_cuda(p, nullptr), Status::kUnsupported) << what;
        p.num_rows = kvserve::kLinearCudaMaxCodeRows;
        EXPECT_TRUE(kvserve::linear_cuda_takes(p)) << what;
        p.weight_stride -= 8;
        p.num_rows = rows;
        p.dtype = DType::kFloat32;
        EXPECT_EQ(kvserve::linear_cuda(p, nullptr), Status::kUnsupported) << what;
      }
    }
  }
}

TEST(EmulatedLinearTiles, TakesWholeStagesOnly) {
  // in_features of int8 and e4m3 codes that are not whole stages of 32: the few-rows kernel's, not
  // the tiled one's.
  for (DType kind : {DType::kInt8, DType::kFloat8E4M3}) {
    std::mt19937 rng(3);
    const int64_t rows = 40, in = 48, out_features = 16;
    const QuantizedWeight w(kind, out_features, in, kPad, rng);
    Buffer x = random_buffer(DType::kBFloat16, static_cast<size_t>(rows * in), rng);
    Buffer y = nan_buffer(DType::kBFloat16, static_cast<size_t>(rows * out_features));
    kvserve::LinearParams p = linear_params(y, out_features, x, in, x, nullptr, rows, in, out_features,
                                            DType::kBFloat16);
    w.attach(p);
    EXPECT_FALSE(kvserve::linear_cuda_takes(p)) << kind_name(kind);
    EXPECT_EQ(kvserve::linear_cuda(p, nullptr), Status::kUnsupported) << kind_name(kind);
    p.num_rows = kvserve::kLinearCudaMaxCodeRows;
    EXPECT_TRUE(kvserve::linear_cuda_takes(p)) << kind_name(kind);
  }
}

TEST(EmulatedLinearTiles, SiluAndMulEqualsTheProductThenTheKernel) {
  // The gate_up projection writing silu(gate) * up gives the bits of the tiled product, then
  // silu_and_mul: 8 features a warp (one block, then two: 72 > 64), in_features split (1024) or not.
  for (DType kind : kKinds) {
    for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
      for (const auto& [rows, hidden, size] :
           {std::tuple<int64_t, int64_t, int64_t>{40, 96, 24}, {100, 64, 72}, {45, 1024, 40}}) {
        const std::string what = kind_name(kind) + " " + name(dtype) + " rows " + std::to_string(rows) + " hidden " +
                                 std::to_string(hidden) + " size " + std::to_string(size);
        std::mt19937 rng(static_cast<uint32_t>(rows + size));
        Buffer x = random_buffer(dtype, static_cast<size_t>(rows * hidden), rng);
        expect_silu_and_mul_fused(kind, x, rows, hidden, size, kPad, rng, what);
      }
    }
  }
}

TEST(EmulatedLinearTiles, RotaryAndCacheTakesFewRowsOnly) {
  // The qkv projection fused with rotary_and_cache stays the few-rows kernel's: past 32 rows over
  // codes it is refused (linear, then rotary_and_cache serve those), and nothing is written.
  const RotaryShape shape{4, 2, 16};
  std::vector<int64_t> slots(kvserve::kLinearCudaMaxCodeRows + 1, -1);
  FusedQkvStep step(DType::kBFloat16, shape, slots);
  const std::vector<uint32_t> before = step.qkv.words;
  std::mt19937 rng(5);
  const int64_t hidden = 64, rows = static_cast<int64_t>(slots.size());
  Buffer x = random_buffer(DType::kBFloat16, static_cast<size_t>(rows * hidden), rng);
  const QuantizedWeight w(DType::kUInt4, step.row, hidden, kPad, rng);
  kvserve::LinearParams p =
      linear_params(step.qkv, step.row, x, hidden, x, nullptr, rows, hidden, step.row, DType::kBFloat16);
  w.attach(p);
  EXPECT_EQ(kvserve::linear_rotary_and_cache_cuda(p, step.params, nullptr), Status::kUnsupported);
  EXPECT_EQ(step.qkv.words, before);
}

}  // namespace
