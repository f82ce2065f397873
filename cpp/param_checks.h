// The pieces every kernel-params check is made of: a failure with its message, and the layout of
// a [rows, heads, width] array with a contiguous last dimension.
#pragma once

#include <string>

#include "kvserve/dtype.h"
#include "kvserve/status.h"

namespace kvserve::checks {

inline std::string str(int64_t value) { return std::to_string(value); }

inline Status fail(std::string* why, std::string message) {
  if (why != nullptr) *why = std::move(message);
  return Status::kInvalidArgument;
}

inline bool is_float_dtype(DType dtype) {
  return dtype == DType::kFloat32 || dtype == DType::kFloat16 || dtype == DType::kBFloat16;
}


// [rows, heads, width] with a contiguous last dimension: no two heads or rows may overlap.
inline Status check_rows(const char* name, int64_t rows, int64_t heads, int64_t width, int64_t stride_row,
                         int64_t stride_head, std::string* why) {
  if (heads > 1 && stride_head < width) {
    return fail(why, std::string(name) + ": head stride " + str(stride_head) + " is less than the " + str(width) +
                         " elements of a head (heads would overlap)");
  }
  const int64_t row_extent = (heads - 1) * (heads > 1 ? stride_head : 0) + width;
  if (rows > 1 && stride_row < row_extent) {
    return fail(why, std::string(name) + ": row stride " + str(stride_row) + " is less than the " +
                         str(row_extent) + " elements a row spans (rows would overlap)");
  }
  return Status::kOk;
}

}  // namespace kvserve::checks
