// linear: out = input @ weight^T (+ bias) for a few input rows — the decode-time projections.
//
//   input:  [num_rows, in_features]              rows may be strided, last dimension contiguous
//   weight: [out_features, in_features]          rows may be strided (PyTorch's nn.Linear layout)
//   bias:   [out_features] or nullptr
//   out:    [num_rows, out_features]             rows may be strided
//
// Float32 accumulation, rounded once to the dtype (with the bias added before rounding). Made for
// few rows, where a general GEMM spends its time packing and dispatching: each weight row is read
// once from memory and used for every input row while it is in cache, so the call runs at the
// memory bandwidth of the weights. Strides are in elements.
#pragma once

#include <cstdint>

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
};

KVSERVE_EXPORT Status linear_cpu(const LinearParams& params);

}  // namespace kvserve
