// The linear kernel over a weight of integer codes in groups along each row, each group with its own
// float32 scale (LinearParams::weight_dtype kUInt4: 32 4-bit codes, code * scale + offset; kInt8:
// 16 8-bit ones, code * scale), written once over an ISA's vectors V and the codes' layout (Codes).
//
// Up to kDirectRows input rows (decode) read the codes as they are: each 16-byte group widens in
// registers to its values (Codes::widen), which multiply-add against up to 4 input rows at once; a
// decode step reads 0.75 (uint4) or 1.25 (int8) bytes a weight, codes and scales together. More rows
// take the dtype's own product (Panel) over blocks of weight rows widened once per tile of input rows
// (small_linear.h's widened_panels).
#pragma once

#include <cstdint>

#include "small_linear.h"

namespace kvserve::cpu {
namespace {

constexpr int64_t kGroupBytes = 16;  // bytes of codes a group holds, for either layout
constexpr int64_t kUInt4HalfGroup = kUInt4GroupSize / 2;  // the elements of each nibble of a uint4 group
constexpr int64_t kAheadRows = 8;  // weight rows ahead of the one being read that are prefetched

// uint4 codes: 32 a group, two a byte (linear.h has the order), each code * scale + offset.
struct Uint4Codes {
  static constexpr int64_t kGroupSize = kUInt4GroupSize;
  static constexpr bool kOffsets = true;
  template <class V>
  static void widen(const uint8_t* group, float scale, float offset, typename V::Reg* out) {
    V::widen_group(group, scale, offset, out);
  }
};

// int8 codes: 16 a group, each code * scale (no offsets).
struct Int8Codes {
  static constexpr int64_t kGroupSize = kInt8GroupSize;
  static constexpr bool kOffsets = false;
  template <class V>
  static void widen(const uint8_t* group, float scale, float, typename V::Reg* out) {
    V::widen_int8(reinterpret_cast<const int8_t*>(group), scale, out);
  }
};

// Group g of a row (codes: the row's bytes; scale and offset: its groups', offset nullptr for int8),
// widened to its values in w[0 .. kGroupSize / V::kWidth).
template <class V, class Codes>
inline void widen_group(const uint8_t* codes, const float* scale, const float* offset, int64_t g,
                        typename V::Reg* w) {
  Codes::template widen<V>(codes + g * kGroupBytes, scale[g], Codes::kOffsets ? offset[g] : 0.f, w);
}

// out[i] = the value of code i of a row of k_total elements (widen_group's arguments).
template <class V, class Codes, class T>
void widen_codes(const uint8_t* codes, const float* scale, const float* offset, T* out, int64_t k_total) {
  constexpr int kRegs = Codes::kGroupSize / V::kWidth;
  typename V::Reg w[kRegs];
  for (int64_t g = 0; g < k_total / Codes::kGroupSize; ++g) {
    widen_group<V, Codes>(codes, scale, offset, g, w);
    for (int i = 0; i < kRegs; ++i) V::store(out + g * Codes::kGroupSize + i * V::kWidth, w[i]);
  }
}

// The rows kAheadRows ahead of this one: rows of a few hundred bytes in two or three streams (codes,
// scales, offsets) are too short for the hardware prefetcher to reach memory's bandwidth alone.
inline void prefetch_ahead(const uint8_t* codes, const float* scale, const float* offset, int64_t stride,
                           int64_t groups) {
  for (int64_t byte = 0; byte < stride; byte += 64) __builtin_prefetch(codes + kAheadRows * stride + byte);
  for (int64_t g = 0; g < groups; g += 16) {
    __builtin_prefetch(scale + kAheadRows * groups + g);
    if (offset != nullptr) __builtin_prefetch(offset + kAheadRows * groups + g);
  }
}

template <class V, class Panel, class T, class Codes>
struct GroupedLinear {
  using Reg = typename V::Reg;
  static constexpr int64_t kDirectRows = 8;
  static constexpr int kRegs = Codes::kGroupSize / V::kWidth;  // a group's widened values

  static const uint8_t* codes(const LinearParams& p, int64_t n) {
    return static_cast<const uint8_t*>(p.weight) + n * p.weight_stride;
  }
  static int64_t groups(const LinearParams& p) { return p.in_features / Codes::kGroupSize; }
  static const float* offsets(const LinearParams& p, int64_t n) {
    return Codes::kOffsets ? p.weight_offset + n * groups(p) : nullptr;
  }

  // Input rows [m0, m0 + M) against weight row n.
  template <int M>
  static void tile(const LinearParams& p, int64_t m0, int64_t n) {
    const uint8_t* row = codes(p, n);
    const float* scale = p.weight_scale + n * groups(p);
    const float* offset = offsets(p, n);
    const T* x[M];
    for (int m = 0; m < M; ++m) x[m] = static_cast<const T*>(p.input) + (m0 + m) * p.input_stride;
    Reg acc[M];
    for (int m = 0; m < M; ++m) acc[m] = V::zero();
    prefetch_ahead(row, scale, offset, p.weight_stride, groups(p));
    Reg w[kRegs];
    for (int64_t g = 0; g < groups(p); ++g) {
      widen_group<V, Codes>(row, scale, offset, g, w);
      for (int i = 0; i < kRegs; ++i) {
        const int64_t k = g * Codes::kGroupSize + i * V::kWidth;
        for (int m = 0; m < M; ++m) acc[m] = V::fma(V::load(x[m] + k), w[i], acc[m]);
      }
    }
    for (int m = 0; m < M; ++m) store_sum<T>(p, m0 + m, n, V::reduce_add(acc[m]));
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
    widen_codes<V, Codes>(codes(p, n), p.weight_scale + n * groups(p), offsets(p, n), out, p.in_features);
  }

  // dequantize_weight_cpu's rows [n_begin, n_end).
  static void dequantize(const LinearParams& p, int64_t n_begin, int64_t n_end) {
    for (int64_t n = n_begin; n < n_end; ++n) widen_row(p, n, static_cast<T*>(p.out) + n * p.out_stride);
  }
};

}  // namespace
}  // namespace kvserve::cpu
