// How linear_kernel (linear.cu) reads its weight: the 8 columns that lane t of a warp takes of one
// weight row in one chunk of 32 columns, as 8 elements of the product's dtype T packed in pairs in
// the order the mma takes them, and the input's same 8 columns in the same order.
//
//   PlainWeight<T>   elements of T: 16 bytes, columns 8t .. 8t + 7, as they are.
//   Uint4Weight<T>   uint4 codes (linear.h; a chunk is one group, byte j holding columns j and
//                    16 + j): 4 bytes, bytes 4t .. 4t + 3, which hold columns 4t .. 4t + 3 and
//                    16 + 4t .. 16 + 4t + 3; each code * scale + offset (one rounding in float32).
//   Int8Weight<T>    int8 codes: 8 bytes, columns 8t .. 8t + 7 (group 2c + t / 2): code * scale.
//   E4m3Weight<T>    e4m3 codes: 8 bytes, columns 8t .. 8t + 7, each code's value (exact in T); the
//                    row's scale multiplies the product's sum (kRowScale), as on the CPU.
//
// Each code's value is rounded to T once, as dequantize_weight rounds it (uint4, int8): the few-rows
// product and a GEMM over the dequantized weight differ only in the order of their sums.
#pragma once

#include <cstdint>
#include <type_traits>

#include "numeric.cuh"
#include "tensor_core.cuh"
#include "kvserve/linear.h"

#if KVSERVE_GPU_MMA

