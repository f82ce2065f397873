// The storage dtypes of the GPU kernels and their conversions to and from float32, the type every
// kernel computes in.
//
// bfloat16 is our own 16-bit struct on both platforms (HIP 5.2 has no usable bf16 intrinsics), with
// the rounding torch uses (to nearest even; NaN stays a quiet NaN), so that a kernel that rounds once
// where torch rounds once gives torch's bits. float16 is the platform's __half. The 8-bit floats
// (OCP FP8, dtype.h) are KV-cache elements only, rounded as the CPU kernels round them.
#pragma once

#include <initializer_list>
#include <type_traits>

#include "compat.cuh"
#include "fp8_code.h"
#include "kvserve/dtype.h"
#include "kvserve/status.h"

namespace kvserve::gpu {

struct BFloat16 {
  uint16_t bits;
};
struct Float8E4M3 {
  uint8_t bits;
};
struct Float8E5M2 {
  uint8_t bits;
};

__device__ inline __half half_from_bits(uint16_t bits) {
#if defined(KVSERVE_GPU_EMULATOR)
  return __half{bits};
#else
  return __ushort_as_half(bits);
#endif
}

__device__ inline uint16_t half_bits(__half x) {
#if defined(KVSERVE_GPU_EMULATOR)
  return x.bits;
#else
  return __half_as_ushort(x);
#endif
}

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__half x) { return __half2float(x); }
__device__ inline float to_float(BFloat16 x) { return __uint_as_float(static_cast<uint32_t>(x.bits) << 16); }
// Both fp8 formats by way of float16, which holds each of their values exactly (its subnormals too):
// e5m2 is a float16's upper byte; e4m3's bits below the sign, moved into a float16's exponent and
// mantissa, are its value / 2^8 (S.1111.111 is e4m3's NaN).
__device__ inline float to_float(Float8E5M2 x) {
  return __half2float(half_from_bits(static_cast<uint16_t>(x.bits << 8)));
}
__device__ inline float to_float(Float8E4M3 x) {
  const float magnitude = __half2float(half_from_bits(static_cast<uint16_t>((x.bits & 0x7f) << 7))) * 256.f;
  if ((x.bits & 0x7f) == 0x7f) return NAN;
  return x.bits & 0x80 ? -magnitude : magnitude;
}

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

// Two float16 pairs multiplied lane by lane (each product rounded to float16).
__device__ inline uint32_t mul_half_pairs(uint32_t a, uint32_t b) {
#if defined(KVSERVE_GPU_EMULATOR)
  auto lane = [a, b](int shift) {
    const float product = __half2float(half_from_bits(static_cast<uint16_t>(a >> shift))) *
                          __half2float(half_from_bits(static_cast<uint16_t>(b >> shift)));
    return static_cast<uint32_t>(half_bits(__float2half_rn(product))) << shift;
  };
  return lane(0) | lane(16);
#else
  __half2 x, y;
  memcpy(&x, &a, 4);
  memcpy(&y, &b, 4);
  const __half2 z = __hmul2(x, y);
  uint32_t product;
  memcpy(&product, &z, 4);
  return product;
#endif
}

// Elements 2j and 2j + 1 of four fp8 codes in a 32-bit word (element i in byte i) as a float16 pair,
// the lower element in the lower half, exactly. sm_89+ converts a pair in one instruction (as
// cuda_fp8.h's __nv_cvt_fp8x2_to_halfraw2 does). Elsewhere both codes go to their float16's upper
// bytes (one byte permutation), which makes e5m2 codes float16s. e4m3 codes, their bits below the sign
// moved one place down, are float16s of their values / 2^8 (as to_float says), subnormals too, which
// one pair multiply scales exactly; e4m3's NaN (S.1111.111) moves to 0x3f80 (1.875), which would scale
// to 480: its lane's bit 14 is set first, which makes it a float16 NaN.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890 && !defined(__HIPCC__) && !defined(KVSERVE_USE_HIP)
#define KVSERVE_FP8_PAIRS 1
#else
#define KVSERVE_FP8_PAIRS 0
#endif

template <class C>
__device__ inline uint32_t half_pair(uint32_t word, int j) {
  static_assert(std::is_same_v<C, Float8E4M3> || std::is_same_v<C, Float8E5M2>, "an fp8 format");
  constexpr bool kE4M3 = std::is_same_v<C, Float8E4M3>;
#if KVSERVE_FP8_PAIRS
  const auto codes = static_cast<uint16_t>(word >> (16 * j));
  uint32_t pair;
  if constexpr (kE4M3) {
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(pair) : "h"(codes));
  } else {
    asm("cvt.rn.f16x2.e5m2x2 %0, %1;\n" : "=r"(pair) : "h"(codes));
  }
  return pair;
