// linear_tiles_cuda (linear_tiles.cu): the product over quantized codes for more rows than the
// few-rows kernel takes (kLinearCudaMaxCodeRows); linear_cuda calls it.
#pragma once

#include "compat.cuh"
#include "kvserve/linear.h"

#if KVSERVE_GPU_MMA

namespace kvserve::gpu {

// p as linear_cuda_takes has found it (more than kLinearCudaMaxCodeRows rows of a 16-bit dtype over
// uint4, int8 or e4m3 codes), plain or with silu_and_mul_output; kUnsupported before sm_80.
Status linear_tiles_cuda(const LinearParams& p, kvGpuStream_t stream);

}  // namespace kvserve::gpu

#endif  // KVSERVE_GPU_MMA