namespace kvserve::gpu {

// Columns a warp takes a step: 8 a lane of a quad, two mma of k16.
constexpr int kLinearChunk = 32;

// Weight row n's arrays: its elements or codes (bytes), and its codes' scales and offsets.
struct WeightRow {
  const unsigned char* codes;
  const float* scale;
  const float* offset;
};

// Byte i of `bytes` plus 2^23, as a float (exact): one byte permutation into 2^23's bits, where a
// conversion instruction would run at a sixteenth of the rate of the float arithmetic around it.
__device__ inline float byte_plus_2_23(uint32_t bytes, int i) {
  return __uint_as_float(__byte_perm(bytes, 0x4b000000u, 0x7440u | static_cast<unsigned>(i)));
}
constexpr float kTwoTo23 = 8388608.f;

// 8 values (value(raw, i)) rounded to T in pairs: a lane's A fragment registers of one weight row.
template <class W, class T>
__device__ inline uint4 widen(const typename W::Raw& raw) {
  return {pack_pair<T>(W::value(raw, 0), W::value(raw, 1)), pack_pair<T>(W::value(raw, 2), W::value(raw, 3)),
          pack_pair<T>(W::value(raw, 4), W::value(raw, 5)), pack_pair<T>(W::value(raw, 6), W::value(raw, 7))};
}

// The input's columns 8t .. 8t + 7 of a chunk: 16 bytes.
template <class T>
__device__ inline uint4 input_columns(const T* x, int32_t chunk, int t) {
  return *reinterpret_cast<const uint4*>(x + chunk * kLinearChunk + 8 * t);
}

template <class T>
struct PlainWeight {
  using Raw = uint4;
  static constexpr bool kRowScale = false;
  // Codes to widen: a block then takes up to 4 groups of 8 input rows, each chunk widened once for all.
  static constexpr bool kWidens = false;
  __device__ static WeightRow row(const LinearParams& p, int64_t n) {
    return {static_cast<const unsigned char*>(p.weight) + n * p.weight_stride * static_cast<int64_t>(sizeof(T)),
            nullptr, nullptr};
  }
  template <bool kThroughL2>
  __device__ static Raw load(const WeightRow& w, int32_t chunk, int t, uint64_t policy) {
    return load_once<uint4, kThroughL2>(reinterpret_cast<const uint4*>(w.codes) + chunk * 4 + t, policy);
  }
  __device__ static uint4 fragment(const Raw& raw) { return raw; }
  __device__ static uint4 input(const T* x, int32_t chunk, int t) { return input_columns(x, chunk, t); }
};

template <class T>
struct Uint4Weight {
  struct Raw {
    uint32_t codes;
    float scale, offset;
  };
  static constexpr bool kRowScale = false;
  static constexpr bool kWidens = true;
  __device__ static WeightRow row(const LinearParams& p, int64_t n) {
    const int64_t groups = p.in_features / kUInt4GroupSize;
    return {static_cast<const unsigned char*>(p.weight) + n * p.weight_stride, p.weight_scale + n * groups,
            p.weight_offset + n * groups};
  }
  template <bool kThroughL2>
  __device__ static Raw load(const WeightRow& w, int32_t chunk, int t, uint64_t policy) {
    const auto word = [&](const void* at) {
      return load_once<uint32_t, kThroughL2>(static_cast<const uint32_t*>(at), policy);
    };
    return {word(w.codes + chunk * 16 + 4 * t), __uint_as_float(word(w.scale + chunk)),
            __uint_as_float(word(w.offset + chunk))};
  }
  // Values 0-3: the low nibbles of the lane's 4 bytes (columns 4t ..), 4-7: their high ones (16 + 4t ..).
  __device__ static float value(const Raw& raw, int i) {
    const uint32_t nibbles = (i < 4 ? raw.codes : raw.codes >> 4) & 0x0f0f0f0fu;
    return fmaf(byte_plus_2_23(nibbles, i % 4) - kTwoTo23, raw.scale, raw.offset);
  }
  __device__ static uint4 fragment(const Raw& raw) { return widen<Uint4Weight, T>(raw); }
  __device__ static uint4 input(const T* x, int32_t chunk, int t) {
    const uint2 low = *reinterpret_cast<const uint2*>(x + chunk * kLinearChunk + 4 * t);
    const uint2 high = *reinterpret_cast<const uint2*>(x + chunk * kLinearChunk + 16 + 4 * t);
    return {low.x, low.y, high.x, high.y};
  }
};

template <class T>
struct Int8Weight {
  struct Raw {
    uint2 codes;
    float scale;
  };
  static constexpr bool kRowScale = false;
  static constexpr bool kWidens = true;
  __device__ static WeightRow row(const LinearParams& p, int64_t n) {
    return {static_cast<const unsigned char*>(p.weight) + n * p.weight_stride,
            p.weight_scale + n * (p.in_features / kInt8GroupSize), nullptr};
  }
  template <bool kThroughL2>
  __device__ static Raw load(const WeightRow& w, int32_t chunk, int t, uint64_t policy) {
    const auto* codes = reinterpret_cast<const uint2*>(w.codes + chunk * kLinearChunk + 8 * t);
    const auto* scale = reinterpret_cast<const uint32_t*>(w.scale + 2 * chunk + t / 2);
    const uint2 bytes = load_once<uint2, kThroughL2>(codes, policy);
    return {bytes, __uint_as_float(load_once<uint32_t, kThroughL2>(scale, policy))};
  }
  // A code plus 128 (its sign bit flipped) is a byte, 2^23 + 128 + code as a float.
  __device__ static float value(const Raw& raw, int i) {
    const uint32_t biased = (i < 4 ? raw.codes.x : raw.codes.y) ^ 0x80808080u;
    return (byte_plus_2_23(biased, i % 4) - (kTwoTo23 + 128.f)) * raw.scale;
  }
  __device__ static uint4 fragment(const Raw& raw) { return widen<Int8Weight, T>(raw); }
  __device__ static uint4 input(const T* x, int32_t chunk, int t) { return input_columns(x, chunk, t); }
};

template <class T>
struct E4m3Weight {
  using Raw = uint2;
  static constexpr bool kRowScale = true;
  static constexpr bool kWidens = true;
  __device__ static WeightRow row(const LinearParams& p, int64_t n) {
    return {static_cast<const unsigned char*>(p.weight) + n * p.weight_stride, nullptr, nullptr};
  }
  template <bool kThroughL2>
  __device__ static Raw load(const WeightRow& w, int32_t chunk, int t, uint64_t policy) {
    const auto* codes = reinterpret_cast<const uint2*>(w.codes + chunk * kLinearChunk + 8 * t);
    return load_once<uint2, kThroughL2>(codes, policy);
  }
  // By way of float16 pairs (numeric.cuh's half_pair), which hold e4m3's values exactly, as bfloat16 does.
  __device__ static uint4 fragment(const Raw& raw) {
    const uint4 halves = {half_pair<Float8E4M3>(raw.x, 0), half_pair<Float8E4M3>(raw.x, 1),
                          half_pair<Float8E4M3>(raw.y, 0), half_pair<Float8E4M3>(raw.y, 1)};
    if constexpr (std::is_same_v<T, __half>) {
      return halves;
    } else {
      const auto pair = [](uint32_t h) {
        return pack_pair<T>(__half2float(half_from_bits(static_cast<uint16_t>(h))),
                            __half2float(half_from_bits(static_cast<uint16_t>(h >> 16))));
      };
      return {pair(halves.x), pair(halves.y), pair(halves.z), pair(halves.w)};
    }
  }
  __device__ static uint4 input(const T* x, int32_t chunk, int t) { return input_columns(x, chunk, t); }
};

// A product's float32 sum for weight row `row` as written: times the row's scale (e4m3 codes), plus the
// row's bias, rounded once to T (as on the CPU).
template <class T, class W>
__device__ inline T rounded_sum(const LinearParams& p, float sum, int64_t row) {
  if constexpr (W::kRowScale) sum *= p.weight_scale[row];
  if (p.bias != nullptr) sum += to_float(static_cast<const T*>(p.bias)[row]);
  return from_float<T>(sum);
}

// Calls f(W{}) with W the reading of p's weight (p.weight_dtype: none, uint4, int8 or e4m3).
template <class T, class F>
Status with_weight_reading(const LinearParams& p, F&& f) {
  if (!p.weight_dtype) return f(PlainWeight<T>{});
  switch (*p.weight_dtype) {
    case DType::kUInt4: return f(Uint4Weight<T>{});
    case DType::kInt8: return f(Int8Weight<T>{});
    case DType::kFloat8E4M3: return f(E4m3Weight<T>{});
    default: return Status::kUnsupported;
  }
}

}  // namespace kvserve::gpu

#endif  // KVSERVE_GPU_MMA
