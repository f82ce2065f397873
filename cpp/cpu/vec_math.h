// Math over a vector type V (vec_portable.h, vec_avx2.h, vec_avx512.h), shared by the CPU kernels.
#pragma once

#include <initializer_list>
#include <type_traits>

#include "half.h"

namespace kvserve::cpu {
namespace {  // each translation unit keeps its own copy, built with its own -m flags

// e^x to ~2 ulp (Cephes' polynomial); below -87.3 (and -inf) exactly 0, so masked scores weigh 0;
// above ln(FLT_MAX) +inf, as a framework's exp, so that a sigmoid's far tail is exactly 0.
template <class V>
typename V::Reg vexp(typename V::Reg x) {
  using Reg = typename V::Reg;
  constexpr float kMaxLog = 88.72283935546875f;  // ln(FLT_MAX), rounded to float
  const Reg clamped = V::min(V::max(x, V::set1(-87.3f)), V::set1(kMaxLog));
  const Reg n = V::round(V::mul(clamped, V::set1(1.44269504088896341f)));
  Reg r = V::fma(n, V::set1(-0.693359375f), clamped);  // x - n ln 2, in two steps for precision
  r = V::fma(n, V::set1(2.12194440e-4f), r);
  Reg y = V::set1(1.9875691500e-4f);
  for (float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f}) {
    y = V::fma(y, r, V::set1(c));
  }
  y = V::fma(y, V::mul(r, r), V::add(r, V::set1(1.f)));
  return V::inf_above(V::zero_below(V::scale2(y, n), x, -87.3f), x, kMaxLog);
}

// x rounded to storage type T and back: the value a framework op would hand to the next op.
template <class V, class T>
typename V::Reg round_to(typename V::Reg x) {
  if constexpr (std::is_same_v<T, BFloat16>) {
    return V::round_to_bf16(x);
  } else if constexpr (std::is_same_v<T, Float16>) {
    return V::round_to_fp16(x);
  } else {
    return x;
  }
}

}  // namespace
}  // namespace kvserve::cpu
