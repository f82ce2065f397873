// linear_rotary_and_cache: a layer's qkv projection at decode (linear_cuda's few rows) with
// rotary_and_cache applied to its output in the same kernel. The product's rows [q | k | v] land in
// `linear.out` with q and k rotated, and k and v in their cache slots: the same bits as linear_cuda,
// then rotary_and_cache_cuda, with one kernel (and one wait between kernels) fewer per layer.
//
// `rc` describes q, k and v as the columns of linear.out (the views a model takes of the product):
// rc.rotary.query = linear.out, rc.rotary.key = its column num_heads * head_dim, rc.cache.value its
// column (num_heads + num_kv_heads) * head_dim, each a row per linear.out row (out_stride) and a
// head every head_dim; out_features = (num_heads + 2 * num_kv_heads) * head_dim.
#pragma once

#include <string>

#include "kvserve/config.h"
#include "kvserve/export.h"
#include "kvserve/linear.h"
#include "kvserve/rotary_and_cache.h"
#include "kvserve/status.h"

namespace kvserve {

// check_linear, check_rotary_and_cache_layout, and that rc describes linear.out as above; kOk, or
// kInvalidArgument with the reason in `why` (when not null). Reads no array.
KVSERVE_EXPORT Status check_linear_rotary_and_cache(const LinearParams& linear, const RotaryAndCacheParams& rc,
                                                    std::string* why);

#if KVSERVE_HAS_CUDA
// On `stream` of the current device; kUnsupported where linear_cuda is (or with
// silu_and_mul_output), with rc's head norms (a block holds 16 of a head's dims, a norm needs them
// all), and for a head_dim that is not a multiple of 16 (a block rotates 8 pairs of one head). Like
// rotary_and_cache_cuda, the kernel skips a slot out of range as it skips -1.
KVSERVE_EXPORT Status linear_rotary_and_cache_cuda(const LinearParams& linear, const RotaryAndCacheParams& rc,
                                                   void* stream);
#endif

}  // namespace kvserve
