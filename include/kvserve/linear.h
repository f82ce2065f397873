// linear: out = input @ weight^T (+ bias) — the projections of a decoder layer.
//
//   input:  [num_rows, in_features]              rows may be strided, last dimension contiguous
//   weight: [out_features, in_features]          rows may be strided (PyTorch's nn.Linear layout)
//   bias:   [out_features] or nullptr
//   out:    [num_rows, out_features]             rows may be strided, not overlapping input
//
// Float32 accumulation, rounded once to the dtype (with the bias added before rounding). Register
// tiles of 4 input rows x 4 weight rows walk along in_features; input rows go in L2-sized tiles past
// every weight block, and the next weight block is prefetched, so few rows (decode) run at the
// weights' memory bandwidth and many rows at the FMA rate. Strides are in elements.
//
// With weight_dtype kFloat8E4M3 the weight holds e4m3 codes and a float32 scale per row, with
// kUInt4 4-bit codes with a float32 scale and offset per group of 32, with kInt8 8-bit codes with a
// float32 scale per group of 16 (below).
//
// On CUDA (linear_cuda), up to 8 rows of float16/bfloat16 (any number over quantized codes) on tensor cores
// (sm_80+), each block streaming 16 weight rows once for every input row: a decode step's projections at the weights'
// bandwidth, where a general GEMM tiles for many rows. Needs in_features in 16-byte packs and
// 16-byte aligned input and weight rows; kUnsupported otherwise (cuBLAS serves those). A quantized
// weight's codes are widened in registers, each value rounded to the dtype as dequantize_weight
// rounds it (e4m3: the code's value, exact; the row's scale multiplies the sum, as on the CPU):
// three eighths (uint4, with its scales) to five eighths (int8) of a 16-bit weight's bytes to stream.
// More rows over codes (a decode step of many sequences, a prefill) take a tiled kernel that widens
// each stage of codes in registers once for 64 rows (in_features a multiple of 32, input and code rows
// 16-byte aligned), with or without silu_and_mul_output: no 16-bit copy of the weight.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "kvserve/config.h"
#include "kvserve/dtype.h"
#include "kvserve/export.h"
#include "kvserve/status.h"

