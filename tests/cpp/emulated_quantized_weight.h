// Quantized weights for the emulated tests of the CUDA products over codes (linear.cu's few-rows
// kernel, linear_tiles.cu's tiled one): random codes of each kind in linear.h's layouts, each code's
// value as the kernels compute it, and a product checked against a float64 reference.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "emulated_buffers.h"
#include "emulated_layer_steps.h"
#include "kvserve/layer_ops.h"
#include "kvserve/linear.h"

namespace emulated_test {

inline const DType kKinds[] = {DType::kUInt4, DType::kInt8, DType::kFloat8E4M3};

inline std::string kind_name(DType kind) {
  return kind == DType::kUInt4 ? "uint4" : kind == DType::kInt8 ? "int8" : "e4m3";
}

// A random quantized weight [rows, columns] of one kind (linear.h's layouts), its rows `pad` bytes
// apart beyond their codes: uint4 codes with scales and offsets a group of 32, int8 codes with
// scales a group of 16, e4m3 codes (never NaN) with a scale a row.
struct QuantizedWeight {
  DType kind;
  int64_t rows, columns, stride;  // stride in bytes
  std::vector<uint32_t> words;   // the codes' bytes, 16-byte aligned
  std::vector<float> scale, offset;

  QuantizedWeight(DType k, int64_t n, int64_t c, int64_t pad, std::mt19937& rng)
      : kind(k), rows(n), columns(c), stride((k == DType::kUInt4 ? c / 2 : c) + pad),
        words(static_cast<size_t>((n * stride + 15) / 4)) {
    std::uniform_int_distribution<int> byte(0, 255);
    for (int64_t i = 0; i < n * stride; ++i) {
      int b = byte(rng);
      if (kind == DType::kFloat8E4M3 && (b & 0x7f) == 0x7f) b ^= 1;  // e4m3's NaN
      bytes()[i] = static_cast<uint8_t>(b);
    }
    const int64_t groups = kind == DType::kUInt4 ? c / kvserve::kUInt4GroupSize
                           : kind == DType::kInt8 ? c / kvserve::kInt8GroupSize
                                                  : 1;
    std::uniform_real_distribution<float> scales(0.005f, 0.05f), offsets(-0.4f, 0.4f);
    for (int64_t i = 0; i < n * groups; ++i) scale.push_back(scales(rng));
    if (kind == DType::kUInt4) {
      for (int64_t i = 0; i < n * groups; ++i) offset.push_back(offsets(rng));
    }
  }
  uint8_t* bytes() { return reinterpret_cast<uint8_t*>(words.data()); }
  const uint8_t* bytes() const { return reinterpret_cast<const uint8_t*>(words.data()); }

  // Code (n, k)'s value as the kernels compute it in float32 (e4m3: before the row's scale).
  float value(int64_t n, int64_t k) const {
    const uint8_t* row = bytes() + n * stride;
    if (kind == DType::kUInt4) {
      const uint8_t byte = row[k / 32 * 16 + k % 16];
      const int64_t g = n * (columns / 32) + k / 32;
      return std::fma(static_cast<float>(k % 32 < 16 ? byte & 15 : byte >> 4), scale[g], offset[g]);
    }
    if (kind == DType::kInt8) {
      return static_cast<float>(static_cast<int8_t>(row[k])) * scale[n * (columns / 16) + k / 16];
    }
    return to_float(Float8E4M3{row[k]});
  }
  float row_scale(int64_t n) const { return kind == DType::kFloat8E4M3 ? scale[n] : 1.f; }

  void attach(kvserve::LinearParams& p) const {
    p.weight = words.data();
    p.weight_stride = stride;
    p.weight_dtype = kind;
    p.weight_scale = scale.data();
    p.weight_offset = offset.empty() ? nullptr : offset.data();
  }
  std::vector<Region> regions() const {
    std::vector<Region> r = {{words.data(), words.size() * 4}, {scale.data(), scale.size() * 4}};
    if (!offset.empty()) r.push_back({offset.data(), offset.size() * 4});
    return r;
  }
};

// The kernels round each code's value to the dtype (the e4m3 ones are exact), then sum in float32:
// the float64 reference's output and the kernel's may round to neighbours, one unit apart, and
// float32's sums are off by a few of its units of the terms' magnitudes (where they cancel).
inline double ulp(DType dtype) { return dtype == DType::kFloat16 ? 1.0 / 1024 : 1.0 / 128; }

// y [rows, out_stride] against x [rows, input_stride] @ w^T (+ bias), each code's value rounded to y's
// dtype, summed in float64; nothing written past w's rows (y NaN there).
inline void expect_product(const Buffer& y, int64_t out_stride, const Buffer& x, int64_t input_stride,
                           const QuantizedWeight& w, const Buffer* bias, int64_t rows, const std::string& what) {
  Buffer scratch(y.dtype, 1);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t n = 0; n < w.rows; ++n) {
      double sum = 0, magnitude = 0;
      for (int64_t k = 0; k < w.columns; ++k) {
        const double term = x.get(static_cast<size_t>(r * input_stride + k)) * scratch.rounded(w.value(n, k));
        sum += term;
        magnitude += std::abs(term);
      }
      sum *= w.row_scale(n);
      magnitude *= w.row_scale(n);
      if (bias != nullptr) sum += bias->get(static_cast<size_t>(n));
      const double expected = scratch.rounded(static_cast<float>(sum));
      const double got = y.get(static_cast<size_t>(r * out_stride + n));
      ASSERT_NEAR(got, expected, ulp(y.dtype) * std::abs(expected) + 1e-6 * magnitude)
          << what << " row " << r << " feature " << n;
    }
    for (int64_t n = w.rows; n < out_stride; ++n) {  // nothing written between the rows
      ASSERT_TRUE(std::isnan(y.get(static_cast<size_t>(r * out_stride + n)))) << what;
    }
  }
}

