// Row-wise layer kernels (RMSNorm, SiLU-and-mul, argmax, rotary embedding) written once over a
// vector type V. One call handles rows [row_begin, row_end).
#pragma once

#include <cmath>
#include <cstdint>

#include "half.h"
#include "kvserve/argmax.h"
#include "kvserve/layer_ops.h"
#include "vec_math.h"

namespace kvserve::cpu {

namespace {

// Columns [0, n) in steps of V::kWidth, then the tail one column at a time with the portable
// conversions: rows need not be a multiple of the vector width.
template <class V, class T>
struct Rowwise {
  using Reg = typename V::Reg;

  // Rows are (token, head) pairs: row r is token r / num_heads, head r % num_heads.
  static void rms_norm(const RmsNormParams& p, int64_t row_begin, int64_t row_end) {
    const int64_t n = p.hidden, body = n - n % V::kWidth;
    const auto* weight = static_cast<const T*>(p.weight);
    for (int64_t r = row_begin; r < row_end; ++r) {
      const int64_t t = r / p.num_heads, h = r % p.num_heads;
      const T* in = static_cast<const T*>(p.input) + t * p.input_stride_token + h * p.input_stride_head;
      T* out = static_cast<T*>(p.out) + t * p.out_stride_token + h * p.out_stride_head;
      // x: the row being normalized; with a residual, the rounded sum written back into it.
      const T* x = in;
      if (p.residual != nullptr) {
        T* res = static_cast<T*>(p.residual) + t * p.residual_stride_token;
        for (int64_t i = 0; i < body; i += V::kWidth) V::store(res + i, V::add(V::load(in + i), V::load(res + i)));
        for (int64_t i = body; i < n; ++i) from_float(to_float(in[i]) + to_float(res[i]), res + i);
        x = res;
      }
      Reg squares = V::zero();
      for (int64_t i = 0; i < body; i += V::kWidth) {
        const Reg v = V::load(x + i);
        squares = V::fma(v, v, squares);
      }
      float sum = V::reduce_add(squares);
      for (int64_t i = body; i < n; ++i) sum += to_float(x[i]) * to_float(x[i]);
      const float inv_rms = 1.f / std::sqrt(sum / static_cast<float>(n) + p.eps);
      const Reg scale = V::set1(inv_rms);
      for (int64_t i = 0; i < body; i += V::kWidth) {
        const Reg normed = round_to<V, T>(V::mul(V::load(x + i), scale));
        V::store(out + i, V::mul(normed, V::load(weight + i)));
      }
      for (int64_t i = body; i < n; ++i) {
        T normed;
        from_float(to_float(x[i]) * inv_rms, &normed);
        from_float(to_float(normed) * to_float(weight[i]), out + i);
      }
    }
  }

  static void silu_and_mul(const SiluAndMulParams& p, int64_t row_begin, int64_t row_end) {
    const int64_t n = p.size, body = n - n % V::kWidth;
    for (int64_t t = row_begin; t < row_end; ++t) {
      const T* gate = static_cast<const T*>(p.input) + t * p.input_stride_token;
      const T* up = gate + n;
      T* out = static_cast<T*>(p.out) + t * p.out_stride_token;
      for (int64_t i = 0; i < body; i += V::kWidth) {
        const Reg g = V::load(gate + i);
        const Reg silu = V::div(g, V::add(V::set1(1.f), vexp<V>(V::sub(V::zero(), g))));
        V::store(out + i, V::mul(round_to<V, T>(silu), V::load(up + i)));
      }
      for (int64_t i = body; i < n; ++i) {
        const float g = to_float(gate[i]);
        T silu;
        from_float(g / (1.f + std::exp(-g)), &silu);
        from_float(to_float(silu) * to_float(up[i]), out + i);
      }
    }
  }

  // Rows are tokens: every query and key head of the token turns by the token's cos/sin.
  static void rotary_embedding(const RotaryEmbeddingParams& p, int64_t row_begin, int64_t row_end) {
    const int64_t half = p.head_dim / 2, body = half - half % V::kWidth;
    for (int64_t t = row_begin; t < row_end; ++t) {
      const T* cos = static_cast<const T*>(p.cos) + t * p.cos_sin_stride_token;
      const T* sin = static_cast<const T*>(p.sin) + t * p.cos_sin_stride_token;
      for (int which = 0; which < 2; ++which) {
        T* base = static_cast<T*>(which == 0 ? p.query : p.key);
        const int64_t heads = which == 0 ? p.num_heads : p.num_kv_heads;
        const int64_t stride_token = which == 0 ? p.query_stride_token : p.key_stride_token;
        const int64_t stride_head = which == 0 ? p.query_stride_head : p.key_stride_head;
        for (int64_t h = 0; h < heads; ++h) {
          T* x1 = base + t * stride_token + h * stride_head;
          T* x2 = x1 + half;
          for (int64_t i = 0; i < body; i += V::kWidth) {
            const Reg a = V::load(x1 + i), b = V::load(x2 + i), c = V::load(cos + i), s = V::load(sin + i);
            V::store(x1 + i, V::sub(round_to<V, T>(V::mul(a, c)), round_to<V, T>(V::mul(b, s))));
            V::store(x2 + i, V::add(round_to<V, T>(V::mul(b, c)), round_to<V, T>(V::mul(a, s))));
          }
          for (int64_t i = body; i < half; ++i) {
            const float a = to_float(x1[i]), b = to_float(x2[i]), c = to_float(cos[i]), s = to_float(sin[i]);
            T ac, bs, bc, as;
            from_float(a * c, &ac);
            from_float(b * s, &bs);
            from_float(b * c, &bc);
            from_float(a * s, &as);
            from_float(to_float(ac) - to_float(bs), x1 + i);
            from_float(to_float(bc) + to_float(as), x2 + i);
          }
        }
      }
    }
  }

  // Two passes over the row (it stays in cache): the maximum, then the first chunk holding it.
  static void argmax(const ArgmaxParams& p, int64_t row_begin, int64_t row_end) {
    const int64_t n = p.num_cols, body = n - n % V::kWidth;
    const float lowest = -__builtin_inff();
    for (int64_t t = row_begin; t < row_end; ++t) {
      const T* row = static_cast<const T*>(p.input) + t * p.input_stride;
      Reg best = V::set1(lowest);
      // max(x, best) keeps `best` where x is NaN: NaN entries never win.
      for (int64_t i = 0; i < body; i += V::kWidth) best = V::max(V::load(row + i), best);
      float max = V::reduce_max(best);
      for (int64_t i = body; i < n; ++i) max = to_float(row[i]) > max ? to_float(row[i]) : max;
      int64_t found = 0;
      int64_t i = 0;
      for (; i < body; i += V::kWidth) {
        if (V::any_equal(V::load(row + i), max)) break;
      }
      for (; i < n; ++i) {
        if (to_float(row[i]) == max) {
          found = i;
          break;
        }
      }
      p.out[t] = static_cast<int32_t>(found);
    }
  }
};

}  // namespace
}  // namespace kvserve::cpu
