// The two layouts kvserve's linear reads a weight in, checked the same way wherever one is bound
// (ops.linear, ops.DecoderStack): [out_features, in_features], or interleaved
// [out_features / 4, in_features / 32, 4, 32] (LinearParams::weight_interleaved); and its element
// types (LinearParams::weight_dtype): the input's, e4m3 codes with a float32 scale per row, uint4
// codes (uint8 bytes [out_features, in_features / 2]) with a float32 scale and offset per group, or
// int8 codes with a float32 scale per group.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "array_check.h"
#include "kvserve/dtype.h"
#include "kvserve/linear.h"

namespace kvserve::bind {

inline bool is_interleaved(const Array& weight) { return weight.ndim() == 4; }

inline int64_t linear_out_features(const Array& weight) {
  return static_cast<int64_t>(weight.shape(0)) * (is_interleaved(weight) ? 4 : 1);
}

// The codes an array of this dtype holds as a weight: e4m3, uint4 (uint8 bytes) or int8; nullopt for
// floats.
inline std::optional<DType> code_dtype(const nb::dlpack::dtype& dtype) {
  if (dtype == kFloat8E4M3) return DType::kFloat8E4M3;
  if (dtype == kUInt8) return DType::kUInt4;
  if (dtype == kInt8) return DType::kInt8;
  return std::nullopt;
}

// A uint4 weight's bytes hold two codes each.
inline bool holds_uint4(const Array& weight) { return code_dtype(weight.dtype()) == DType::kUInt4; }

inline int64_t linear_in_features(const Array& weight) {
  return static_cast<int64_t>(weight.shape(1)) * (is_interleaved(weight) ? 32 : holds_uint4(weight) ? 2 : 1);
}

// A weight in either layout with `in_features` columns (`what` names them in messages; a uint4
// weight's bytes hold two, so it has half as many), its last dimension contiguous (an interleaved
// one contiguous throughout); true if interleaved. The caller checks where it lives.
inline bool check_linear_weight(const Array& weight, const char* name, int64_t in_features, const char* what) {
  if (is_interleaved(weight)) {
    check_dim(weight, name, 2, 4, "the 4 rows of an interleaved block");
    check_dim(weight, name, 3, 32, "the 32 elements of an interleaved chunk");
    check_dim(weight, name, 1, in_features / 32, (std::string(what) + " / 32").c_str());
    if (in_features % 32 != 0) {
      throw nb::value_error((std::string(name) + ": interleaved, so " + what + " must be a multiple of 32").c_str());
    }
    check_contiguous(weight, name);
  } else {
    check_ndim(weight, name, 2, "[out_features, in_features]");
    if (holds_uint4(weight)) {
      check_dim(weight, name, 1, in_features / 2, (std::string(what) + " / 2").c_str());
    } else {
      check_dim(weight, name, 1, in_features, what);
    }
    check_contiguous(weight, name, 1);
  }
  return is_interleaved(weight);
}

// A weight's element type: the input's (`reference`'s: nullopt), or codes (code_dtype), which are
// read plain ([out_features, in_features], or [out_features, in_features / 2] for uint4).
inline std::optional<DType> check_weight_dtype(const Array& weight, const char* name, const Array& reference,
                                               const char* ref_name) {
  const std::optional<DType> codes = code_dtype(weight.dtype());
  if (!codes) {
    if (weight.dtype() != reference.dtype()) {
      throw nb::value_error((std::string(name) + ": expected the dtype of " + ref_name + " (" +
                             dtype_name(reference.dtype()) + "), float8_e4m3fn codes (with weight_scale), uint8 "
                             "bytes of uint4 codes (with weight_scale and weight_offset) or int8 codes (with "
                             "weight_scale), got " + dtype_name(weight.dtype())).c_str());
    }
    return std::nullopt;
  }
  if (is_interleaved(weight)) {
    throw nb::value_error((std::string(name) + ": a quantized weight is read plain, not interleaved").c_str());
  }
  return codes;
}

// What comes with a weight of this element type: an e4m3 one's float32 scales [out_features], a
// uint4 one's float32 scales and offsets [out_features, in_features / 32] (in_features a multiple of
// 32), an int8 one's float32 scales [out_features, in_features / 16] (in_features a multiple of 16),
// a plain one neither; contiguous. `scale_name` and `offset_name` name them in messages, after
// `where`. The caller checks where they live.
inline void check_weight_scales(std::optional<DType> weight_dtype, const std::optional<Array>& scale,
                                const std::optional<Array>& offset, const std::string& where,
                                const std::string& scale_name, const std::string& offset_name, int64_t out_features,
                                int64_t in_features) {
  const bool e4m3 = weight_dtype == DType::kFloat8E4M3, uint4 = weight_dtype == DType::kUInt4;
  if (scale.has_value() != weight_dtype.has_value() || offset.has_value() != uint4) {
    const std::string wanted = uint4 ? scale_name + " and " + offset_name + " are required with a uint4 weight"
                               : weight_dtype ? scale_name + " is required with " +
                                                    (e4m3 ? "a float8_e4m3fn" : "an int8") + " weight, " + offset_name +
                                                    " is for uint4 weights"
                                              : scale_name + " and " + offset_name +
                                                    " are for quantized weights, the weight is of the input's dtype";
    throw nb::value_error((where + wanted).c_str());
  }
  const int64_t group = uint4 ? kUInt4GroupSize : kInt8GroupSize;
  const std::string groups = "in_features / " + std::to_string(group);
  if (weight_dtype && !e4m3 && in_features % group != 0) {
    throw nb::value_error((where + "a" + (uint4 ? " uint4" : "n int8") + " weight's rows are whole groups of " +
                           std::to_string(group) + ": in_features must be a multiple of " + std::to_string(group) +
                           ", got " + std::to_string(in_features)).c_str());
  }
  for (const auto& [array, name] : {std::pair{scale, scale_name}, std::pair{offset, offset_name}}) {
    if (!array) continue;
    check_dtype(*array, name.c_str(), {kFloat32});
    if (e4m3) {
      check_ndim(*array, name.c_str(), 1, "[out_features]");
    } else {
      check_ndim(*array, name.c_str(), 2, ("[out_features, " + groups + "]").c_str());
      check_dim(*array, name.c_str(), 1, in_features / group, groups.c_str());
    }
    check_dim(*array, name.c_str(), 0, out_features, "out_features of the weight");
    check_contiguous(*array, name.c_str());
  }
}

// Its out_features are `out_features` (whole blocks of 4 where interleaved).
inline void check_linear_out_features(const Array& weight, const char* name, int64_t out_features) {
  if (!is_interleaved(weight)) return check_dim(weight, name, 0, out_features, "out_features");
  if (out_features % 4 != 0) {
    throw nb::value_error((std::string(name) + ": interleaved, so out_features must be a multiple of 4").c_str());
  }
  check_dim(weight, name, 0, out_features / 4, "out_features / 4");
}

}  // namespace kvserve::bind
