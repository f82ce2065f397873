// The bfloat16 linear over a quantized weight (LinearParams::weight_dtype: e4m3, uint4 or int8
// codes) for many input rows, with AVX512-BF16 dot products (compiled with -mavx512bf16).
//
// Up to 8 rows read the codes directly (linear_avx512_bf16_e4m3, small_linear.h;
// linear_avx512_bf16_uint4, linear_avx512_bf16_int8). More rows are a GEMM, which the few-rows
// kernel's layout runs at half oneDNN's rate (each of its sums ends in a horizontal reduction).
// Here the input rows go in the vector lanes instead:
//
//   pairs [ceil(K / 2)][rows, padded to 16][2]   the input, each lane a row's two columns 2j, 2j + 1
//                                                (packed once a call: the input is small beside the
//                                                weight)
//   panel [kRowsN][K, padded to even]            kRowsN weight rows, widened once a call to
//                                                bfloat16: e4m3 codes exactly, in e4m3_weight's
//                                                unit; uint4 and int8 ones as their values, rounded
//
// and for each pair j, vdpbf16ps adds a weight row's pair j (broadcast) dotted with 16 rows' pair j
// to those rows' sums: kRowsN weight rows x 32 input rows of float32 sums stay in 24 registers
// across K (x 16 in 12 for the last 16 rows or fewer), with no reduction at the end; each is
// scaled once (e4m3: by kE4m3WeightUnit times its row's weight_scale), the bias added, and rounded
// to bfloat16, as small_linear.h's tile does.
#include <vector>

#include "layer_kernels.h"
#include "vec_avx512.h"

