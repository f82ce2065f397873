// The rounding of a float to an OCP FP8 code (dtype.h: KV-cache elements), in integer and float
// steps that compile alike for the CPU kernels (cpu/half.h) and the GPU ones (cuda/numeric.cuh), so
// that a cache written on either holds the same bits.
//
// The functions are `static` for cpu/half.h's reason: every translation unit keeps its own copy.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define KVSERVE_FP8_FN static inline __host__ __device__
#else
#define KVSERVE_FP8_FN static inline
#endif

namespace kvserve::fp8 {

KVSERVE_FP8_FN uint32_t float_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  return u;
}

KVSERVE_FP8_FN float bits_float(uint32_t u) {
  float x;
  memcpy(&x, &u, 4);
  return x;
}

// The code of x on an 8-bit float format with kMantissa mantissa bits and exponent bias kBias:
// rounded to nearest even, saturated to max_code (as CUDA's __NV_SATFINITE conversions), nan_code
// for a NaN.
template <int kMantissa, int kBias>
KVSERVE_FP8_FN uint8_t code(float x, uint8_t max_code, uint8_t nan_code) {
  const uint32_t u = float_bits(x);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80);
  const uint32_t magnitude = u & 0x7fffffff;
  if (magnitude > 0x7f800000) return static_cast<uint8_t>(sign | nan_code);
  constexpr int kShift = 23 - kMantissa;
  // Below the smallest normal, 2^(1 - bias), codes count multiples of 2^(1 - bias - mantissa): adding
  // a power of two whose float spacing is that multiple makes the float adder round to the grid.
  constexpr uint32_t kSmallestNormal = static_cast<uint32_t>(128 - kBias) << 23;
  constexpr uint32_t kGridShift = static_cast<uint32_t>(127 + 24 - kMantissa - kBias) << 23;
  if (magnitude < kSmallestNormal) {
    const float shifted = bits_float(magnitude) + bits_float(kGridShift);
    return static_cast<uint8_t>(sign | (float_bits(shifted) - kGridShift));
  }
  const uint32_t rounded = magnitude + (1u << (kShift - 1)) - 1 + ((magnitude >> kShift) & 1);
  const uint32_t value = (rounded >> kShift) - (static_cast<uint32_t>(127 - kBias) << kMantissa);
  return static_cast<uint8_t>(sign | (value > max_code ? max_code : value));
}

// e4m3fn: no infinities, one NaN code (S.1111.111), largest 448. e5m2: float16's upper byte, largest 57344.
KVSERVE_FP8_FN uint8_t e4m3_code(float x) { return code<3, 7>(x, 0x7e, 0x7f); }
KVSERVE_FP8_FN uint8_t e5m2_code(float x) { return code<2, 15>(x, 0x7b, 0x7f); }

}  // namespace kvserve::fp8
