// The linear kernel written once over a dot-product policy (see include/kvserve/linear.h).
//
//   for each block of kBlockN weight rows (output features n..n+3), for each chunk of up to
//   kRowChunk input rows: kRowChunk x kBlockN accumulators walk along in_features, Dot::kStep
//   elements a step, then each is summed across its lanes. The weight block stays in L1 across the
//   chunks.
//
// FmaDot converts each element to float and multiply-adds (any ISA, any dtype; weights of W, the
// input's dtype or e4m3 codes, through Dot::load_weight); the AVX512-BF16 translation unit brings a
// policy that takes bfloat16 pairs as they are (vdpbf16ps). An e4m3 weight's row sums are scaled
// once, by the row's weight_scale and the unit its codes are read in (half.h's e4m3_weight).
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "half.h"
#include "kvserve/linear.h"

namespace kvserve::cpu {

namespace {

template <class V, class T>
struct FmaDot {
  using Reg = typename V::Reg;
  using Operand = typename V::Reg;
  static constexpr int kStep = V::kWidth;
  static Reg zero() { return V::zero(); }
  static Operand load(const T* p) { return V::load(p); }
  static Operand load_weight(const T* p) { return V::load(p); }
  static Operand load_weight(const Float8E4M3* p) { return V::load_weight(p); }
  static Reg fma(Reg acc, Operand x, Operand w) { return V::fma(x, w, acc); }
  static float reduce(Reg acc) { return V::reduce_add(acc); }
};

// A weight element as a float, in the unit load_weight reads it in.
inline float weight_value(float w) { return w; }
inline float weight_value(BFloat16 w) { return to_float(w); }
inline float weight_value(Float16 w) { return to_float(w); }
inline float weight_value(Float8E4M3 w) { return e4m3_weight(w); }

// Output (m, n) of a product: `sum` plus the bias's element n (when there is a bias), rounded once to T.
template <class T>
inline void store_sum(const LinearParams& p, int64_t m, int64_t n, float sum) {
  if (p.bias != nullptr) sum += to_float(static_cast<const T*>(p.bias)[n]);
  from_float(sum, static_cast<T*>(p.out) + m * p.out_stride + n);
}

// Input rows go through a register tile kRowChunk at a time, the last 1 to 3 through a smaller one
// (a tile's row count is a template argument): fn(m0, std::integral_constant<int, M>{}) for each
// chunk of input rows [m_begin, m_end).
constexpr int kRowChunk = 4;
template <class Fn>
void each_row_chunk(int64_t m_begin, int64_t m_end, Fn fn) {
  int64_t m0 = m_begin;
  for (; m0 + kRowChunk <= m_end; m0 += kRowChunk) fn(m0, std::integral_constant<int, kRowChunk>{});
  switch (m_end - m0) {
    case 3: fn(m0, std::integral_constant<int, 3>{}); break;
    case 2: fn(m0, std::integral_constant<int, 2>{}); break;
    case 1: fn(m0, std::integral_constant<int, 1>{}); break;
    default: break;
  }
}

template <class Dot, class T, class W = T>
struct SmallLinear {
  using Reg = typename Dot::Reg;
  using Operand = typename Dot::Operand;
  static constexpr int kBlockN = 4;
  static constexpr int64_t kTileBytes = 256 << 10;
  static constexpr int64_t kMaxTileM = 64;

  // M input rows from m0 against N weight rows from n0, read from `rows` (row n0), `stride` apart.
  template <int M, int N>
  static void tile(const LinearParams& p, int64_t m0, int64_t n0, const W* rows, int64_t stride) {
    const int64_t k_total = p.in_features, body = k_total - k_total % Dot::kStep;
    const T* x[M];
    const W* w[N];
    for (int m = 0; m < M; ++m) x[m] = static_cast<const T*>(p.input) + (m0 + m) * p.input_stride;
    for (int n = 0; n < N; ++n) w[n] = rows + n * stride;
    Reg acc[M][N];
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) acc[m][n] = Dot::zero();
    // The next block's rows, at the same column: rows shorter than the hardware prefetcher's ramp
    // (a 512-wide bf16 row is 1 KB) would otherwise start cold from DRAM block after block.
    const int64_t ahead = N * stride;
    for (int64_t k = 0; k < body; k += Dot::kStep) {
      Operand wk[N];
      for (int n = 0; n < N; ++n) {
        __builtin_prefetch(w[n] + k + ahead);
        wk[n] = Dot::load_weight(w[n] + k);
      }
      for (int m = 0; m < M; ++m) {
        const Operand xk = Dot::load(x[m] + k);
        for (int n = 0; n < N; ++n) acc[m][n] = Dot::fma(acc[m][n], xk, wk[n]);
      }
    }
    for (int m = 0; m < M; ++m) {
      for (int n = 0; n < N; ++n) {
        float sum = Dot::reduce(acc[m][n]);
        for (int64_t k = body; k < k_total; ++k) sum += to_float(x[m][k]) * weight_value(w[n][k]);
        // An e4m3 weight's codes (read directly, or widened into a panel: E4m3Linear) in their unit.
        if (p.weight_scale != nullptr) sum *= kE4m3WeightUnit * p.weight_scale[n0 + n];
        store_sum<T>(p, m0 + m, n0 + n, sum);
      }
    }
  }