namespace kvserve {

struct LinearParams {
  void* out = nullptr;
  int64_t out_stride = 0;
  const void* input = nullptr;
  int64_t input_stride = 0;
  const void* weight = nullptr;
  int64_t weight_stride = 0;
  const void* bias = nullptr;
  int64_t num_rows = 0, in_features = 0, out_features = 0;
  DType dtype = DType::kFloat32;  // of every array
  // The weight stored as [out_features / 4][in_features / 32][4][32] (interleave_linear_weight):
  // each block of 4 rows read as one sequential stream, +5-20% bandwidth at one row. bfloat16 on
  // CPUs with AVX512-BF16 only (kUnsupported elsewhere); weight_stride is then ignored.
  bool weight_interleaved = false;
  // An MLP's gate_up projection with SiLU-and-mul fused in: the weight's rows are [gate; up]
  // (out_features of them, an even number) and out [num_rows, out_features / 2] receives
  // silu(gate) * up, rounded as the plain product and then silu_and_mul (layer_ops.h) round it.
  // linear_cuda only (linear_cpu: kUnsupported).
  bool silu_and_mul_output = false;
  // A quantized weight (nullopt: the weight is of `dtype`), plain (not interleaved). linear_cpu computes
  // the products in float32 throughout, rounded once; linear_cuda widens the codes to the dtype.
  //
  // kFloat8E4M3: 8-bit floats, row n standing for weight_scale[n] times its codes' values:
  // out = (input @ codes^T) * weight_scale (+ bias). Weight-only quantization of a decode step's
  // projections: half the bytes of a 16-bit weight to stream. The weight must not hold e4m3's NaN
  // code (the product is then unspecified).
  //
  // kUInt4: 4-bit codes in groups of kUInt4GroupSize along a row, each group standing for
  // code * weight_scale + weight_offset (its own two float32s; llama.cpp's Q4_0, Q4_1 and Q4_K
  // blocks, GPTQ's and AWQ's groups are all such groups): 0.75 bytes a weight with its scales, where
  // a 16-bit weight takes 2. The weight is bytes [out_features, in_features / 2], weight_stride
  // counting bytes; group g of a row is bytes 16g .. 16g + 15, byte j holding element 32g + j in its
  // low nibble and element 32g + 16 + j in its high one (the order of llama.cpp's Q4_0 blocks).
  // in_features must be a multiple of kUInt4GroupSize. Past 8 rows a float16 or bfloat16 product
  // first widens the weights to that dtype, each rounded to it (up to 8 rows, and in float32, each
  // weight's value is exact in float32).
  //
  // kInt8: 8-bit signed codes in groups of kInt8GroupSize along a row, each group standing for code *
  // weight_scale (one float32, the product rounded once to float32; llama.cpp's Q8_0 and Q6_K blocks
  // are such groups): 1.25 bytes a weight with its scales. The weight is int8 [out_features,
  // in_features], in_features a multiple of kInt8GroupSize; more rows widen as uint4's do.
  std::optional<DType> weight_dtype;
  // [out_features] (e4m3), [out_features, in_features / 32] (uint4), [out_features, in_features / 16] (int8)
  const float* weight_scale = nullptr;
  const float* weight_offset = nullptr;  // [out_features, in_features / 32], with kUInt4 only
};

// Elements of a kUInt4 weight's row that share a scale and an offset.
constexpr int64_t kUInt4GroupSize = 32;
// Elements of a kInt8 weight's row that share a scale.
constexpr int64_t kInt8GroupSize = 16;

// Whether linear_cpu takes an interleaved weight of this dtype and shape on this CPU.
KVSERVE_EXPORT bool linear_interleave_supported(DType dtype, int64_t out_features, int64_t in_features);

// kOk, or kInvalidArgument with the reason in `why` (when not null).
KVSERVE_EXPORT Status check_linear(const LinearParams& params, std::string* why);

KVSERVE_EXPORT Status linear_cpu(const LinearParams& params);

// dequantize_weight_cpu (and on CUDA, dequantize_weight_cuda): the weight a quantized one stands for, out [out_features, in_features] of
// dtype (rows out_stride apart) = each code's value times its row's weight_scale (e4m3), each code
// times its group's scale plus its offset (uint4, one rounding in float32), or each code times its
// group's scale (int8, one rounding in float32), rounded to dtype: for
// products of many rows, which a GEMM library computes faster than linear_cpu's panels. Reads out,
// out_stride, weight, weight_stride, weight_scale, weight_offset, in_features, out_features, dtype and
// weight_dtype; not input or num_rows.
KVSERVE_EXPORT Status check_dequantize_weight(const LinearParams& params, std::string* why);
KVSERVE_EXPORT Status dequantize_weight_cpu(const LinearParams& params);
#if KVSERVE_HAS_CUDA
// `stream` is a cudaStream_t (null: the default stream).
KVSERVE_EXPORT Status dequantize_weight_cuda(const LinearParams& params, void* stream);
#endif

// Rows of input that linear_cuda takes at most over a 16-bit weight, and that its few-rows kernel
// takes over quantized codes (which each block widens once for all of its rows, 8 a group); more
// rows over codes take the tiled kernel (linear_rotary_and_cache_cuda: kUnsupported).
constexpr int64_t kLinearCudaMaxRows = 8;
constexpr int64_t kLinearCudaMaxCodeRows = 32;

// Rows linear_cuda's few-rows kernel takes at most over this weight (and so the fusions that only it
// has: silu_and_mul_output past them takes the tiled kernel, linear_rotary_and_cache_cuda nothing).
inline int64_t linear_cuda_few_rows_max(const LinearParams& params) {
  return params.weight_dtype ? kLinearCudaMaxCodeRows : kLinearCudaMaxRows;
}

// Whether linear_cuda takes these params, as far as the host can tell without the device (which must
// also be sm_80 or later): float16/bfloat16, a weight not interleaved, the input's row stride in
// 16-byte packs and a 16-byte aligned input; then 1 to kLinearCudaMaxRows rows over a 16-bit weight
// or 1 to kLinearCudaMaxCodeRows over codes, in_features in 16-byte packs, and weight rows that
// start 16 bytes apart (of the dtype), 8 (e4m3 or int8 codes) or 4 (uint4 codes); or more rows over
// codes, in_features a multiple of 32 and code rows that start 16 bytes apart.
KVSERVE_EXPORT bool linear_cuda_takes(const LinearParams& params);

#if KVSERVE_HAS_CUDA
// `stream` is a cudaStream_t (null: the default stream).
KVSERVE_EXPORT Status linear_cuda(const LinearParams& params, void* stream);
#endif

}  // namespace kvserve
