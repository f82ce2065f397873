// rms_norm: RMSNorm of each row, optionally with the residual add of the next block fused in.
//
//   input, out: [num_tokens, hidden]   rows may be strided; out may alias input
//   residual:   [num_tokens, hidden]   optional (nullptr: a plain norm)
//   weight:     [hidden]
//
// Rounded the way the reference checkpoints compute it in their own dtype (Hugging Face's Llama):
//   with residual:  residual <- dtype(input + residual), then x = residual;  else x = input
//   out = dtype(dtype(x * rsqrt(mean(x^2) + eps)) * weight)          (math in float32)
// Strides are in elements.
#pragma once

#include <cstdint>

#include "kvserve/dtype.h"
#include "kvserve/export.h"
#include "kvserve/status.h"

namespace kvserve {

struct RmsNormParams {
  void* out = nullptr;
  int64_t out_stride = 0;
  const void* input = nullptr;
  int64_t input_stride = 0;
  void* residual = nullptr;
  int64_t residual_stride = 0;
  const void* weight = nullptr;
  int64_t num_tokens = 0, hidden = 0;
  float eps = 1e-6f;
  DType dtype = DType::kFloat32;  // of input, out, residual and weight
};

KVSERVE_EXPORT Status rms_norm_cpu(const RmsNormParams& params);

}  // namespace kvserve
