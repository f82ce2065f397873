// Arrays of the kernels' storage dtypes for the emulated GPU kernel tests: float32, float16,
// bfloat16 or (KV caches) fp8 elements, read and written as floats with the kernels' own conversions.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "kvserve/dtype.h"
#include "numeric.cuh"

namespace emulated_test {

using kvserve::DType;
using kvserve::gpu::BFloat16;
using kvserve::gpu::Float8E4M3;
using kvserve::gpu::Float8E5M2;
using kvserve::gpu::from_float;
using kvserve::gpu::to_float;

struct Buffer {
  DType dtype;
  std::vector<uint32_t> words;  // 4-byte words: room for float32, 16-byte aligned by the allocator

  Buffer(DType d, size_t n) : dtype(d), words((n * static_cast<size_t>(kvserve::dtype_bytes(d)) + 3) / 4 + 4) {}
  void* data() { return words.data(); }
  float get(size_t i) const {
    const void* p = words.data();
    switch (dtype) {
      case DType::kFloat32: return static_cast<const float*>(p)[i];
      case DType::kFloat16: return to_float(static_cast<const __half*>(p)[i]);
      case DType::kFloat8E4M3: return to_float(static_cast<const Float8E4M3*>(p)[i]);
      case DType::kFloat8E5M2: return to_float(static_cast<const Float8E5M2*>(p)[i]);
      default: return to_float(static_cast<const BFloat16*>(p)[i]);
    }
  }
  void set(size_t i, float x) {
    void* p = words.data();
    switch (dtype) {
      case DType::kFloat32: static_cast<float*>(p)[i] = x; break;
      case DType::kFloat16: static_cast<__half*>(p)[i] = from_float<__half>(x); break;
      case DType::kFloat8E4M3: static_cast<Float8E4M3*>(p)[i] = from_float<Float8E4M3>(x); break;
      case DType::kFloat8E5M2: static_cast<Float8E5M2*>(p)[i] = from_float<Float8E5M2>(x); break;
      default: static_cast<BFloat16*>(p)[i] = from_float<BFloat16>(x); break;
    }
  }
  // The value as stored: what the kernels read back.
  float rounded(float x) {
    set(0, x);
    return get(0);
  }
};

inline Buffer random_buffer(DType dtype, size_t n, std::mt19937& rng) {
  Buffer b(dtype, n);
  std::normal_distribution<float> normal;
  for (size_t i = 0; i < n; ++i) b.set(i, normal(rng));
  return b;
}

inline Buffer nan_buffer(DType dtype, size_t n) {
  Buffer b(dtype, n);
  for (size_t i = 0; i < n; ++i) b.set(i, NAN);
  return b;
}

inline double tolerance(DType dtype) { return dtype == DType::kFloat32 ? 2e-5 : dtype == DType::kFloat16 ? 6e-3 : 2.5e-2; }

inline const char* name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kFloat8E4M3: return "float8_e4m3";
    case DType::kFloat8E5M2: return "float8_e5m2";
    default: return "bfloat16";
  }
}

// The caches narrower than rows of `dtype` (kvserve::cache_dtype_serves).
inline std::vector<DType> narrower_caches(DType dtype) {
  std::vector<DType> caches = {DType::kFloat8E4M3, DType::kFloat8E5M2};
  if (dtype == DType::kFloat32) caches.insert(caches.end(), {DType::kBFloat16, DType::kFloat16});
  return caches;
}

// A KV cache of the rows' own dtype (nullopt), then every narrower one (narrower_caches).
inline std::vector<std::optional<DType>> every_cache(DType dtype) {
  std::vector<std::optional<DType>> caches = {std::nullopt};
  for (DType cache : narrower_caches(dtype)) caches.emplace_back(cache);
  return caches;
}

inline std::string cache_name(std::optional<DType> cache_dtype) {
  return cache_dtype ? std::string(" cache ") + name(*cache_dtype) : std::string();
}

struct Region {
  const void* data;
  size_t bytes;
};

struct EarlyLoads {
  size_t all = 0, outside = 0;
};

// The last launch's loads before its threads' wait for the kernel before (cuda/compat.cuh): how
// many, and how many fell outside `allowed`, the memory no kernel writes.
inline EarlyLoads loads_before_wait(const std::vector<Region>& allowed) {
  EarlyLoads counts;
  for (const auto& load : kvserve::gpu::emulator::loads_before_wait()) {
    ++counts.all;
    const bool inside = std::any_of(allowed.begin(), allowed.end(), [&](const Region& region) {
      const auto* begin = static_cast<const unsigned char*>(region.data);
      return load.begin >= begin && load.end <= begin + region.bytes;
    });
    counts.outside += inside ? 0 : 1;
  }
  return counts;
}

}  // namespace emulated_test
