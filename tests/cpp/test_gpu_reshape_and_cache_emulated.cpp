// The CUDA reshape_and_cache kernel, run by the GPU emulator (gpu_emulator/), against the CPU kernel.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <random>
#include <vector>

#include "emulated_buffers.h"
#include "kvserve/reshape_and_cache.h"

namespace {

using kvserve::Status;
using namespace emulated_test;

// The same bits as the CPU kernel, into caches of the rows' dtype and narrower ones (rounded alike:
// cpp/fp8_code.h).
TEST(EmulatedReshapeAndCache, MatchesCpuAndSkipsSlotsOutOfRange) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    for (std::optional<DType> cache : every_cache(dtype)) {
      for (int64_t head_dim : {64, 36, 3}) {
        std::mt19937 rng(7);
        const int64_t tokens = 5, kv_heads = 2, block_size = 4, num_blocks = 6, row = 3 * kv_heads * head_dim;
        Buffer qkv = random_buffer(dtype, static_cast<size_t>(tokens * row), rng);
        const size_t cache_elems = static_cast<size_t>(num_blocks * block_size * kv_heads * head_dim);
        Buffer cpu_cache = nan_buffer(cache.value_or(dtype), 2 * cache_elems);
        Buffer gpu_cache = nan_buffer(cache.value_or(dtype), 2 * cache_elems);
        const int64_t element = kvserve::dtype_bytes(dtype);
        const int64_t cache_element = kvserve::dtype_bytes(cache.value_or(dtype));
        std::vector<int64_t> slots = {5, -1, 23, 0, 17};
        kvserve::ReshapeAndCacheParams p;
        p.key = qkv.data();
        p.value = static_cast<char*>(qkv.data()) + kv_heads * head_dim * element;  // fused [k | v | ...] rows
        p.key_stride_token = p.value_stride_token = row;
        p.key_stride_head = p.value_stride_head = head_dim;
        p.cache_stride_block = block_size * kv_heads * head_dim;
        p.slot_mapping = slots.data();
        p.dtype = dtype;
        p.cache_dtype = cache;
        p.num_tokens = tokens;
        p.num_kv_heads = kv_heads;
        p.head_dim = head_dim;
        p.num_blocks = num_blocks;
        p.block_size = block_size;
        kvserve::ReshapeAndCacheParams cpu = p, gpu = p;
        cpu.key_cache = cpu_cache.data();
        cpu.value_cache = static_cast<char*>(cpu_cache.data()) + cache_elems * cache_element;
        gpu.key_cache = gpu_cache.data();
        gpu.value_cache = static_cast<char*>(gpu_cache.data()) + cache_elems * cache_element;
        ASSERT_EQ(kvserve::reshape_and_cache_cpu(cpu), Status::kOk);
        slots.push_back(num_blocks * block_size);  // a sixth token, out of range: skipped on the GPU
        gpu.slot_mapping = slots.data();
        gpu.num_tokens = tokens + 1;
        Buffer longer = random_buffer(dtype, static_cast<size_t>((tokens + 1) * row), rng);
        for (size_t i = 0; i < static_cast<size_t>(tokens * row); ++i) longer.set(i, qkv.get(i));
        gpu.key = longer.data();
        gpu.value = static_cast<char*>(longer.data()) + kv_heads * head_dim * element;
        ASSERT_EQ(kvserve::reshape_and_cache_cuda(gpu, nullptr), Status::kOk);
        for (size_t i = 0; i < 2 * cache_elems; ++i) {
          const float a = cpu_cache.get(i), b = gpu_cache.get(i);
          ASSERT_TRUE((std::isnan(a) && std::isnan(b)) || a == b)
              << name(dtype) << cache_name(cache) << " D" << head_dim << " element " << i;
        }
        EXPECT_FALSE(std::isnan(gpu_cache.get(5 * kv_heads * head_dim))) << "slot 5 written";
      }
    }
  }
}

}  // namespace
