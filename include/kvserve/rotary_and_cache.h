// rotary_and_cache: a layer's rotary embedding and its KV-cache write in one call. Query and key
// are rotated in place exactly as rotary_embedding rotates them (layer_ops.h), then the rotated key
// and the value are written into their slots exactly as reshape_and_cache writes them
// (reshape_and_cache.h). On a GPU it is one kernel instead of two per layer.
//
// params.cache describes the same key as params.rotary (pointer, strides), and the same tokens,
// kv heads, head_dim and dtype.
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
};

// Both ops' checks, and that they describe one key; check_reshape_and_cache reads every slot,
// the _layout variant none (as check_reshape_and_cache_layout).
KVSERVE_EXPORT Status check_rotary_and_cache(const RotaryAndCacheParams& params, std::string* why);
KVSERVE_EXPORT Status check_rotary_and_cache_layout(const RotaryAndCacheParams& params, std::string* why);

// check_rotary_and_cache, then the rotation and the cache write: on error nothing is written.
KVSERVE_EXPORT Status rotary_and_cache_cpu(const RotaryAndCacheParams& params);

#if KVSERVE_HAS_CUDA
// The same in one kernel on `stream` of the current device; the host checks the layout only, and
// the kernel skips a slot out of range as it skips -1 (as reshape_and_cache_cuda).
KVSERVE_EXPORT Status rotary_and_cache_cuda(const RotaryAndCacheParams& params, void* stream);
#endif

}  // namespace kvserve
