// The thin portability layer between CUDA and HIP: kernels in cuda/ spell the CUDA names, and this
// header maps them to HIP when hipcc compiles them (KVSERVE_HIP). Only names the kernels use live here.
//
// KVSERVE_GPU_MMA is 1 where the warp-level tensor-core instructions (mma.sync, ldmatrix, cp.async)
// exist: CUDA. HIP builds compile the portable kernels only.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

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

// The grid of a kernel that gives each of `rows` rows (tokens, weight rows; at most 2^31 - 1) a column
// of blocks of `per_block` elements each, enough for a row of `width`, at most 65535 (gridDim.y's
// limit): a block strides over its row by gridDim.y * per_block.
inline dim3 row_chunks_grid(int64_t rows, int64_t width, int64_t per_block) {
  constexpr int64_t kMaxChunks = 65535;
  const int64_t chunks = min_i64(kMaxChunks, (width + per_block - 1) / per_block);
  return dim3(static_cast<unsigned>(rows), static_cast<unsigned>(chunks));
}

// Programmatic dependent launch (sm_90+). A kernel launched with it may be scheduled while the
// kernel before it in the stream still runs, so that its launch, and what it does before its call
// to wait_for_prior_grid(), overlap that kernel instead of following it. The call returns once the
// kernel before has finished and its writes are visible (at once without the launch attribute, or
// before sm_90), then lets the kernel after it launch: since its own predecessor is done by then,
// at most two kernels overlap, and everything before the kernel before has finished.
//
// So before the wait a kernel may only ask for memory into L2 (prefetch_l2: a hint, which cannot
// bring stale data, L2 being where every SM's view of memory meets) and read, through L2
// (load_through_l2, load_16_once<true>), memory that no kernel writes: the model's weights,
// and a step's metadata, which the host copies in before the step (a caller of the ops must not produce them in
// the kernel right before, however launched: its writes are only sure to be seen after the wait).
// Every other read, every write and atomic, and every exit come after it: a block that left before
// waiting could let the kernel after this one start before the kernel before has finished.
// bench/sass_loops.py checks the machine code.
__device__ inline void wait_for_prior_grid() {
#if defined(KVSERVE_GPU_EMULATOR)
  emulator::wait_for_prior_grid();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(__HIPCC__) && !defined(KVSERVE_USE_HIP)
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// A load from L2, past the SM's L1 (which is not coherent): of memory that no kernel writes, before
// the wait above, or of another block's writes (split partials). A type of 2, 4, 8 or 16 bytes.
template <class V>
__device__ inline V load_through_l2(const V* at) {
#if defined(__CUDA_ARCH__) && !defined(__HIPCC__) && !defined(KVSERVE_USE_HIP)
  static_assert(sizeof(V) == 2 || sizeof(V) == 4 || sizeof(V) == 8 || sizeof(V) == 16, "a 2- to 16-byte load");
  using Bits = std::conditional_t<
      sizeof(V) == 2, unsigned short,
      std::conditional_t<sizeof(V) == 4, unsigned, std::conditional_t<sizeof(V) == 8, uint2, uint4>>>;
  const Bits bits = __ldcg(reinterpret_cast<const Bits*>(at));
  V value;
  memcpy(&value, &bits, sizeof(V));
  return value;
#else
#if defined(KVSERVE_GPU_EMULATOR)
  emulator::note_load_through_l2(at, sizeof(V));
#endif
  return *at;
#endif
}

// A hint to bring the 128-byte line at `address` (global memory) into L2; no-op elsewhere.
__device__ inline void prefetch_l2(const void* address) {
#if defined(__CUDA_ARCH__) && !defined(__HIPCC__) && !defined(KVSERVE_USE_HIP)
  asm volatile("prefetch.global.L2 [%0];" ::"l"(address));
#else
  (void)address;
#endif
}

#if !defined(KVSERVE_GPU_EMULATOR) && !defined(__HIPCC__) && !defined(KVSERVE_USE_HIP)
// Whether to launch `kernel` with programmatic dependent launch on the current device: its code is
// built for sm_90 or later (so it waits in wait_for_prior_grid; code built for sm_80 would not,
// even on an H100), the device is sm_90 or later, and KVSERVE_PDL is not "0". device_resources.cu.
bool launch_programmatically(const void* kernel);
#endif

// kernel<<<grid, block, shared_bytes, stream>>>(args...), spelled as a function so that the
// emulator can run kernels too; with programmatic dependent launch where it applies.
template <class... Params, class... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, kvGpuStream_t stream,
                   const Args&... args) {
#if defined(KVSERVE_GPU_EMULATOR)
  emulator::launch(kernel, grid, block, shared_bytes, args...);
#elif defined(__HIPCC__) || defined(KVSERVE_USE_HIP)
  kernel<<<grid, block, shared_bytes, stream>>>(args...);
#else
  if (launch_programmatically(reinterpret_cast<const void*>(kernel))) {
    cudaLaunchAttribute attribute{};
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = shared_bytes;
    config.stream = stream;
    config.attrs = &attribute;
    config.numAttrs = 1;
    cudaLaunchKernelEx(&config, kernel, args...);
  } else {
    kernel<<<grid, block, shared_bytes, stream>>>(args...);
  }
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
