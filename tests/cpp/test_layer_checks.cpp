// The params checks of the fused layer kernels (layer_ops.h) and of linear's quantized weights
// (linear.h). The kernels themselves are tested from Python (tests/python/test_layer_ops.py,
// test_uint4.py); the checks are host code that every build has.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kvserve/layer_ops.h"
#include "kvserve/linear.h"

namespace {

using kvserve::Status;

struct Arrays {
  std::vector<float> a = std::vector<float>(64), b = std::vector<float>(64), c = std::vector<float>(64);
};

kvserve::RmsNormParams norm_params(Arrays& arrays) {
  kvserve::RmsNormParams p;
  p.out = arrays.a.data();
  p.input = arrays.b.data();
  p.weight = arrays.c.data();
  p.num_tokens = 4;
  p.num_heads = 2;
  p.hidden = 8;
  p.input_stride_token = p.out_stride_token = 16;
  p.input_stride_head = p.out_stride_head = 8;
  return p;
}

TEST(LayerChecks, RmsNorm) {
  Arrays arrays;
  std::string why;
  kvserve::RmsNormParams p = norm_params(arrays);
  EXPECT_EQ(kvserve::check_rms_norm(p, &why), Status::kOk) << why;
  p.residual = arrays.c.data();
  EXPECT_EQ(kvserve::check_rms_norm(p, &why), Status::kInvalidArgument);
  EXPECT_EQ(why, "residual: expected num_heads = 1 with a residual, got 2");
  p = norm_params(arrays);
  p.input_stride_token = 15;
  EXPECT_EQ(kvserve::check_rms_norm(p, &why), Status::kInvalidArgument);
  EXPECT_EQ(why, "input: row stride 15 is less than the 16 elements a row spans (rows would overlap)");
  p = norm_params(arrays);
  p.eps = NAN;
  EXPECT_EQ(kvserve::check_rms_norm(p, &why), Status::kInvalidArgument);
  EXPECT_EQ(why.rfind("eps: expected a finite number >= 0", 0), 0u) << why;
  p = norm_params(arrays);
  p.dtype = kvserve::DType::kInt32;
  EXPECT_EQ(kvserve::check_rms_norm(p, &why), Status::kInvalidArgument);
  EXPECT_EQ(why, "dtype: expected float32, float16 or bfloat16");
}

TEST(LayerChecks, RotaryEmbedding) {
  Arrays arrays;
  kvserve::RotaryEmbeddingParams p;
  p.query = arrays.a.data();
  p.key = arrays.b.data();
  p.cos = p.sin = arrays.c.data();
  p.num_tokens = 2;
  p.num_heads = 2;
  p.num_kv_heads = 1;
  p.head_dim = 8;
  p.query_stride_token = 24;  // a fused [q; k; v] row: 2 + 1 + 1 heads of 8
  p.query_stride_head = 8;
  p.key_stride_token = 24;
  p.key_stride_head = 8;
  p.cos_sin_stride_token = 4;
  std::string why;
  EXPECT_EQ(kvserve::check_rotary_embedding(p, &why), Status::kOk) << why;
  p.cos_sin_stride_token = 3;
  EXPECT_EQ(kvserve::check_rotary_embedding(p, &why), Status::kInvalidArgument);
  EXPECT_EQ(why, "cos: row stride 3 is less than the 4 elements a row spans (rows would overlap)");
  p.cos_sin_stride_token = 4;
  p.head_dim = 7;
  EXPECT_EQ(kvserve::check_rotary_embedding(p, &why), Status::kInvalidArgument);
  EXPECT_EQ(why, "head_dim: expected an even number >= 2 (pairs of halves rotate), got 7");
}

TEST(LayerChecks, SiluAndMul) {
  Arrays arrays;
  kvserve::SiluAndMulParams p;
  p.input = arrays.a.data();
  p.out = arrays.b.data();
  p.num_tokens = 4;
  p.size = 8;
  p.input_stride_token = 16;
  p.out_stride_token = 8;
  std::string why;
  EXPECT_EQ(kvserve::check_silu_and_mul(p, &why), Status::kOk) << why;
  p.input_stride_token = 8;
  EXPECT_EQ(kvserve::check_silu_and_mul(p, &why), Status::kInvalidArgument);
  EXPECT_EQ(why, "input: row stride 8 is less than the 16 elements a row spans (rows would overlap)");
  p.input_stride_token = 16;
  p.input = nullptr;
  EXPECT_EQ(kvserve::check_silu_and_mul(p, &why), Status::kInvalidArgument);
  EXPECT_EQ(why, "a required array is null");
}

// A uint4 weight (linear.h): 2 rows of 64 codes, 32 bytes a row, 2 groups a row.
kvserve::LinearParams uint4_params(Arrays& arrays, std::vector<uint8_t>& codes) {
  kvserve::LinearParams p;
  p.out = arrays.a.data();
  p.out_stride = 2;
  p.input = arrays.b.data();
  p.input_stride = 64;
  p.weight = codes.data();
  p.weight_stride = 32;
  p.num_rows = 1;
  p.in_features = 64;
  p.out_features = 2;
  p.weight_dtype = kvserve::DType::kUInt4;
  p.weight_scale = arrays.c.data();
  p.weight_offset = arrays.c.data() + 4;
  return p;
}

TEST(LayerChecks, QuantizedLinear) {
  Arrays arrays;
  std::vector<uint8_t> codes(64);
  std::string why;
  kvserve::LinearParams p = uint4_params(arrays, codes);
  EXPECT_EQ(kvserve::check_linear(p, &why), Status::kOk) << why;
  p.out_stride = 64;  // dequantize_weight's out: [out_features, in_features]
  EXPECT_EQ(kvserve::check_dequantize_weight(p, &why), Status::kOk) << why;
  p.weight_stride = 31;  // a row's bytes, not its codes
  EXPECT_EQ(kvserve::check_linear(p, &why), Status::kInvalidArgument);
  EXPECT_EQ(why, "weight: row stride 31 is less than the 32 elements a row spans (rows would overlap)");
  p = uint4_params(arrays, codes);
  p.weight_offset = nullptr;
  EXPECT_EQ(kvserve::check_linear(p, &why), Status::kInvalidArgument);
  EXPECT_EQ(why, "weight_scale, weight_offset: a uint4 weight needs its groups' scales and offsets");
  p = uint4_params(arrays, codes);
  p.in_features = p.input_stride = 48;
  EXPECT_EQ(kvserve::check_linear(p, &why), Status::kInvalidArgument);
  EXPECT_EQ(why, "in_features: a uint4 weight's rows are whole groups of 32, got 48");
  p = uint4_params(arrays, codes);
  p.weight_dtype = kvserve::DType::kFloat8E4M3;
  EXPECT_EQ(kvserve::check_linear(p, &why), Status::kInvalidArgument);
  EXPECT_EQ(why, "weight_offset: for a uint4 weight, not an e4m3 one");
  p.weight_dtype.reset();
  EXPECT_EQ(kvserve::check_linear(p, &why), Status::kInvalidArgument);
  EXPECT_EQ(why, "weight_scale, weight_offset: given for a weight of the input's dtype (set weight_dtype)");
  EXPECT_EQ(kvserve::check_dequantize_weight(p, &why), Status::kInvalidArgument);
  EXPECT_EQ(why, "weight: expected plain quantized codes (weight_dtype)");
  p = uint4_params(arrays, codes);
  p.weight_dtype = kvserve::DType::kInt32;
  EXPECT_EQ(kvserve::check_linear(p, &why), Status::kInvalidArgument);
  EXPECT_EQ(why, "weight_dtype: expected float8_e4m3, uint4 or int8 (a quantized weight) or none, got dtype 3");
  // int8 codes: a byte each, a scale per group of 16, no offsets.
  p = uint4_params(arrays, codes);
  p.weight_dtype = kvserve::DType::kInt8;
  p.in_features = p.input_stride = 32;
  p.weight_offset = nullptr;
  EXPECT_EQ(kvserve::check_linear(p, &why), Status::kOk) << why;
  p.in_features = p.input_stride = 40;
  EXPECT_EQ(kvserve::check_linear(p, &why), Status::kInvalidArgument);
  EXPECT_EQ(why, "in_features: an int8 weight's rows are whole groups of 16, got 40");
  p.in_features = p.input_stride = 32;
  p.weight_offset = arrays.c.data();
  EXPECT_EQ(kvserve::check_linear(p, &why), Status::kInvalidArgument);
  EXPECT_EQ(why, "weight_offset: for a uint4 weight, not an int8 one");
  p.weight_offset = p.weight_scale = nullptr;
  EXPECT_EQ(kvserve::check_linear(p, &why), Status::kInvalidArgument);
  EXPECT_EQ(why, "weight_scale: an int8 weight needs its groups' scales");
}

}  // namespace
