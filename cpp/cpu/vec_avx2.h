// 8 floats in a ymm register: the vector operations the attention kernel is written in.
// Included only by translation units compiled with -mavx2 -mfma -mf16c.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "fp8_f16c.h"
#include "half.h"

namespace kvserve::cpu {
namespace {  // each translation unit keeps its own copy, built with its own -m flags

struct Avx2 {
  using Reg = __m256;
  static constexpr int kWidth = 8;
  static constexpr int kMaxScoreRows = 4;  // 16 registers: 4 rows x 2 score registers + operands
  static constexpr int kMaxOutRegs = 2;

  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg set1(float x) { return _mm256_set1_ps(x); }
  static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static Reg sub(Reg a, Reg b) { return _mm256_sub_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm256_mul_ps(a, b); }
  static Reg div(Reg a, Reg b) { return _mm256_div_ps(a, b); }
  static Reg max(Reg a, Reg b) { return _mm256_max_ps(a, b); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static float reduce_add(Reg a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  static float reduce_max(Reg a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
  }
  static bool any_equal(Reg a, float x) {
    return _mm256_movemask_ps(_mm256_cmp_ps(a, _mm256_set1_ps(x), _CMP_EQ_OQ)) != 0;
  }

  // a rounded to bfloat16 (to nearest even; a NaN stays a quiet NaN), or to float16, kept as float32.
  static Reg round_to_bf16(Reg a) {
    const __m256i u = _mm256_castps_si256(a);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_or_si256(u, _mm256_set1_epi32(0x400000)), nan);
    return _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
  }
  static Reg round_to_fp16(Reg a) { return _mm256_cvtph_ps(_mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT)); }

  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static Reg load(const BFloat16* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static Reg load(const Float16* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static Reg load(const Float8E5M2* p) { return fp8_to_float(p); }
  static Reg load(const Float8E4M3* p) { return fp8_to_float(p); }
  static Reg load_weight(const Float8E4M3* p) { return e4m3_weights(p); }  // half.h's e4m3_weight
  // A uint4 group's 32 weights (grouped_linear.h: 16 bytes, low nibbles elements 0-15, high 16-31),
  // code * scale + offset, in out[0..3].
  static void widen_group(const uint8_t* p, float scale, float offset, Reg out[4]) {
    const Reg s = _mm256_set1_ps(scale), o = _mm256_set1_ps(offset);
    for (int half = 0; half < 2; ++half) {
      const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * half)));
      const __m256i low = _mm256_and_si256(bytes, _mm256_set1_epi32(15)), high = _mm256_srli_epi32(bytes, 4);
      out[half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(low), s, o);
      out[2 + half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(high), s, o);
    }
  }
  // An int8 group's 16 weights (grouped_linear.h), code * scale, in out[0] and out[1].
  static void widen_int8(const int8_t* p, float scale, Reg out[2]) {
    for (int half = 0; half < 2; ++half) {
      const __m256i codes = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * half)));
      out[half] = _mm256_mul_ps(_mm256_cvtepi32_ps(codes), _mm256_set1_ps(scale));
    }
  }
  static void store(float* p, Reg a) { _mm256_storeu_ps(p, a); }
  static void store(BFloat16* p, Reg a) {
    const __m256i high = _mm256_srli_epi32(_mm256_castps_si256(round_to_bf16(a)), 16);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm_packus_epi32(_mm256_castsi256_si128(high), _mm256_extracti128_si256(high, 1)));
  }
  static void store(Float16* p, Reg a) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT));
  }

  // Lanes [lane0, lane0 + 8) of a score row: those outside [begin, end) become -inf.
  static Reg keep_lanes(Reg a, int lane0, int begin, int end) {
    const Reg lane = _mm256_add_ps(_mm256_set1_ps(static_cast<float>(lane0)),
                                   _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7));
    const Reg inside = _mm256_and_ps(_mm256_cmp_ps(lane, _mm256_set1_ps(static_cast<float>(begin)), _CMP_GE_OQ),
                                     _mm256_cmp_ps(lane, _mm256_set1_ps(static_cast<float>(end)), _CMP_LT_OQ));
    return _mm256_blendv_ps(_mm256_set1_ps(-__builtin_inff()), a, inside);
  }

  static Reg min(Reg a, Reg b) { return _mm256_min_ps(a, b); }
  static Reg round(Reg x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // y * 2^n for integral n in [-126, 128], as two powers of two that are normal floats.
  static Reg scale2(Reg y, Reg n) {
    const __m256i total = _mm256_cvtps_epi32(n);
    const __m256i half = _mm256_srai_epi32(total, 1);
    auto pow2 = [](__m256i e) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23)); };
    return _mm256_mul_ps(_mm256_mul_ps(y, pow2(half)), pow2(_mm256_sub_epi32(total, half)));
  }
  // y where x >= limit, else 0.
  static Reg zero_below(Reg y, Reg x, float limit) { return _mm256_and_ps(_mm256_cmp_ps(x, _mm256_set1_ps(limit), _CMP_GE_OQ), y); }
  // y where x <= limit (or NaN), else +inf.
  static Reg inf_above(Reg y, Reg x, float limit) {
    return _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(x, _mm256_set1_ps(limit), _CMP_GT_OQ));
  }

  // In-place transpose of an 8x8 tile: rows[i] lane j  <->  rows[j] lane i.
  static void transpose(Reg rows[8]) {
    Reg t[8], u[8];
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm256_unpacklo_ps(rows[2 * i], rows[2 * i + 1]);
      t[2 * i + 1] = _mm256_unpackhi_ps(rows[2 * i], rows[2 * i + 1]);
    }
    // u[4g + j]: column j (lanes 0-3) and j + 4 (lanes 4-7) of rows 4g..4g+3.
    for (int g = 0; g < 2; ++g) {
      u[4 * g + 0] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
      u[4 * g + 1] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0xee);
      u[4 * g + 2] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
      u[4 * g + 3] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xee);
    }
    for (int j = 0; j < 4; ++j) {
      rows[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
      rows[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
    }
  }

  // dst[d][c] = keys[c][d] for 16 keys (a null key gives zeros); dim is a multiple of 8.
  template <class T>
  static void pack_transposed(float* dst, const T* const keys[16], int64_t dim) {
    for (int half = 0; half < 2; ++half) {
      for (int64_t d0 = 0; d0 < dim; d0 += 8) {
        Reg tile[8];
        for (int c = 0; c < 8; ++c) tile[c] = keys[8 * half + c] ? load(keys[8 * half + c] + d0) : zero();
        transpose(tile);
        for (int j = 0; j < 8; ++j) store(dst + (d0 + j) * 16 + 8 * half, tile[j]);
      }
    }
  }
};

}  // namespace
}  // namespace kvserve::cpu
