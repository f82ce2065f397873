// The bfloat16 linear with AVX512-BF16 dot products (compiled with -mavx512bf16).
//
// vdpbf16ps multiplies 16 pairs of bfloat16 and adds each pair's sum to a float32 lane: a 32-element
// step of a weight row against an input row in one instruction, without converting either (products
// of bfloat16 are exact in float32).
#include "layer_kernels.h"
#include "vec_avx512.h"

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

// M input rows against one interleaved block of 4 weight rows: each 32-element step reads the
// block's 4 x 64 contiguous bytes, and the step 1 KB ahead is prefetched.
template <int M>
void interleaved_tile(const LinearParams& p, int64_t m0, int64_t block) {
  const int64_t k_total = p.in_features;
  const auto* w = static_cast<const BFloat16*>(p.weight) + block * 4 * k_total;
  const BFloat16* x[M];
  for (int m = 0; m < M; ++m) x[m] = static_cast<const BFloat16*>(p.input) + (m0 + m) * p.input_stride;
  __m512 acc[M][4];
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < 4; ++n) acc[m][n] = _mm512_setzero_ps();
  for (int64_t k = 0; k < k_total; k += 32, w += 128) {
    for (int i = 0; i < 4; ++i) __builtin_prefetch(w + 512 + 32 * i);
    __m512bh wk[4];
    for (int n = 0; n < 4; ++n) wk[n] = (__m512bh)_mm512_loadu_si512(w + 32 * n);
    for (int m = 0; m < M; ++m) {
      const __m512bh xk = (__m512bh)_mm512_loadu_si512(x[m] + k);
      for (int n = 0; n < 4; ++n) acc[m][n] = _mm512_dpbf16_ps(acc[m][n], xk, wk[n]);
    }
  }
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < 4; ++n) store_sum<BFloat16>(p, m0 + m, block * 4 + n, _mm512_reduce_add_ps(acc[m][n]));
  }
}

}  // namespace

void linear_avx512_bf16_interleaved(const LinearParams& p, int64_t block_begin, int64_t block_end) {
  for (int64_t block = block_begin; block < block_end; ++block) {
    each_row_chunk(0, p.num_rows, [&](int64_t m0, auto m) { interleaved_tile<decltype(m)::value>(p, m0, block); });
  }
}

void linear_avx512_bf16(const LinearParams& p, int64_t n_begin, int64_t n_end) {
  SmallLinear<Bf16Dot, BFloat16>::cols(p, n_begin, n_end);
}

// Up to 8 rows the codes are read directly; from 9, the lanes kernel's tile of 16 rows, half full or
// more, runs faster (bench/README.md, "Weight-only fp8": at 8 rows the two ran alike, at 12 the lanes
// kernel 1.2-1.5x the direct path).
void linear_avx512_bf16_e4m3(const LinearParams& p, int64_t n_begin, int64_t n_end) {
  using Direct = SmallLinear<FmaDot<Avx512, BFloat16>, BFloat16, Float8E4M3>;
  if (p.num_rows <= 8) return Direct::cols(p, n_begin, n_end);
  linear_avx512_bf16_e4m3_rows(p, n_begin, n_end);
}

}  // namespace kvserve::cpu
