// The CPU layer kernels other than attention (row-wise ops in rowwise.h, the few-rows linear in
// small_linear.h), as a table of functions that each ISA's translation unit fills in and
// layer_kernels.cpp picks from at run time (cpu_isa.h).
#pragma once

#include "rowwise.h"
#include "small_linear.h"
#include "grouped_linear.h"

namespace kvserve::cpu {

struct LayerKernels {
  void (*rms_norm)(const RmsNormParams&, int64_t row_begin, int64_t row_end);
  void (*silu_and_mul)(const SiluAndMulParams&, int64_t row_begin, int64_t row_end);
  void (*argmax)(const ArgmaxParams&, int64_t row_begin, int64_t row_end);
  void (*rotary_embedding)(const RotaryEmbeddingParams&, int64_t row_begin, int64_t row_end);
  void (*linear)(const LinearParams&, int64_t n_begin, int64_t n_end);  // output features
  void (*linear_e4m3)(const LinearParams&, int64_t n_begin, int64_t n_end);  // an e4m3 weight (weight_dtype)
  void (*dequantize_e4m3)(const LinearParams&, int64_t n_begin, int64_t n_end);  // its rows, widened
  void (*linear_uint4)(const LinearParams&, int64_t n_begin, int64_t n_end);  // a uint4 weight (weight_dtype)
  void (*dequantize_uint4)(const LinearParams&, int64_t n_begin, int64_t n_end);
  void (*linear_int8)(const LinearParams&, int64_t n_begin, int64_t n_end);  // an int8 weight (weight_dtype)
  void (*dequantize_int8)(const LinearParams&, int64_t n_begin, int64_t n_end);
};

LayerKernels layer_kernels_portable(DType dtype);
LayerKernels layer_kernels_avx2(DType dtype);
LayerKernels layer_kernels_avx512(DType dtype);
// The bfloat16 linear with vdpbf16ps (CPUs with AVX512-BF16).
void linear_avx512_bf16(const LinearParams&, int64_t n_begin, int64_t n_end);
// The same over an e4m3 weight (LinearParams::weight_dtype): up to 8 rows reading the codes, more
// linear_avx512_bf16_e4m3_rows (input rows in the vector lanes).
void linear_avx512_bf16_e4m3(const LinearParams&, int64_t n_begin, int64_t n_end);
void linear_avx512_bf16_e4m3_rows(const LinearParams&, int64_t n_begin, int64_t n_end);
// The same over a uint4 weight: up to 8 rows reading the codes as bfloat16 pairs, more
// linear_avx512_bf16_uint4_rows (input rows in the vector lanes).
void linear_avx512_bf16_uint4(const LinearParams&, int64_t n_begin, int64_t n_end);
void linear_avx512_bf16_uint4_rows(const LinearParams&, int64_t n_begin, int64_t n_end);
// The same over an int8 weight: up to 8 rows reading codes in [-64, 63] as bfloat16 pairs (others
// widened to float32), more linear_avx512_bf16_int8_rows.
void linear_avx512_bf16_int8(const LinearParams&, int64_t n_begin, int64_t n_end);
void linear_avx512_bf16_int8_rows(const LinearParams&, int64_t n_begin, int64_t n_end);
// The same over an interleaved weight (LinearParams::weight_interleaved), blocks of 4 output features.
void linear_avx512_bf16_interleaved(const LinearParams&, int64_t block_begin, int64_t block_end);

namespace {

template <class V, class T>
using E4m3LinearOf = E4m3Linear<V, SmallLinear<FmaDot<V, T>, T, Float8E4M3>, SmallLinear<FmaDot<V, T>, T>, T>;

template <class V, class T, class Codes>
using GroupedLinearOf = GroupedLinear<V, SmallLinear<FmaDot<V, T>, T>, T, Codes>;

template <class V, class T>
constexpr LayerKernels layer_kernels_of() {
  return {Rowwise<V, T>::rms_norm, Rowwise<V, T>::silu_and_mul, Rowwise<V, T>::argmax,
          Rowwise<V, T>::rotary_embedding, SmallLinear<FmaDot<V, T>, T>::cols, E4m3LinearOf<V, T>::cols,
          E4m3LinearOf<V, T>::dequantize, GroupedLinearOf<V, T, Uint4Codes>::cols,
          GroupedLinearOf<V, T, Uint4Codes>::dequantize, GroupedLinearOf<V, T, Int8Codes>::cols,
          GroupedLinearOf<V, T, Int8Codes>::dequantize};
}

template <class V>
LayerKernels layer_kernels_for(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return layer_kernels_of<V, float>();
    case DType::kBFloat16: return layer_kernels_of<V, BFloat16>();
    case DType::kFloat16: return layer_kernels_of<V, Float16>();
    default: return {};
  }
}

}  // namespace
}  // namespace kvserve::cpu
