// Element types of the arrays kvserve's kernels read and write.
#pragma once

#include <cstdint>

namespace kvserve {

enum class DType : int32_t {
  kFloat32 = 0,
  kFloat16 = 1,   // IEEE binary16
  kBFloat16 = 2,  // the upper half of a float32
  kInt32 = 3,
  kInt64 = 4,
};

// Bytes of one element.
constexpr int64_t dtype_bytes(DType dtype) {
  return dtype == DType::kInt64 ? 8 : dtype == DType::kFloat32 || dtype == DType::kInt32 ? 4 : 2;
}

}  // namespace kvserve