namespace kvserve::cpu {
namespace {

constexpr int kRowsN = 12;  // weight rows a register tile holds (two registers of 16 input rows each)

// The input's rows [0, num_rows) as pairs [ceil(K / 2)][padded rows][2] bfloat16 (zeros past the
// rows and past K).
void pack_pairs(const LinearParams& p, int64_t padded_rows, std::vector<uint32_t>& pairs) {
  const int64_t k_pairs = (p.in_features + 1) / 2;
  pairs.assign(static_cast<size_t>(k_pairs * padded_rows), 0);
  for (int64_t m = 0; m < p.num_rows; ++m) {
    const auto* x = static_cast<const uint16_t*>(p.input) + m * p.input_stride;
    for (int64_t j = 0; j < p.in_features / 2; ++j) {
      pairs[j * padded_rows + m] = static_cast<uint32_t>(x[2 * j]) | static_cast<uint32_t>(x[2 * j + 1]) << 16;
    }
    if (p.in_features % 2 != 0) pairs[(k_pairs - 1) * padded_rows + m] = x[p.in_features - 1];
  }
}

// How an e4m3 weight's row n widens (its codes' values in e4m3_weight's unit, as bfloat16: exact,
// 4 significant bits; 32 at a time with one vcvtne2ps2bf16) and the factor its sums take.
struct E4m3Rows {
  static void widen(const LinearParams& p, int64_t n, BFloat16* out) {
    const Float8E4M3* row = static_cast<const Float8E4M3*>(p.weight) + n * p.weight_stride;
    int64_t k = 0;
    for (; k + 32 <= p.in_features; k += 32) {
      const __m512bh pairs = _mm512_cvtne2ps_pbh(Avx512::load_weight(row + k + 16), Avx512::load_weight(row + k));
      _mm512_storeu_si512(out + k, (__m512i)pairs);
    }
    for (; k < p.in_features; ++k) from_float(e4m3_weight(row[k]), out + k);
  }
  static float factor(const LinearParams& p, int64_t n) { return kE4m3WeightUnit * p.weight_scale[n]; }
};

// The same for a weight of grouped codes (grouped_linear.h): each code's value, rounded to bfloat16.
template <class Codes>
using GroupedBf16 = GroupedLinear<Avx512, SmallLinear<FmaDot<Avx512, BFloat16>, BFloat16>, BFloat16, Codes>;
template <class Codes>
struct GroupedRows {
  static void widen(const LinearParams& p, int64_t n, BFloat16* out) { GroupedBf16<Codes>::widen_row(p, n, out); }
  static float factor(const LinearParams&, int64_t) { return 1.f; }
};

// kN weight rows from `panel` (rows `row_pairs` pairs apart) against input rows [m0, m0 + 16 kHalves).
template <class Rows, int kN, int kHalves>
void tile(const LinearParams& p, const uint32_t* pairs, int64_t padded_rows, const uint32_t* panel,
          int64_t row_pairs, int64_t m0, int64_t n0) {
  __m512 acc[kN][kHalves];
  for (int n = 0; n < kN; ++n)
    for (int h = 0; h < kHalves; ++h) acc[n][h] = _mm512_setzero_ps();
  for (int64_t j = 0; j < row_pairs; ++j) {
    __m512bh x[kHalves];
    for (int h = 0; h < kHalves; ++h) x[h] = (__m512bh)_mm512_loadu_si512(pairs + j * padded_rows + m0 + 16 * h);
    for (int n = 0; n < kN; ++n) {
      const auto w = (__m512bh)_mm512_set1_epi32(static_cast<int>(panel[n * row_pairs + j]));
      for (int h = 0; h < kHalves; ++h) acc[n][h] = _mm512_dpbf16_ps(acc[n][h], x[h], w);
    }
  }
  const auto* bias = static_cast<const BFloat16*>(p.bias);
  const int64_t rows = p.num_rows - m0 < 16 * kHalves ? p.num_rows - m0 : 16 * kHalves;
  for (int n = 0; n < kN; ++n) {
    const __m512 factor = _mm512_set1_ps(Rows::factor(p, n0 + n));
    const __m512 added = _mm512_set1_ps(bias != nullptr ? to_float(bias[n0 + n]) : 0.f);
    alignas(64) BFloat16 column[16 * kHalves];
    for (int h = 0; h < kHalves; ++h) {
      // sum * factor + bias in two roundings, as the scalar epilogue computes it.
      Avx512::store(column + 16 * h, _mm512_add_ps(_mm512_mul_ps(acc[n][h], factor), added));
    }
    auto* out = static_cast<BFloat16*>(p.out) + m0 * p.out_stride + n0 + n;
    for (int64_t m = 0; m < rows; ++m) out[m * p.out_stride] = column[m];
  }
}

// Weight rows [n0, n0 + kN): widened into the panel, then against every input row.
template <class Rows, int kN>
void rows(const LinearParams& p, const uint32_t* pairs, int64_t padded_rows, std::vector<uint32_t>& panel,
          int64_t n0) {
  const int64_t row_pairs = (p.in_features + 1) / 2;
  panel.resize(static_cast<size_t>(kN * row_pairs));
  for (int n = 0; n < kN; ++n) {
    auto* row = reinterpret_cast<BFloat16*>(panel.data() + n * row_pairs);
    Rows::widen(p, n0 + n, row);
    if (p.in_features % 2 != 0) row[p.in_features] = BFloat16{0};  // the last pair's pad
  }
  int64_t m0 = 0;
  for (; p.num_rows - m0 > 16; m0 += 32) tile<Rows, kN, 2>(p, pairs, padded_rows, panel.data(), row_pairs, m0, n0);
  if (m0 < p.num_rows) tile<Rows, kN, 1>(p, pairs, padded_rows, panel.data(), row_pairs, m0, n0);
}

template <class Rows>
void lanes(const LinearParams& p, int64_t n_begin, int64_t n_end) {
  thread_local std::vector<uint32_t> pairs, panel;
  const int64_t padded_rows = (p.num_rows + 15) / 16 * 16;
  pack_pairs(p, padded_rows, pairs);
  int64_t n = n_begin;
  for (; n + kRowsN <= n_end; n += kRowsN) rows<Rows, kRowsN>(p, pairs.data(), padded_rows, panel, n);
  for (; n + 4 <= n_end; n += 4) rows<Rows, 4>(p, pairs.data(), padded_rows, panel, n);
  for (; n < n_end; ++n) rows<Rows, 1>(p, pairs.data(), padded_rows, panel, n);
}

}  // namespace

void linear_avx512_bf16_e4m3_rows(const LinearParams& p, int64_t n_begin, int64_t n_end) {
  lanes<E4m3Rows>(p, n_begin, n_end);
}

void linear_avx512_bf16_uint4_rows(const LinearParams& p, int64_t n_begin, int64_t n_end) {
  lanes<GroupedRows<Uint4Codes>>(p, n_begin, n_end);
}

void linear_avx512_bf16_int8_rows(const LinearParams& p, int64_t n_begin, int64_t n_end) {
  lanes<GroupedRows<Int8Codes>>(p, n_begin, n_end);
}

}  // namespace kvserve::cpu
