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
  // 8-bit floats (OCP FP8), for KV caches only (kv_cache_dtype "fp8"): e4m3fn has 3 mantissa bits,
  // no infinities and a largest magnitude of 448; e5m2 has 2 mantissa bits and reaches 57344.
  kFloat8E4M3 = 5,
  kFloat8E5M2 = 6,
  // 4-bit unsigned integer codes, two a byte: weights only (linear.h's LinearParams::weight_dtype).
  kUInt4 = 7,
  // 8-bit signed integer codes: weights only (linear.h's LinearParams::weight_dtype).
  kInt8 = 8,
};

// Bytes of one element.
constexpr int64_t dtype_bytes(DType dtype) {
  switch (dtype) {
    case DType::kInt64: return 8;
    case DType::kFloat32:
    case DType::kInt32: return 4;
    case DType::kFloat8E4M3:
    case DType::kFloat8E5M2:
    case DType::kInt8:
    case DType::kUInt4: return 1;  // a byte holds two kUInt4 codes
    default: return 2;
  }
}

// A KV cache holds the dtype of the rows written into it and read against it (`dtype`), 8-bit
// floats (an fp8 KV cache), or for float32 rows 16-bit floats.
constexpr bool cache_dtype_serves(DType cache_dtype, DType dtype) {
  return cache_dtype == dtype || cache_dtype == DType::kFloat8E4M3 || cache_dtype == DType::kFloat8E5M2 ||
         (dtype == DType::kFloat32 && (cache_dtype == DType::kBFloat16 || cache_dtype == DType::kFloat16));
}

}  // namespace kvserve
