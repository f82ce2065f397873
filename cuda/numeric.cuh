// The storage dtypes of the GPU kernels and their conversions to and from float32, the type every
// kernel computes in.
//
// bfloat16 is our own 16-bit struct on both platforms (HIP 5.2 has no usable bf16 intrinsics), with
// the rounding torch uses (to nearest even; NaN stays a quiet NaN), so that a kernel that rounds once
// where torch rounds once gives torch's bits. float16 is the platform's __half.
#pragma once

#include <initializer_list>

#include "compat.cuh"
#include "kvserve/dtype.h"
#include "kvserve/status.h"

namespace kvserve::gpu {

struct BFloat16 {
  uint16_t bits;
};

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__half x) { return __half2float(x); }
__device__ inline float to_float(BFloat16 x) { return __uint_as_float(static_cast<uint32_t>(x.bits) << 16); }

template <class T>
__device__ T from_float(float x);

template <>
__device__ inline float from_float<float>(float x) {
  return x;
}

template <>
__device__ inline __half from_float<__half>(float x) {
  return __float2half_rn(x);
}

// On sm_80+ one conversion instruction (a NaN becomes the canonical quiet NaN); elsewhere the same
// rounding in integer steps.
template <>
__device__ inline BFloat16 from_float<BFloat16>(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && !defined(__HIPCC__) && !defined(KVSERVE_USE_HIP)
  uint16_t bits;
  asm("cvt.rn.bf16.f32 %0, %1;\n" : "=h"(bits) : "f"(x));
  return {bits};
#else
  uint32_t u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x0040u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return {static_cast<uint16_t>(u >> 16)};
#endif
}

// a * b rounded to T and back to float: a product that the framework op being matched stores in T
// before using it (never fused into a following add: __fmul_rn is not contracted).
template <class T>
__device__ inline float product_in(float a, float b) {
  return to_float(from_float<T>(__fmul_rn(a, b)));
}

// N consecutive elements moved as one load or store of N * sizeof(T) bytes (aligned to that size).
template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T values[N];
};

// Calls f(T{}) with T the storage type of `dtype` (float, __half or BFloat16); kUnsupported for
// any other dtype.
template <class F>
Status with_float_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(BFloat16{});
    default: return Status::kUnsupported;
  }
}

// Whether every pointer and every length (in elements of `elem_bytes`) is a whole number of 16 bytes:
// then rows that start at those pointers and strides move in 16-byte packs (and suit cp.async and
// ldmatrix). A null pointer counts as aligned.
inline bool all_16_byte_aligned(std::initializer_list<const void*> pointers, std::initializer_list<int64_t> lengths,
                                int64_t elem_bytes) {
  for (const void* pointer : pointers) {
    if (reinterpret_cast<uintptr_t>(pointer) % 16 != 0) return false;
  }
  for (int64_t length : lengths) {
    if (length * elem_bytes % 16 != 0) return false;
  }
  return true;
}

// kOk, or kDeviceError when the launch just made (or an earlier asynchronous call) failed.
inline Status launch_status() {
  return kvGpuGetLastError() == kvGpuSuccess ? Status::kOk : Status::kDeviceError;
}

}  // namespace kvserve::gpu