  template <int N>
  static void rows(const LinearParams& p, int64_t n0, int64_t m_begin, int64_t m_end, const W* rows, int64_t stride) {
    each_row_chunk(m_begin, m_end, [&](int64_t m0, auto m) { tile<decltype(m)::value, N>(p, m0, n0, rows, stride); });
  }

  // fn(m_begin, m_end) over the input rows a tile at a time, so that the tile (~kTileBytes) stays in
  // L2 while every weight block of the thread's columns passes it.
  template <class Fn>
  static void each_tile(const LinearParams& p, Fn fn) {
    int64_t tile_m = kTileBytes / (p.in_features * static_cast<int64_t>(sizeof(T))) / kRowChunk * kRowChunk;
    tile_m = tile_m < kRowChunk ? kRowChunk : tile_m > kMaxTileM ? kMaxTileM : tile_m;
    for (int64_t m_begin = 0; m_begin < p.num_rows; m_begin += tile_m) {
      fn(m_begin, m_begin + tile_m < p.num_rows ? m_begin + tile_m : p.num_rows);
    }
  }

  // fn(n, std::integral_constant<int, N>) over blocks of kBlockN weight rows in [n_begin, n_end),
  // then single rows.
  template <class Fn>
  static void each_block(int64_t n_begin, int64_t n_end, Fn fn) {
    int64_t n = n_begin;
    for (; n + kBlockN <= n_end; n += kBlockN) fn(n, std::integral_constant<int, kBlockN>{});
    for (; n < n_end; ++n) fn(n, std::integral_constant<int, 1>{});
  }

  // The weights are read once per tile of input rows.
  static void cols(const LinearParams& p, int64_t n_begin, int64_t n_end) {
    const W* weight = static_cast<const W*>(p.weight);
    each_tile(p, [&](int64_t m_begin, int64_t m_end) {
      each_block(n_begin, n_end, [&](int64_t n, auto count) {
        rows<decltype(count)::value>(p, n, m_begin, m_end, weight + n * p.weight_stride, p.weight_stride);
      });
    });
  }
};

// out[k] = the value of code row[k] in e4m3_weight's unit, times `factor`, for k in [0, n).
template <class V, class T>
void widen_e4m3(const Float8E4M3* row, T* out, int64_t n, float factor) {
  const int64_t body = n - n % V::kWidth;
  const auto times = V::set1(factor);
  for (int64_t k = 0; k < body; k += V::kWidth) V::store(out + k, V::mul(V::load_weight(row + k), times));
  for (int64_t k = body; k < n; ++k) from_float(e4m3_weight(row[k]) * factor, out + k);
}

// Panel's product over a quantized weight's rows [n_begin, n_end), each block of Panel::kBlockN of
// them widened by widen(n, T* row) into a panel of plain rows once per tile of input rows.
template <class Panel, class T, class Widen>
void widened_panels(const LinearParams& p, int64_t n_begin, int64_t n_end, Widen widen) {
  const int64_t k_total = p.in_features;
  thread_local std::vector<T> panel;
  panel.resize(static_cast<size_t>(Panel::kBlockN * k_total));
  Panel::each_tile(p, [&](int64_t m_begin, int64_t m_end) {
    Panel::each_block(n_begin, n_end, [&](int64_t n, auto count) {
      for (int i = 0; i < decltype(count)::value; ++i) widen(n + i, panel.data() + i * k_total);
      Panel::template rows<decltype(count)::value>(p, n, m_begin, m_end, panel.data(), k_total);
    });
  });
}

// An e4m3 weight (LinearParams::weight_dtype). Up to kDirectRows input rows (decode) read the codes
// as they are, widening them in registers (Direct: FmaDot over Float8E4M3): a decode step reads half
// a 16-bit weight's bytes. More rows would widen each code once per 4 of them, and multiply-add in
// float32 where Panel, the dtype's own dot product, may take bfloat16 pairs: instead each block of
// weight rows is widened once per tile of input rows into a panel of T (exact: a code's value in
// e4m3_weight's unit has 4 significant bits), which Panel reads as a plain weight and scales by
// weight_scale. The crossing (bench/README.md, "Weight-only fp8"): at 8 and 16 rows the direct path
// ran 1.1-1.3x the panels' rate, at 64 rows the panels 1.7x the direct path's.
template <class V, class Direct, class Panel, class T>
struct E4m3Linear {
  static constexpr int64_t kDirectRows = 16;

  static void cols(const LinearParams& p, int64_t n_begin, int64_t n_end) {
    if (p.num_rows <= kDirectRows) return Direct::cols(p, n_begin, n_end);
    const auto* codes = static_cast<const Float8E4M3*>(p.weight);
    widened_panels<Panel, T>(p, n_begin, n_end, [&](int64_t n, T* row) {
      widen_e4m3<V>(codes + n * p.weight_stride, row, p.in_features, 1.f);
    });
  }

  // dequantize_weight_cpu's rows [n_begin, n_end): each code's value times its row's scale.
  static void dequantize(const LinearParams& p, int64_t n_begin, int64_t n_end) {
    const auto* codes = static_cast<const Float8E4M3*>(p.weight);
    for (int64_t n = n_begin; n < n_end; ++n) {
      widen_e4m3<V>(codes + n * p.weight_stride, static_cast<T*>(p.out) + n * p.out_stride, p.in_features,
                    kE4m3WeightUnit * p.weight_scale[n]);
    }
  }
};

}  // namespace
}  // namespace kvserve::cpu
