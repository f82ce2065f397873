// The thin portability layer between CUDA and HIP: kernels in cuda/ spell the CUDA names, and this
// header maps them to HIP when hipcc compiles them (KVSERVE_HIP). Only names the kernels use live here.
//
// KVSERVE_GPU_MMA is 1 where the warp-level tensor-core instructions (mma.sync, ldmatrix, cp.async)
// exist: CUDA. HIP builds compile the portable kernels only.
#pragma once

#include <cstdint>

#if defined(__HIPCC__) || defined(KVSERVE_USE_HIP)
#include <hip/hip_fp16.h>
#include <hip/hip_runtime.h>
#define KVSERVE_GPU_MMA 0
using kvGpuStream_t = hipStream_t;
using kvGpuError_t = hipError_t;
#define kvGpuSuccess hipSuccess
#define kvGpuMemcpyAsync hipMemcpyAsync
#define kvGpuMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#define kvGpuGetLastError hipGetLastError
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define KVSERVE_GPU_MMA 1
using kvGpuStream_t = cudaStream_t;
using kvGpuError_t = cudaError_t;
#define kvGpuSuccess cudaSuccess
#define kvGpuMemcpyAsync cudaMemcpyAsync
#define kvGpuMemcpyDeviceToDevice cudaMemcpyDeviceToDevice
#define kvGpuGetLastError cudaGetLastError
#endif

namespace kvserve::gpu {

// A warp as the kernels see it: 32 lanes. On AMD's 64-wide wavefronts each half works as one warp
// (every shuffle below stays within its 32 lanes).
constexpr int kWarpSize = 32;

__device__ inline float shfl_xor(float value, int lane_mask) {
#if defined(__HIPCC__) || defined(KVSERVE_USE_HIP)
  return __shfl_xor(value, lane_mask, kWarpSize);
#else
  return __shfl_xor_sync(0xffffffffu, value, lane_mask);
#endif
}

__host__ __device__ inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ inline int64_t max_i64(int64_t a, int64_t b) { return a > b ? a : b; }

// Sum over the 32 lanes, the result in every lane.
__device__ inline float warp_sum(float value) {
  for (int mask = kWarpSize / 2; mask > 0; mask /= 2) value += shfl_xor(value, mask);
  return value;
}

}  // namespace kvserve::gpu
