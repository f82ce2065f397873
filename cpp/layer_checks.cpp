// Validation of the fused layer kernels' params (layer_ops.h): everything a kernel relies on to stay
// inside its arrays. Like the attention checks, the kernels run them, and callers that want the
// message run them again after a kInvalidArgument.
#include <cmath>
#include <cstdint>
#include <string>

#include "kvserve/argmax.h"
#include "kvserve/layer_ops.h"
#include "kvserve/linear.h"
#include "param_checks.h"

namespace kvserve {

using namespace checks;

namespace {

const char* kDtypeMessage = "dtype: expected float32, float16 or bfloat16";

}  // namespace

Status check_rms_norm(const RmsNormParams& p, std::string* why) {
  if (!is_float_dtype(p.dtype)) return fail(why, kDtypeMessage);
  if (p.num_tokens < 0 || p.num_heads < 1 || p.hidden < 1) {
    return fail(why, "sizes: expected num_tokens >= 0 and num_heads, hidden >= 1, got " + str(p.num_tokens) + ", " +
                         str(p.num_heads) + ", " + str(p.hidden));
  }
  if (!(p.eps >= 0.f) || !std::isfinite(p.eps)) {
    return fail(why, "eps: expected a finite number >= 0, got " + std::to_string(p.eps));
  }
  if (p.residual != nullptr && p.num_heads != 1) {
    return fail(why, "residual: expected num_heads = 1 with a residual, got " + str(p.num_heads));
  }
  Status s = check_rows("input", p.num_tokens, p.num_heads, p.hidden, p.input_stride_token, p.input_stride_head, why);
  if (s == Status::kOk) {
    s = check_rows("out", p.num_tokens, p.num_heads, p.hidden, p.out_stride_token, p.out_stride_head, why);
  }
  if (s == Status::kOk && p.residual != nullptr) {
    s = check_rows("residual", p.num_tokens, 1, p.hidden, p.residual_stride_token, 0, why);
  }
  if (s != Status::kOk) return s;
  if (p.num_tokens > 0 && (p.input == nullptr || p.out == nullptr || p.weight == nullptr)) {
    return fail(why, "a required array is null");
  }
  return Status::kOk;
}

Status check_rotary_embedding(const RotaryEmbeddingParams& p, std::string* why) {
  if (!is_float_dtype(p.dtype)) return fail(why, kDtypeMessage);
  if (p.num_tokens < 0 || p.num_heads < 1 || p.num_kv_heads < 1) {
    return fail(why, "sizes: expected num_tokens >= 0 and num_heads, num_kv_heads >= 1");
  }
  if (p.head_dim < 2 || p.head_dim % 2 != 0) {
    return fail(why, "head_dim: expected an even number >= 2 (pairs of halves rotate), got " + str(p.head_dim));
  }
  Status s = check_rows("query", p.num_tokens, p.num_heads, p.head_dim, p.query_stride_token, p.query_stride_head,
                        why);
  if (s == Status::kOk) {
    s = check_rows("key", p.num_tokens, p.num_kv_heads, p.head_dim, p.key_stride_token, p.key_stride_head, why);
  }
  if (s == Status::kOk) s = check_rows("cos", p.num_tokens, 1, p.head_dim / 2, p.cos_sin_stride_token, 0, why);
  if (s != Status::kOk) return s;
  if (p.num_tokens > 0 && (p.query == nullptr || p.key == nullptr || p.cos == nullptr || p.sin == nullptr)) {
    return fail(why, "a required array is null");
  }
  return Status::kOk;
}

Status check_silu_and_mul(const SiluAndMulParams& p, std::string* why) {
  if (!is_float_dtype(p.dtype)) return fail(why, kDtypeMessage);
  if (p.num_tokens < 0 || p.size < 1) {
    return fail(why, "sizes: expected num_tokens >= 0 and size >= 1, got " + str(p.num_tokens) + " and " + str(p.size));
  }
  Status s = check_rows("input", p.num_tokens, 1, 2 * p.size, p.input_stride_token, 0, why);
  if (s == Status::kOk) s = check_rows("out", p.num_tokens, 1, p.size, p.out_stride_token, 0, why);
  if (s != Status::kOk) return s;
  if (p.num_tokens > 0 && (p.input == nullptr || p.out == nullptr)) return fail(why, "a required array is null");
  return Status::kOk;
}

Status check_argmax(const ArgmaxParams& p, std::string* why) {
  if (!is_float_dtype(p.dtype)) return fail(why, kDtypeMessage);
  if (p.num_rows < 0 || p.num_cols < 1 || p.num_cols > INT32_MAX) {
    return fail(why, "sizes: expected num_rows >= 0 and 1 <= num_cols <= 2^31 - 1, got " + str(p.num_rows) + " and " +
                         str(p.num_cols));
  }
  Status s = check_rows("input", p.num_rows, 1, p.num_cols, p.input_stride, 0, why);
  if (s != Status::kOk) return s;
  if (p.num_rows > 0 && (p.input == nullptr || p.out == nullptr)) return fail(why, "a required array is null");
  return Status::kOk;
}

namespace {

// A plain weight's rows, of the dtype or of weight_dtype's codes with their scales (and offsets).
Status check_plain_weight(const LinearParams& p, std::string* why) {
  if (!p.weight_dtype) {
    if (p.weight_scale != nullptr || p.weight_offset != nullptr) {
      return fail(why, "weight_scale, weight_offset: given for a weight of the input's dtype (set weight_dtype)");
    }
    return check_rows("weight", p.out_features, 1, p.in_features, p.weight_stride, 0, why);
  }
  if (*p.weight_dtype == DType::kFloat8E4M3) {
    if (p.weight_scale == nullptr) return fail(why, "weight_scale: an e4m3 weight needs its rows' scales");
    if (p.weight_offset != nullptr) return fail(why, "weight_offset: for a uint4 weight, not an e4m3 one");
    return check_rows("weight", p.out_features, 1, p.in_features, p.weight_stride, 0, why);
  }
  if (*p.weight_dtype == DType::kUInt4) {
    if (p.weight_scale == nullptr || p.weight_offset == nullptr) {
      return fail(why, "weight_scale, weight_offset: a uint4 weight needs its groups' scales and offsets");
    }
    if (p.in_features % kUInt4GroupSize != 0) {
      return fail(why, "in_features: a uint4 weight's rows are whole groups of " + str(kUInt4GroupSize) + ", got " +
                           str(p.in_features));
    }
    return check_rows("weight", p.out_features, 1, p.in_features / 2, p.weight_stride, 0, why);
  }
  if (*p.weight_dtype == DType::kInt8) {
    if (p.weight_scale == nullptr) return fail(why, "weight_scale: an int8 weight needs its groups' scales");
    if (p.weight_offset != nullptr) return fail(why, "weight_offset: for a uint4 weight, not an int8 one");
    if (p.in_features % kInt8GroupSize != 0) {
      return fail(why, "in_features: an int8 weight's rows are whole groups of " + str(kInt8GroupSize) + ", got " +
                           str(p.in_features));
    }
    return check_rows("weight", p.out_features, 1, p.in_features, p.weight_stride, 0, why);
  }
  return fail(why, "weight_dtype: expected float8_e4m3, uint4 or int8 (a quantized weight) or none, got dtype " +
                       str(static_cast<int64_t>(*p.weight_dtype)));
}

}  // namespace

Status check_linear(const LinearParams& p, std::string* why) {
  if (!is_float_dtype(p.dtype)) return fail(why, kDtypeMessage);
  if (p.num_rows < 0 || p.in_features < 1 || p.out_features < 1) {
    return fail(why, "sizes: expected num_rows >= 0, in_features >= 1 and out_features >= 1, got " + str(p.num_rows) +
                         ", " + str(p.in_features) + " and " + str(p.out_features));
  }
  if (p.silu_and_mul_output && p.out_features % 2 != 0) {
    return fail(why, "out_features: expected an even number with silu_and_mul_output (weight rows [gate; up]), got " +
                         str(p.out_features));
  }
  const int64_t out_width = p.silu_and_mul_output ? p.out_features / 2 : p.out_features;
  Status s = check_rows("input", p.num_rows, 1, p.in_features, p.input_stride, 0, why);
  if (s == Status::kOk) s = check_rows("out", p.num_rows, 1, out_width, p.out_stride, 0, why);
  if (s != Status::kOk) return s;
  if (p.weight_dtype && p.weight_interleaved) {
    return fail(why, "weight_dtype: a quantized weight is read plain, not interleaved");
  }
  if (p.weight_interleaved && (p.weight_scale != nullptr || p.weight_offset != nullptr)) {
    return fail(why, "weight_scale, weight_offset: given for a weight of the input's dtype (set weight_dtype)");
  }
  if (!p.weight_interleaved) s = check_plain_weight(p, why);
  if (s != Status::kOk) return s;
  if (p.num_rows > 0 && (p.input == nullptr || p.weight == nullptr || p.out == nullptr)) {
    return fail(why, "a required array is null");
  }
  return Status::kOk;
}

Status check_dequantize_weight(const LinearParams& p, std::string* why) {
  if (!is_float_dtype(p.dtype)) return fail(why, kDtypeMessage);
  if (!p.weight_dtype || p.weight_interleaved) return fail(why, "weight: expected plain quantized codes (weight_dtype)");
  if (p.in_features < 1 || p.out_features < 1) {
    return fail(why, "sizes: expected in_features >= 1 and out_features >= 1, got " + str(p.in_features) + " and " +
                         str(p.out_features));
  }
  Status s = check_plain_weight(p, why);
  if (s == Status::kOk) s = check_rows("out", p.out_features, 1, p.in_features, p.out_stride, 0, why);
  if (s != Status::kOk) return s;
  if (p.weight == nullptr || p.out == nullptr) return fail(why, "a required array is null");
  return Status::kOk;
}

bool linear_cuda_takes(const LinearParams& p) {
  const auto aligned = [](const void* pointer, int64_t bytes) {
    return reinterpret_cast<uintptr_t>(pointer) % static_cast<uintptr_t>(bytes) == 0;
  };
  // A lane reads 8 columns of a weight row at once (cuda/linear_weight.cuh): 16 bytes of a 16-bit
  // weight, 8 of e4m3 or int8 codes, 4 of uint4 codes (whose rows' strides count bytes).
  const int64_t load = !p.weight_dtype ? 16 : p.weight_dtype == DType::kUInt4 ? 4 : 8;
  const int64_t stride_bytes = p.weight_stride * (p.weight_dtype ? 1 : 2);
  const bool rows_16_bit = p.dtype != DType::kFloat32 && !p.weight_interleaved && p.input_stride % 8 == 0 &&
                           aligned(p.input, 16);
  if (p.weight_dtype && p.num_rows > kLinearCudaMaxCodeRows) {
    // The tiled kernel (cuda/linear_tiles.cu) copies 16-byte pieces of input and code rows into
    // shared memory, 32 columns a stage.
    return rows_16_bit && p.in_features % 32 == 0 && stride_bytes % 16 == 0 && aligned(p.weight, 16);
  }
  return p.num_rows >= 1 && p.num_rows <= linear_cuda_few_rows_max(p) && rows_16_bit && p.in_features % 8 == 0 &&
         stride_bytes % load == 0 && aligned(p.weight, load);
}

}  // namespace kvserve
