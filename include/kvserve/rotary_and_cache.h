// rotary_and_cache: a layer's rotary embedding and its KV-cache write in one call. Query and key
// are rotated in place exactly as rotary_embedding rotates them (layer_ops.h), then the rotated key
// and the value are written into their slots exactly as reshape_and_cache writes them
// (reshape_and_cache.h). On a GPU it is one kernel instead of two per layer.
//
// params.cache describes the same key as params.rotary (pointer, strides), and the same tokens,
// kv heads, head_dim and dtype.
//
// With query_norm_weight and key_norm_weight (Qwen3's RMSNorm of each query and key head before the
// rotation), query and key are first normalized in place, as rms_norm normalizes their heads
// (layer_ops.h): the bits of those two norms, then this op. On CUDA, still one kernel where query,
// key and the weights move in 16-byte packs and a head holds 2, 4, 8, 16 or 32 of them (a warp's
// lanes split the head as the norm kernel's do: head_dim 16 to 256 in 16-bit dtypes, 8 to 128 in
// float32, powers of two); otherwise the norm kernels first.
#pragma once

#include <string>

#include "kvserve/config.h"
#include "kvserve/export.h"
#include "kvserve/layer_ops.h"
#include "kvserve/reshape_and_cache.h"
#include "kvserve/status.h"

namespace kvserve {

struct RotaryAndCacheParams {
  RotaryEmbeddingParams rotary;
  ReshapeAndCacheParams cache;
  // Each [head_dim], of rotary's dtype; both or neither (above).
  const void* query_norm_weight = nullptr;
  const void* key_norm_weight = nullptr;
  float norm_eps = 1e-6f;
};

// Both ops' checks, and that they describe one key; check_reshape_and_cache reads every slot,
// the _layout variant none (as check_reshape_and_cache_layout).
KVSERVE_EXPORT Status check_rotary_and_cache(const RotaryAndCacheParams& params, std::string* why);
KVSERVE_EXPORT Status check_rotary_and_cache_layout(const RotaryAndCacheParams& params, std::string* why);

// The rms_norm params of the head norms of `params` (query's heads, or with `key` the key's), in place.
KVSERVE_EXPORT RmsNormParams rotary_head_norm_params(const RotaryAndCacheParams& params, bool key);

// check_rotary_and_cache, then the rotation and the cache write: on error nothing is written.
KVSERVE_EXPORT Status rotary_and_cache_cpu(const RotaryAndCacheParams& params);

#if KVSERVE_HAS_CUDA
// The same in one kernel on `stream` of the current device; the host checks the layout only, and
// the kernel skips a slot out of range as it skips -1 (as reshape_and_cache_cuda).
KVSERVE_EXPORT Status rotary_and_cache_cuda(const RotaryAndCacheParams& params, void* stream);
#endif

}  // namespace kvserve
