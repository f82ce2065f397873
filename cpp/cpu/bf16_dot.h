// small_linear.h's dot-product policy for bfloat16 on AVX512-BF16 (translation units compiled with
// -mavx512bf16 only): vdpbf16ps multiplies 16 pairs of bfloat16 and adds each pair's sum to a
// float32 lane, a 32-element step of a weight row against an input row in one instruction, without
// converting either (products of bfloat16 are exact in float32).
#pragma once

#include <immintrin.h>

#include "half.h"

namespace kvserve::cpu {
namespace {

struct Bf16Dot {
  using Reg = __m512;
  using Operand = __m512bh;
  static constexpr int kStep = 32;
  static Reg zero() { return _mm512_setzero_ps(); }
  static Operand load(const BFloat16* p) { return (__m512bh)_mm512_loadu_si512(p); }
  static Operand load_weight(const BFloat16* p) { return load(p); }
  static Reg fma(Reg acc, Operand x, Operand w) { return _mm512_dpbf16_ps(acc, x, w); }
  static float reduce(Reg acc) { return _mm512_reduce_add_ps(acc); }
};

}  // namespace
}  // namespace kvserve::cpu
