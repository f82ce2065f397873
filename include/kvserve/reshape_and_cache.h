// reshape_and_cache: writes this step's new K and V rows into their KV-cache slots.
//
//   key, value:             [num_tokens, num_kv_heads, head_dim]   rows and heads may be strided
//   key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim]   written in place
//   slot_mapping:           [num_tokens] int32 or int64; slot = block_id * block_size + offset,
//                           -1 = skip the token (a padding row)
//
// Strides are in elements, as in paged_attention.h. Either every slot is valid and every row is
// written, or nothing is written. Into a cache of a narrower float (cache_dtype) each element is
// written rounded to nearest even (cpu/half.h, cpp/fp8_code.h: the same bits on the CPU and CUDA),
// into 8-bit floats saturated to their largest magnitude: an fp8 KV cache, kv_cache_dtype "fp8".
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "kvserve/config.h"
#include "kvserve/dtype.h"
#include "kvserve/export.h"
#include "kvserve/status.h"

namespace kvserve {

struct ReshapeAndCacheParams {
  const void* key = nullptr;
  int64_t key_stride_token = 0, key_stride_head = 0;
  const void* value = nullptr;
  int64_t value_stride_token = 0, value_stride_head = 0;
  void* key_cache = nullptr;
  void* value_cache = nullptr;
  int64_t cache_stride_block = 0;
  const void* slot_mapping = nullptr;
  DType slot_mapping_dtype = DType::kInt64;  // kInt32 or kInt64

  DType dtype = DType::kFloat32;        // of key and value
  // Of both caches: unset = `dtype`; or kFloat8E4M3 / kFloat8E5M2; for float32 rows also kFloat16 / kBFloat16.
  std::optional<DType> cache_dtype;
  int64_t num_tokens = 0, num_kv_heads = 0, head_dim = 0, num_blocks = 0, block_size = 0;
};

// Sizes, strides and every slot; kOk, or kInvalidArgument with a message in `why` (when not null).
KVSERVE_EXPORT Status check_reshape_and_cache(const ReshapeAndCacheParams& params, std::string* why);

// Everything check_reshape_and_cache checks but the slots themselves (it reads no array).
KVSERVE_EXPORT Status check_reshape_and_cache_layout(const ReshapeAndCacheParams& params, std::string* why);

// Runs check_reshape_and_cache, then copies each row into its slot.
KVSERVE_EXPORT Status reshape_and_cache_cpu(const ReshapeAndCacheParams& params);

#if KVSERVE_HAS_CUDA
// The same copy with every array in the current CUDA (or HIP) device's memory, enqueued on `stream`.
// The host runs check_reshape_and_cache_layout; the kernel skips a slot out of range as it skips -1
// (slots live in device memory, which the host never reads), so it never writes outside the caches.
KVSERVE_EXPORT Status reshape_and_cache_cuda(const ReshapeAndCacheParams& params, void* stream);
#endif

}  // namespace kvserve
