// The linear kernel written once over a dot-product policy (see include/kvserve/linear.h).
//
//   for each block of kBlockN weight rows (output features n..n+3), for each chunk of up to
//   kChunkM input rows: kChunkM x kBlockN accumulators walk along in_features, Dot::kStep elements
//   a step, then each is summed across its lanes. The weight block stays in L1 across the chunks.
//
// FmaDot converts each element to float and multiply-adds (any ISA, any dtype); the AVX512-BF16
// translation unit brings a policy that takes bfloat16 pairs as they are (vdpbf16ps).
#pragma once

#include <cstdint>

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
  static Reg fma(Reg acc, Operand x, Operand w) { return V::fma(x, w, acc); }
  static float reduce(Reg acc) { return V::reduce_add(acc); }
};

template <class Dot, class T>
struct SmallLinear {
  using Reg = typename Dot::Reg;
  using Operand = typename Dot::Operand;
  static constexpr int kBlockN = 4;
  static constexpr int kChunkM = 4;
  static constexpr int64_t kTileBytes = 256 << 10;
  static constexpr int64_t kMaxTileM = 64;

  template <int M, int N>
  static void tile(const LinearParams& p, int64_t m0, int64_t n0) {
    const int64_t k_total = p.in_features, body = k_total - k_total % Dot::kStep;
    const T* x[M];
    const T* w[N];
    for (int m = 0; m < M; ++m) x[m] = static_cast<const T*>(p.input) + (m0 + m) * p.input_stride;
    for (int n = 0; n < N; ++n) w[n] = static_cast<const T*>(p.weight) + (n0 + n) * p.weight_stride;
    Reg acc[M][N];
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) acc[m][n] = Dot::zero();
    // The next block's rows, at the same column: rows shorter than the hardware prefetcher's ramp
    // (a 512-wide bf16 row is 1 KB) would otherwise start cold from DRAM block after block.
    const int64_t ahead = N * p.weight_stride;
    for (int64_t k = 0; k < body; k += Dot::kStep) {
      Operand wk[N];
      for (int n = 0; n < N; ++n) {
        __builtin_prefetch(w[n] + k + ahead);
        wk[n] = Dot::load(w[n] + k);
      }
      for (int m = 0; m < M; ++m) {
        const Operand xk = Dot::load(x[m] + k);
        for (int n = 0; n < N; ++n) acc[m][n] = Dot::fma(acc[m][n], xk, wk[n]);
      }
    }
    for (int m = 0; m < M; ++m) {
      T* out = static_cast<T*>(p.out) + (m0 + m) * p.out_stride + n0;
      for (int n = 0; n < N; ++n) {
        float sum = Dot::reduce(acc[m][n]);
        for (int64_t k = body; k < k_total; ++k) sum += to_float(x[m][k]) * to_float(w[n][k]);
        if (p.bias != nullptr) sum += to_float(static_cast<const T*>(p.bias)[n0 + n]);
        from_float(sum, out + n);
      }
    }
  }

  template <int N>
  static void rows(const LinearParams& p, int64_t n0, int64_t m_begin, int64_t m_end) {
    int64_t m0 = m_begin;
    for (; m0 + kChunkM <= m_end; m0 += kChunkM) tile<kChunkM, N>(p, m0, n0);
    switch (m_end - m0) {
      case 3: tile<3, N>(p, m0, n0); break;
      case 2: tile<2, N>(p, m0, n0); break;
      case 1: tile<1, N>(p, m0, n0); break;
      default: break;
    }
  }

  // Input rows go a tile at a time, so that the tile (~kTileBytes) stays in L2 while every weight
  // block of the thread's columns passes it; the weights are read once per tile.
  static void cols(const LinearParams& p, int64_t n_begin, int64_t n_end) {
    int64_t tile_m = kTileBytes / (p.in_features * static_cast<int64_t>(sizeof(T))) / kChunkM * kChunkM;
    tile_m = tile_m < kChunkM ? kChunkM : tile_m > kMaxTileM ? kMaxTileM : tile_m;
    for (int64_t m_begin = 0; m_begin < p.num_rows; m_begin += tile_m) {
      const int64_t m_end = m_begin + tile_m < p.num_rows ? m_begin + tile_m : p.num_rows;
      int64_t n = n_begin;
      for (; n + kBlockN <= n_end; n += kBlockN) rows<kBlockN>(p, n, m_begin, m_end);
      for (; n < n_end; ++n) rows<1>(p, n, m_begin, m_end);
    }
  }
};

}  // namespace
}  // namespace kvserve::cpu