// A product over random codes to run: input rows (in + 8 apart) and a bias, random; an output of
// NaN (rows out_features + 3 apart); the params over them (the bias in them or not).
struct CodesProduct {
  int64_t rows, input_stride, out_stride;
  QuantizedWeight w;
  Buffer x, b, y;
  bool with_bias;
  kvserve::LinearParams p;

  CodesProduct(DType kind, DType dtype, int64_t rows_, int64_t in, int64_t out_features, int64_t pad, bool bias,
               std::mt19937& rng)
      : rows(rows_), input_stride(in + 8), out_stride(out_features + 3), w(kind, out_features, in, pad, rng),
        x(random_buffer(dtype, static_cast<size_t>(rows * input_stride), rng)),
        b(random_buffer(dtype, static_cast<size_t>(out_features), rng)),
        y(nan_buffer(dtype, static_cast<size_t>(rows * out_stride))), with_bias(bias),
        p(linear_params(y, out_stride, x, input_stride, x, bias ? b.data() : nullptr, rows, in, out_features, dtype)) {
    w.attach(p);
  }
  CodesProduct(const CodesProduct&) = delete;  // p points into the buffers
  CodesProduct& operator=(const CodesProduct&) = delete;

  void expect_correct(const std::string& what) const {
    expect_product(y, out_stride, x, input_stride, w, with_bias ? &b : nullptr, rows, what);
  }

  // linear_cuda over these params, taken and run; before the wait for the kernel before it reads
  // codes and scales only (which no kernel writes); its output against the float64 reference.
  void run_and_expect_correct(const std::string& what) {
    ASSERT_TRUE(kvserve::linear_cuda_takes(p)) << what;
    ASSERT_EQ(kvserve::linear_cuda(p, nullptr), kvserve::Status::kOk) << what;
    const EarlyLoads early = loads_before_wait(w.regions());
    EXPECT_GT(early.all, 0u) << what;
    EXPECT_EQ(early.outside, 0u) << what;
    expect_correct(what);
  }
};

// A [gate; up] projection (2 * size rows over `hidden` columns of random `kind` codes `pad` bytes apart,
// a random bias) over x's rows: its product against the float64 reference, and the product with
// silu_and_mul_output, bit for bit the product then silu_and_mul_cuda.
inline void expect_silu_and_mul_fused(DType kind, Buffer& x, int64_t rows, int64_t hidden, int64_t size, int64_t pad,
                                      std::mt19937& rng, const std::string& what) {
  const DType dtype = x.dtype;
  Buffer b = random_buffer(dtype, static_cast<size_t>(2 * size), rng);
  const QuantizedWeight w(kind, 2 * size, hidden, pad, rng);
  Buffer gate_up = nan_buffer(dtype, static_cast<size_t>(rows * 2 * size));
  Buffer unfused = nan_buffer(dtype, static_cast<size_t>(rows * size)), fused = unfused;
  kvserve::LinearParams p = linear_params(gate_up, 2 * size, x, hidden, x, b.data(), rows, hidden, 2 * size, dtype);
  w.attach(p);
  ASSERT_EQ(kvserve::linear_cuda(p, nullptr), kvserve::Status::kOk) << what;
  expect_product(gate_up, 2 * size, x, hidden, w, &b, rows, what);
  ASSERT_EQ(kvserve::silu_and_mul_cuda(silu_and_mul_params(gate_up, unfused, dtype, rows, size), nullptr),
            kvserve::Status::kOk);
  p.out = fused.data();
  p.out_stride = size;
  p.silu_and_mul_output = true;
  ASSERT_TRUE(kvserve::linear_cuda_takes(p)) << what;
  ASSERT_EQ(kvserve::linear_cuda(p, nullptr), kvserve::Status::kOk) << what;
  EXPECT_EQ(fused.words, unfused.words) << what;
  EXPECT_FALSE(std::isnan(fused.get(0))) << what;
  EXPECT_FALSE(std::isnan(fused.get(static_cast<size_t>(rows * size - 1)))) << what;
}

// A product's name in a failure's message.
inline std::string product_name(DType kind, DType dtype, int64_t rows, int64_t in, bool with_bias) {
  return kind_name(kind) + " " + name(dtype) + " rows " + std::to_string(rows) + " in " + std::to_string(in) +
         (with_bias ? " bias" : "");
}

}  // namespace emulated_test
