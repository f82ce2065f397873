// The params of the ops that a fused op combines, built from its arrays: each builder checks the
// arrays' dtypes, shapes and strides as the plain op's binding does (ValueError otherwise); the
// caller checks that all of them sit on one device.
#pragma once

#include "array_check.h"
#include "kvserve/layer_ops.h"
#include "kvserve/reshape_and_cache.h"

namespace kvserve::bind {

RotaryEmbeddingParams rotary_embedding_params(const Array& query, const Array& key, const Array& cos,
                                              const Array& sin);

ReshapeAndCacheParams reshape_and_cache_params(const Array& key, const Array& value, const Array& key_cache,
                                               const Array& value_cache, const Array& slot_mapping);

}  // namespace kvserve::bind
