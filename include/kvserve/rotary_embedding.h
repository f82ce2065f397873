// rotary_embedding: rotates query and key heads in place by their token's angles (the "neox"
// half-split layout of Hugging Face Llama: pair (x[i], x[i + D/2]) turns by angle i).
//
//   query: [num_tokens, num_heads, head_dim]      tokens and heads may be strided
//   key:   [num_tokens, num_kv_heads, head_dim]   (views of one fused qkv projection, typically)
//   cos, sin: [num_tokens, head_dim / 2]           contiguous, already scaled, in the same dtype
//
// Rounded as the framework ops it replaces round in the model dtype:
//   x1' = dtype(dtype(x1 * cos) - dtype(x2 * sin)),  x2' = dtype(dtype(x2 * cos) + dtype(x1 * sin))
// Strides are in elements.
#pragma once

#include <cstdint>

#include "kvserve/dtype.h"
#include "kvserve/export.h"
#include "kvserve/status.h"

namespace kvserve {

struct RotaryEmbeddingParams {
  void* query = nullptr;
  int64_t query_stride_token = 0, query_stride_head = 0, num_heads = 0;
  void* key = nullptr;
  int64_t key_stride_token = 0, key_stride_head = 0, num_kv_heads = 0;
  const void* cos = nullptr;
  const void* sin = nullptr;
  int64_t num_tokens = 0, head_dim = 0;
  DType dtype = DType::kFloat32;
};

KVSERVE_EXPORT Status rotary_embedding_cpu(const RotaryEmbeddingParams& params);

}  // namespace kvserve
