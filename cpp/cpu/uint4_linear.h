// The linear kernel over a uint4 weight (LinearParams::weight_dtype kUInt4: 4-bit codes in groups
// of 32, each group with a float32 scale and offset), written once over an ISA's vectors V.
//
// Up to kDirectRows input rows (decode) read the codes as they are: each 16-byte group widens in
// registers to 32 floats, code * scale + offset (V::widen_group), which multiply-add against up to 4
// input rows at once; a decode step reads 0.75 bytes a weight, codes and scales together. More rows take the
// dtype's own product (Panel) over blocks of weight rows widened once per tile of input rows
// (small_linear.h's widened_panels).
#pragma once

#include <cstdint>

#include "small_linear.h"

namespace kvserve::cpu {
namespace {

constexpr int64_t kUInt4HalfGroup = kUInt4GroupSize / 2;  // a group's bytes, and the elements of each nibble
constexpr int64_t kUInt4AheadRows = 8;  // weight rows ahead of the one being read that are prefetched

// out[32g + i] = code i of group g times the group's scale plus its offset, for the groups of one
// row of k_total elements (codes: the row's bytes, scale and offset: its groups').
template <class V, class T>
void widen_uint4(const uint8_t* codes, const float* scale, const float* offset, T* out, int64_t k_total) {
  typename V::Reg w[kUInt4GroupSize / V::kWidth];
  for (int64_t g = 0; g < k_total / kUInt4GroupSize; ++g) {
    V::widen_group(codes + g * kUInt4HalfGroup, scale[g], offset[g], w);
    for (int i = 0; i < kUInt4GroupSize / V::kWidth; ++i) V::store(out + g * kUInt4GroupSize + i * V::kWidth, w[i]);
  }
}

// The rows kUInt4AheadRows ahead of this one: rows of a few hundred bytes in three streams (codes,
// scales, offsets) are too short for the hardware prefetcher to reach memory's bandwidth alone.
inline void prefetch_ahead(const uint8_t* codes, const float* scale, const float* offset, int64_t stride,
                           int64_t groups) {
  for (int64_t byte = 0; byte < stride; byte += 64) __builtin_prefetch(codes + kUInt4AheadRows * stride + byte);
  for (int64_t g = 0; g < groups; g += 16) {
    __builtin_prefetch(scale + kUInt4AheadRows * groups + g);
    __builtin_prefetch(offset + kUInt4AheadRows * groups + g);
  }
}

template <class V, class Panel, class T>
struct Uint4Linear {
  using Reg = typename V::Reg;
  static constexpr int64_t kDirectRows = 8;

  static const uint8_t* codes(const LinearParams& p, int64_t n) {
    return static_cast<const uint8_t*>(p.weight) + n * p.weight_stride;
  }
  static int64_t groups(const LinearParams& p) { return p.in_features / kUInt4GroupSize; }

  // Input rows [m0, m0 + M) against weight row n.
  template <int M>
  static void tile(const LinearParams& p, int64_t m0, int64_t n) {
    const uint8_t* row = codes(p, n);
    const float* scale = p.weight_scale + n * groups(p);
    const float* offset = p.weight_offset + n * groups(p);
    const T* x[M];
    for (int m = 0; m < M; ++m) x[m] = static_cast<const T*>(p.input) + (m0 + m) * p.input_stride;
    Reg acc[M];
    for (int m = 0; m < M; ++m) acc[m] = V::zero();
    prefetch_ahead(row, scale, offset, p.weight_stride, groups(p));
    Reg w[kUInt4GroupSize / V::kWidth];
    for (int64_t g = 0; g < groups(p); ++g) {
      V::widen_group(row + g * kUInt4HalfGroup, scale[g], offset[g], w);
      for (int i = 0; i < kUInt4GroupSize / V::kWidth; ++i) {
        const int64_t k = g * kUInt4GroupSize + i * V::kWidth;
        for (int m = 0; m < M; ++m) acc[m] = V::fma(V::load(x[m] + k), w[i], acc[m]);
      }
    }
    for (int m = 0; m < M; ++m) {
      float sum = V::reduce_add(acc[m]);
      if (p.bias != nullptr) sum += to_float(static_cast<const T*>(p.bias)[n]);
      from_float(sum, static_cast<T*>(p.out) + (m0 + m) * p.out_stride + n);
    }
  }

  // Panel's product over blocks of weight rows widened into T once per tile of input rows.
  static void panels(const LinearParams& p, int64_t n_begin, int64_t n_end) {
    LinearParams plain = p;  // the panels hold the values: nothing left to scale
    plain.weight_dtype.reset();
    plain.weight_scale = plain.weight_offset = nullptr;
    widened_panels<Panel, T>(plain, n_begin, n_end, [&](int64_t n, T* out) { widen_row(p, n, out); });
  }

  static void cols(const LinearParams& p, int64_t n_begin, int64_t n_end) {
    if (p.num_rows > kDirectRows) return panels(p, n_begin, n_end);
    // Each weight row stays in L1 across the chunks of input rows.
    for (int64_t n = n_begin; n < n_end; ++n) {
      each_row_chunk(0, p.num_rows, [&](int64_t m0, auto m) { tile<decltype(m)::value>(p, m0, n); });
    }
  }

  static void widen_row(const LinearParams& p, int64_t n, T* out) {
    widen_uint4<V>(codes(p, n), p.weight_scale + n * groups(p), p.weight_offset + n * groups(p), out,
                   p.in_features);
  }

  // dequantize_weight_cpu's rows [n_begin, n_end).
  static void dequantize(const LinearParams& p, int64_t n_begin, int64_t n_end) {
    for (int64_t n = n_begin; n < n_end; ++n) widen_row(p, n, static_cast<T*>(p.out) + n * p.out_stride);
  }
};

}  // namespace
}  // namespace kvserve::cpu
