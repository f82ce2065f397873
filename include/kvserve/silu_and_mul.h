// silu_and_mul: the gated activation of a fused [gate; up] projection.
//
//   input: [num_tokens, 2 * dim]   gate in columns [0, dim), up in [dim, 2 * dim); rows may be strided
//   out:   [num_tokens, dim]       rows may be strided
//
//   out = dtype(dtype(silu(gate)) * up),  silu(x) = x / (1 + e^-x)      (math in float32)
// rounded as the two framework ops it replaces would round. Strides are in elements.
#pragma once

#include <cstdint>

#include "kvserve/dtype.h"
#include "kvserve/export.h"
#include "kvserve/status.h"

namespace kvserve {

struct SiluAndMulParams {
  void* out = nullptr;
  int64_t out_stride = 0;
  const void* input = nullptr;
  int64_t input_stride = 0;
  int64_t num_tokens = 0, dim = 0;
  DType dtype = DType::kFloat32;
};

KVSERVE_EXPORT Status silu_and_mul_cpu(const SiluAndMulParams& params);

}  // namespace kvserve
