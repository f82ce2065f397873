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
#if defined(KVSERVE_GPU_EMULATOR)
// tests/cpp/gpu_emulator: the CUDA runtime and warp instructions these kernels use, on the CPU, so
// that the kernels compiled as host C++ run in CI, which has no GPU.
#include "gpu_emulator.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif
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

// Lane `src`'s value, in every lane.
__device__ inline float shfl(float value, int src) {
#if defined(__HIPCC__) || defined(KVSERVE_USE_HIP)
  return __shfl(value, src, kWarpSize);
#else
  return __shfl_sync(0xffffffffu, value, src);
#endif
}

__host__ __device__ inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ inline int64_t max_i64(int64_t a, int64_t b) { return a > b ? a : b; }

// kernel<<<grid, block, shared_bytes, stream>>>(args...), spelled as a function so that the
// emulator can run kernels too.
template <class... Params, class... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, kvGpuStream_t stream,
                   const Args&... args) {
#if defined(KVSERVE_GPU_EMULATOR)
  emulator::launch(kernel, grid, block, shared_bytes, args...);
#else
  kernel<<<grid, block, shared_bytes, stream>>>(args...);
#endif
}

// The thread block's dynamic shared memory (its size given at launch), 16-byte aligned.
__device__ inline unsigned char* dynamic_shared_memory() {
#if defined(KVSERVE_GPU_EMULATOR)
  return emulator::dynamic_shared_memory();
#else
  extern __shared__ __align__(16) unsigned char kvserve_dynamic_shared[];
  return kvserve_dynamic_shared;
#endif
}

// Sum over the 32 lanes, the result in every lane.
__device__ inline float warp_sum(float value) {
  for (int mask = kWarpSize / 2; mask > 0; mask /= 2) value += shfl_xor(value, mask);
  return value;
}

}  // namespace kvserve::gpu
