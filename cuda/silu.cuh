// SiLU-and-mul of one element, as the silu_and_mul kernel and the few-rows linear's gated output
// (the gate_up projection with SiLU-and-mul fused in) both compute it: from gate and up as stored
// in the dtype, rounded as torch rounds F.silu(gate) * up, twice to the storage dtype.
#pragma once

#include "numeric.cuh"

namespace kvserve::gpu {

template <class T>
__device__ inline T silu_and_mul_value(T gate, T up) {
  const float x = to_float(gate);
  const float silu = to_float(from_float<T>(x / (1.f + expf(-x))));
  return from_float<T>(silu * to_float(up));
}

}  // namespace kvserve::gpu
