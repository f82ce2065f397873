// 8-bit float codes (half.h's Float8E4M3, Float8E5M2) to float32, 8 at a time, by way of float16:
// e5m2 is a float16's upper byte; e4m3's bits, moved into a float16's, make a value 2^8 too small,
// subnormals included (its NaN code is kept a NaN). The AVX2 and AVX-512 kernels both convert
// with these, so the one conversion the tests run on an AVX2 machine is the AVX-512 path's too.
// Included only by translation units compiled with -mavx2 -mf16c (or more).
#pragma once

#include <immintrin.h>

#include "half.h"

namespace kvserve::cpu {
namespace {  // each translation unit keeps its own copy, built with its own -m flags

inline __m256 fp8_to_float(const Float8E5M2* p) {
  const __m128i bytes = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  return _mm256_cvtph_ps(_mm_slli_epi16(bytes, 8));
}

inline __m256 fp8_to_float(const Float8E4M3* p) {
  const __m128i bytes = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m128i magnitude = _mm_and_si128(bytes, _mm_set1_epi16(0x7f));
  const __m128i sign = _mm_slli_epi16(_mm_and_si128(bytes, _mm_set1_epi16(0x80)), 8);
  const __m128i nan = _mm_and_si128(_mm_cmpeq_epi16(magnitude, _mm_set1_epi16(0x7f)), _mm_set1_epi16(0x7e00));
  const __m128i half = _mm_or_si128(_mm_or_si128(_mm_slli_epi16(magnitude, 7), sign), nan);
  return _mm256_mul_ps(_mm256_cvtph_ps(half), _mm256_set1_ps(256.f));
}

// 8 e4m3 weight codes as half.h's e4m3_weight reads them (2^-8 of their values; the NaN code is
// not kept): sign-extended, shifted into a float16's places and the sign's copy cleared.
inline __m256 e4m3_weights(const Float8E4M3* p) {
  const __m128i words = _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  return _mm256_cvtph_ps(_mm_and_si128(_mm_slli_epi16(words, 7), _mm_set1_epi16(static_cast<int16_t>(0xbfff))));
}

}  // namespace
}  // namespace kvserve::cpu
