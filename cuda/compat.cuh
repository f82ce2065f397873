// The thin portability layer between CUDA and HIP: kernels in cuda/ spell the CUDA names, and this
// header maps them to HIP when hipcc compiles them (KVSERVE_HIP). Only names the kernels use live here.
#pragma once

#if defined(__HIPCC__) || defined(KVSERVE_USE_HIP)
#include <hip/hip_runtime.h>
using kvGpuStream_t = hipStream_t;
using kvGpuError_t = hipError_t;
#define kvGpuSuccess hipSuccess
#define kvGpuMemcpyAsync hipMemcpyAsync
#define kvGpuMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#define kvGpuGetLastError hipGetLastError
#else
#include <cuda_runtime.h>
using kvGpuStream_t = cudaStream_t;
using kvGpuError_t = cudaError_t;
#define kvGpuSuccess cudaSuccess
#define kvGpuMemcpyAsync cudaMemcpyAsync
#define kvGpuMemcpyDeviceToDevice cudaMemcpyDeviceToDevice
#define kvGpuGetLastError cudaGetLastError
#endif
