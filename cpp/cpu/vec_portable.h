// One float at a time, in plain C++: the attention kernel's operations for any CPU, and for any
// head_dim the vector paths do not cover. The compiler may still vectorize the loops around it.
#pragma once

#include <cmath>
#include <cstdint>

#include "half.h"

namespace kvserve::cpu {
namespace {  // each translation unit keeps its own copy, built with its own -m flags

struct Portable {
  using Reg = float;
  static constexpr int kWidth = 1;
  static constexpr int kMaxScoreRows = 1;
  static constexpr int kMaxOutRegs = 8;

  static Reg zero() { return 0.f; }
  static Reg set1(float x) { return x; }
  static Reg add(Reg a, Reg b) { return a + b; }
  static Reg sub(Reg a, Reg b) { return a - b; }
  static Reg mul(Reg a, Reg b) { return a * b; }
  static Reg div(Reg a, Reg b) { return a / b; }
  static Reg max(Reg a, Reg b) { return a > b ? a : b; }
  static Reg fma(Reg a, Reg b, Reg c) { return a * b + c; }
  static float reduce_add(Reg a) { return a; }
  static float reduce_max(Reg a) { return a; }
  static bool any_equal(Reg a, float x) { return a == x; }

  template <class T>
  static Reg load(const T* p) { return to_float(*p); }
  static Reg load_weight(const Float8E4M3* p) { return e4m3_weight(*p); }
  // A uint4 group's 32 weights (grouped_linear.h), code * scale + offset.
  static void widen_group(const uint8_t* p, float scale, float offset, Reg out[32]) {
    for (int j = 0; j < 16; ++j) {
      out[j] = static_cast<float>(p[j] & 15) * scale + offset;
      out[16 + j] = static_cast<float>(p[j] >> 4) * scale + offset;
    }
  }
  // An int8 group's 16 weights (grouped_linear.h), code * scale.
  static void widen_int8(const int8_t* p, float scale, Reg out[16]) {
    for (int j = 0; j < 16; ++j) out[j] = static_cast<float>(p[j]) * scale;
  }
  template <class T>
  static void store(T* p, Reg a) { from_float(a, p); }
  static Reg round_to_bf16(Reg a) {
    BFloat16 b;
    from_float(a, &b);
    return to_float(b);
  }
  static Reg round_to_fp16(Reg a) {
    Float16 h;
    from_float(a, &h);
    return to_float(h);
  }

  static Reg keep_lanes(Reg a, int lane0, int begin, int end) {
    return lane0 >= begin && lane0 < end ? a : -INFINITY;
  }
  static Reg min(Reg a, Reg b) { return a < b ? a : b; }
  static Reg round(Reg x) { return std::nearbyint(x); }
  static Reg scale2(Reg y, Reg n) { return std::ldexp(y, static_cast<int>(n)); }
  static Reg zero_below(Reg y, Reg x, float limit) { return x >= limit ? y : 0.f; }
  static Reg inf_above(Reg y, Reg x, float limit) { return x > limit ? INFINITY : y; }

  template <class T>
  static void pack_transposed(float* dst, const T* const keys[16], int64_t dim) {
    for (int c = 0; c < 16; ++c) {
      for (int64_t d = 0; d < dim; ++d) dst[d * 16 + c] = keys[c] ? to_float(keys[c][d]) : 0.f;
    }
  }
};

}  // namespace
}  // namespace kvserve::cpu
