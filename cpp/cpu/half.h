// Storage types for 16- and 8-bit floats and their exact conversions to and from float, in plain C++.
//
// The functions are `static` so that every translation unit keeps its own copy: the vector kernels
// are compiled with different -m flags, and a shared inline copy built for AVX-512 must never be
// what the portable path calls.
#pragma once

#include <cstdint>
#include <cstring>

#include "fp8_code.h"

namespace kvserve::cpu {

struct BFloat16 {
  uint16_t bits;
};
struct Float16 {
  uint16_t bits;
};
// OCP FP8 (dtype.h): KV caches, and e4m3 weights (e4m3_weight below). Written saturated: a
// magnitude beyond the largest finite one becomes it (infinities too), as CUDA's __NV_SATFINITE
// conversions do; NaN stays NaN.
struct Float8E4M3 {
  uint8_t bits;
};
struct Float8E5M2 {
  uint8_t bits;
};

using fp8::bits_float;
using fp8::float_bits;

static inline float to_float(float x) { return x; }
static inline float to_float(BFloat16 x) { return bits_float(static_cast<uint32_t>(x.bits) << 16); }

static inline float to_float(Float16 x) {
  const uint32_t sign = static_cast<uint32_t>(x.bits & 0x8000) << 16;
  const uint32_t exponent = (x.bits >> 10) & 0x1f, mantissa = x.bits & 0x3ff;
  if (exponent == 0x1f) return bits_float(sign | 0x7f800000 | (mantissa << 13));  // inf, nan
  if (exponent != 0) return bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
  // Zero or subnormal: mantissa * 2^-24, exact in float.
  const float magnitude = static_cast<float>(mantissa) * bits_float(0x33800000);
  return sign ? -magnitude : magnitude;
}

// e5m2 is the upper byte of a float16.
static inline float to_float(Float8E5M2 x) { return to_float(Float16{static_cast<uint16_t>(x.bits << 8)}); }

static inline float to_float(Float8E4M3 x) {
  const uint32_t sign = static_cast<uint32_t>(x.bits & 0x80) << 24;
  const uint32_t exponent = (x.bits >> 3) & 0xf, mantissa = x.bits & 0x7;
  if (exponent == 0xf && mantissa == 0x7) return bits_float(sign | 0x7fc00000);  // nan
  if (exponent != 0) return bits_float(sign | ((exponent + 120) << 23) | (mantissa << 20));
  const float magnitude = static_cast<float>(mantissa) * bits_float(0x3b000000);  // subnormal: m * 2^-9
  return sign ? -magnitude : magnitude;
}

// An e4m3 weight code read the way the few-rows linear reads them (fp8_f16c.h's e4m3_weights, 8 or
// 16 at a time): its bits moved into a float16's, which makes 2^-8 of its value exactly, subnormals
// included, in three integer operations; the product scales each row by kE4m3WeightUnit once. The
// NaN code reads as a number (weights never hold it: linear.h).
constexpr float kE4m3WeightUnit = 256.f;
static inline float e4m3_weight(Float8E4M3 x) {
  const auto widened = static_cast<uint16_t>(static_cast<int16_t>(static_cast<int8_t>(x.bits)) << 7);
  return to_float(Float16{static_cast<uint16_t>(widened & 0xbfff)});
}

static inline void from_float(float x, float* out) { *out = x; }

// Round to nearest even; a NaN stays a (quiet) NaN.
static inline void from_float(float x, BFloat16* out) {
  const uint32_t u = float_bits(x);
  if ((u & 0x7fffffff) > 0x7f800000) {
    out->bits = static_cast<uint16_t>((u >> 16) | 0x40);
    return;
  }
  out->bits = static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

// Round to nearest even, overflow to inf, gradual underflow to subnormals.
static inline void from_float(float x, Float16* out) {
  const uint32_t u = float_bits(x);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  const uint32_t magnitude = u & 0x7fffffff;
  if (magnitude > 0x7f800000) {  // nan
    out->bits = static_cast<uint16_t>(sign | 0x7e00);
    return;
  }
  if (magnitude >= 0x477ff000) {  // rounds to >= 65520: inf
    out->bits = static_cast<uint16_t>(sign | 0x7c00);
    return;
  }
  if (magnitude < 0x38800000) {  // below the smallest normal half: a multiple of 2^-24
    // Adding 0.5 shifts the value so that the float adder rounds it to the 2^-24 grid (nearest even).
    const float shifted = bits_float(magnitude) + 0.5f;
    out->bits = static_cast<uint16_t>(sign | (float_bits(shifted) - float_bits(0.5f)));
    return;
  }
  const uint32_t rounded = magnitude + 0xfff + ((magnitude >> 13) & 1) - (112u << 23);
  out->bits = static_cast<uint16_t>(sign | (rounded >> 13));
}

// fp8_code.h: the rounding the GPU kernels share.
static inline void from_float(float x, Float8E4M3* out) { out->bits = fp8::e4m3_code(x); }
static inline void from_float(float x, Float8E5M2* out) { out->bits = fp8::e5m2_code(x); }

}  // namespace kvserve::cpu
