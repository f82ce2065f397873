// The two layouts kvserve's linear reads a weight in, checked the same way wherever one is bound
// (ops.linear, ops.DecoderStack): [out_features, in_features], or interleaved
// [out_features / 4, in_features / 32, 4, 32] (LinearParams::weight_interleaved); and its element
// types: the input's, or e4m3 codes with a float32 scale per row (LinearParams::weight_dtype).
#pragma once

#include <cstdint>
#include <string>

#include "array_check.h"

namespace kvserve::bind {

inline bool is_interleaved(const Array& weight) { return weight.ndim() == 4; }

inline int64_t linear_out_features(const Array& weight) {
  return static_cast<int64_t>(weight.shape(0)) * (is_interleaved(weight) ? 4 : 1);
}

inline int64_t linear_in_features(const Array& weight) {
  return static_cast<int64_t>(weight.shape(1)) * (is_interleaved(weight) ? 32 : 1);
}

// A weight in either layout with `in_features` columns (`what` names them in messages), its last
// dimension contiguous (an interleaved one contiguous throughout); true if interleaved. The caller
// checks where it lives.
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
    check_dim(weight, name, 1, in_features, what);
    check_contiguous(weight, name, 1);
  }
  return is_interleaved(weight);
}

// A weight's element type: the input's (`reference`'s), or e4m3 codes (weight-only fp8, LinearParams::weight_dtype),
// which are read plain ([out_features, in_features]) with a scale per row. True if e4m3.
inline bool check_weight_dtype(const Array& weight, const char* name, const Array& reference, const char* ref_name) {
  if (weight.dtype() != kFloat8E4M3) {
    if (weight.dtype() != reference.dtype()) {
      throw nb::value_error((std::string(name) + ": expected the dtype of " + ref_name + " (" +
                             dtype_name(reference.dtype()) +
                             ") or float8_e4m3fn codes (with weight_scale), got " + dtype_name(weight.dtype()))
                                .c_str());
    }
    return false;
  }
  if (is_interleaved(weight)) {
    throw nb::value_error((std::string(name) + ": a float8_e4m3fn weight is read plain, [out_features, "
                           "in_features], not interleaved").c_str());
  }
  return true;
}

// The scales of an e4m3 weight's rows: float32 [out_features], contiguous. The caller checks where
// they live.
inline void check_weight_scale(const Array& scale, const char* name, int64_t out_features) {
  check_dtype(scale, name, {kFloat32});
  check_ndim(scale, name, 1, "[out_features]");
  check_dim(scale, name, 0, out_features, "out_features of the weight");
  check_contiguous(scale, name);
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