#else
  const uint32_t upper = __byte_perm(word, 0, j == 0 ? 0x1404u : 0x3424u);  // 4: a zero byte
  if constexpr (kE4M3) {
    const uint32_t magnitudes = (upper >> 1) & 0x3f803f80u;
    const uint32_t nan_bits = (magnitudes + 0x00800080u) & 0x40004000u;  // 0x4000 where a code is NaN
    constexpr uint32_t kTwoToTheEight = 0x5c005c00u;                     // float16 256, twice
    return mul_half_pairs((upper & 0x80008000u) | magnitudes | nan_bits, kTwoToTheEight);
  } else {
    return upper;
  }
#endif
}

template <>
__device__ inline Float8E4M3 from_float<Float8E4M3>(float x) {
  return {fp8::e4m3_code(x)};
}

template <>
__device__ inline Float8E5M2 from_float<Float8E5M2>(float x) {
  return {fp8::e5m2_code(x)};
}

// A row's element as a cache of element type C holds it: itself, or rounded to the narrower C.
template <class C, class T>
__device__ inline C cache_element(T x) {
  if constexpr (std::is_same_v<C, T>) {
    return x;
  } else {
    return from_float<C>(to_float(x));
  }
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

// A pack of row elements stored into a cache of element type C (aligned to N * sizeof(C)): as it is,
// or each element rounded to the narrower C.
template <class C, class T, int N>
__device__ inline void store_cached(C* to, const Pack<T, N>& x) {
  if constexpr (std::is_same_v<C, T>) {
    *reinterpret_cast<Pack<T, N>*>(to) = x;
  } else {
    Pack<C, N> y;
#pragma unroll
    for (int k = 0; k < N; ++k) y.values[k] = cache_element<C>(x.values[k]);
    *reinterpret_cast<Pack<C, N>*>(to) = y;
  }
}

// Calls f(C{}) with C the storage type of a KV cache of `cache_dtype` under rows of storage type T:
// T itself, an fp8 type, or (float rows) a 16-bit float (kvserve::cache_dtype_serves); kUnsupported
// for any other pair.
template <class T, class F>
Status with_cache_type(DType cache_dtype, F&& f) {
  constexpr bool kFloatRows = std::is_same_v<T, float>;
  switch (cache_dtype) {
    case DType::kFloat8E4M3: return f(Float8E4M3{});
    case DType::kFloat8E5M2: return f(Float8E5M2{});
    case DType::kFloat32:
      if constexpr (kFloatRows) return f(float{});
      break;
    case DType::kFloat16:
      if constexpr (kFloatRows || std::is_same_v<T, __half>) return f(__half{});
      break;
    case DType::kBFloat16:
      if constexpr (kFloatRows || std::is_same_v<T, BFloat16>) return f(BFloat16{});
      break;
    default: break;
  }
  return Status::kUnsupported;
}

// Whether every pointer and every length (in elements of `elem_bytes`) is a whole number of
// `alignment` bytes. A null pointer counts as aligned.
inline bool all_aligned(int64_t alignment, std::initializer_list<const void*> pointers,
                        std::initializer_list<int64_t> lengths, int64_t elem_bytes) {
  for (const void* pointer : pointers) {
    if (reinterpret_cast<uintptr_t>(pointer) % static_cast<uintptr_t>(alignment) != 0) return false;
  }
  for (int64_t length : lengths) {
    if (length * elem_bytes % alignment != 0) return false;
  }
  return true;
}

// 16 bytes: then rows that start at those pointers and strides move in 16-byte packs (and suit
// cp.async and ldmatrix).
inline bool all_16_byte_aligned(std::initializer_list<const void*> pointers, std::initializer_list<int64_t> lengths,
                                int64_t elem_bytes) {
  return all_aligned(16, pointers, lengths, elem_bytes);
}

// kOk, or kDeviceError when the launch just made (or an earlier asynchronous call) failed.
inline Status launch_status() {
  return kvGpuGetLastError() == kvGpuSuccess ? Status::kOk : Status::kDeviceError;
}

}  // namespace kvserve::gpu
