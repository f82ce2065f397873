// 16 floats in a zmm register: the vector operations the attention kernel is written in.
// Included only by translation units compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "fp8_f16c.h"
#include "half.h"

namespace kvserve::cpu {
namespace {  // each translation unit keeps its own copy, built with its own -m flags

struct Avx512 {
  using Reg = __m512;
  static constexpr int kWidth = 16;
  static constexpr int kMaxScoreRows = 8;  // rows of a score tile held in registers at once
  static constexpr int kMaxOutRegs = 4;    // registers per row of an output tile

  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg set1(float x) { return _mm512_set1_ps(x); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Reg sub(Reg a, Reg b) { return _mm512_sub_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
  static Reg div(Reg a, Reg b) { return _mm512_div_ps(a, b); }
  static Reg max(Reg a, Reg b) { return _mm512_max_ps(a, b); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static float reduce_add(Reg a) { return _mm512_reduce_add_ps(a); }
  static float reduce_max(Reg a) { return _mm512_reduce_max_ps(a); }
  static bool any_equal(Reg a, float x) { return _mm512_cmp_ps_mask(a, _mm512_set1_ps(x), _CMP_EQ_OQ) != 0; }

  // a rounded to bfloat16 (to nearest even; a NaN stays a quiet NaN), or to float16, kept as float32.
  static Reg round_to_bf16(Reg a) {
    const __m512i u = _mm512_castps_si512(a);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    const __mmask16 nan = _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x400000)));
    return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
  }
  static Reg round_to_fp16(Reg a) { return _mm512_cvtph_ps(_mm512_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT)); }

  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static Reg load(const BFloat16* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static Reg load(const Float16* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  // 8-bit floats: two halves of AVX2's conversion (fp8_f16c.h).
  template <class Fp8>
  static Reg load_fp8(const Fp8* p) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(fp8_to_float(p)), fp8_to_float(p + 8), 1);
  }
  static Reg load(const Float8E5M2* p) { return load_fp8(p); }
  static Reg load(const Float8E4M3* p) { return load_fp8(p); }
  // 16 e4m3 weight codes (half.h's e4m3_weight): 16 bytes widened in one go.
  static Reg load_weight(const Float8E4M3* p) {
    const __m256i words = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m256i sign_copy_cleared = _mm256_set1_epi16(static_cast<int16_t>(0xbfff));
    return _mm512_cvtph_ps(_mm256_and_si256(_mm256_slli_epi16(words, 7), sign_copy_cleared));
  }
  // A uint4 group's 32 weights (grouped_linear.h: 16 bytes, low nibbles elements 0-15, high 16-31),
  // code * scale + offset, in out[0] and out[1]: the 16 values a code can stand for are made once
  // (a multiply-add) and each nibble looks its value up (vpermps reads an index's low 4 bits).
  static void widen_group(const uint8_t* p, float scale, float offset, Reg out[2]) {
    const Reg codes = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const Reg values = _mm512_fmadd_ps(codes, _mm512_set1_ps(scale), _mm512_set1_ps(offset));
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    out[0] = _mm512_permutexvar_ps(bytes, values);
    out[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), values);
  }
  // An int8 group's 16 weights (grouped_linear.h), code * scale, in out[0].
  static void widen_int8(const int8_t* p, float scale, Reg out[1]) {
    const __m512i codes = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    out[0] = _mm512_mul_ps(_mm512_cvtepi32_ps(codes), _mm512_set1_ps(scale));
  }
  static void store(float* p, Reg a) { _mm512_storeu_ps(p, a); }
  static void store(BFloat16* p, Reg a) {
    const __m512i high = _mm512_srli_epi32(_mm512_castps_si512(round_to_bf16(a)), 16);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(high));
  }
  static void store(Float16* p, Reg a) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT));
  }

  // Lanes [lane0, lane0 + 16) of a score row: those outside [begin, end) become -inf.
  static Reg keep_lanes(Reg a, int lane0, int begin, int end) {
    const int b = begin - lane0 < 0 ? 0 : begin - lane0, e = end - lane0 > 16 ? 16 : end - lane0;
    if (b >= e) return _mm512_set1_ps(-__builtin_inff());
    const __mmask16 keep = static_cast<__mmask16>(((1u << e) - 1) & ~((1u << b) - 1));
    return _mm512_mask_mov_ps(_mm512_set1_ps(-__builtin_inff()), keep, a);
  }

  static Reg min(Reg a, Reg b) { return _mm512_min_ps(a, b); }
  static Reg round(Reg x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // y * 2^n for integral n in [-126, 128].
  static Reg scale2(Reg y, Reg n) { return _mm512_scalef_ps(y, n); }
  // y where x >= limit, else 0.
  static Reg zero_below(Reg y, Reg x, float limit) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(limit), _CMP_GE_OQ), y); }
  // y where x <= limit (or NaN), else +inf.
  static Reg inf_above(Reg y, Reg x, float limit) {
    return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_set1_ps(limit), _CMP_GT_OQ), _mm512_set1_ps(__builtin_inff()));
  }

  // In-place transpose of a 16x16 tile: rows[i] lane j  <->  rows[j] lane i.
  static void transpose(Reg rows[16]) {
    Reg t[16], u[16];
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(rows[2 * i], rows[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_ps(rows[2 * i], rows[2 * i + 1]);
    }
    // u[4g + j]: column j (lanes 0-3), j + 4, j + 8, j + 12 of rows 4g..4g+3.
    for (int g = 0; g < 4; ++g) {
      u[4 * g + 0] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
      u[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xee);
      u[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
      u[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xee);
    }
    for (int j = 0; j < 4; ++j) {
      t[j] = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88);
      t[4 + j] = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xdd);
      t[8 + j] = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
      t[12 + j] = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xdd);
    }
    for (int j = 0; j < 8; ++j) {
      rows[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
      rows[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);
    }
  }

  // dst[d][c] = keys[c][d] for 16 keys (a null key gives zeros); dim is a multiple of 16.
  template <class T>
  static void pack_transposed(float* dst, const T* const keys[16], int64_t dim) {
    for (int64_t d0 = 0; d0 < dim; d0 += 16) {
      Reg tile[16];
      for (int c = 0; c < 16; ++c) tile[c] = keys[c] ? load(keys[c] + d0) : zero();
      transpose(tile);
      for (int j = 0; j < 16; ++j) store(dst + (d0 + j) * 16, tile[j]);
    }
  }
};

}  // namespace
}  // namespace kvserve::cpu
