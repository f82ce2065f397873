// decoder_stack: every decoder layer of a Llama-family model, and the final norm, in one call on the
// CPU — for steps of a few tokens (decode), where calling each kernel from Python costs as much as
// the kernel itself (a small model's layer runs a dozen kernels of a few microseconds each).
//
// It runs the same kernels in the same order as the Python model (kvserve/models/llama.py), so its
// results are bit-identical to that path's:
//
//   residual = hidden (first layer) | residual += hidden;  x = rms_norm(residual) * input_norm
//   qkv = x @ qkv^T (+ bias);  q, k = q_norm(q), k_norm(k) (Qwen3);  rotate q, k (cos, sin)
//   write k, v to the cache slots;  attn = paged_attention(q, caches)
//   hidden = attn @ o^T (+ bias);  residual += hidden;  x = rms_norm(residual) * post_norm
//   hidden = silu_and_mul(x @ gate_up^T (+ bias)) @ down^T (+ bias)
//   ... every layer, then residual += hidden; hidden = rms_norm(residual) * final_norm
//
// With a LoRA adapter (DecoderStepParams::lora), each product it adapts adds its delta right after
// the product, as the Python layers do (kvserve/lora/batch.py): out += (x @ a^T) @ b^T, each
// product by linear_cpu, the sum rounded once more.
//
// Weights and caches are given once (DecoderStack); a step gives the tokens' embeddings and the
// batch layout (DecoderStepParams). All arrays are row-major contiguous, of one float dtype (the KV
// caches may hold a narrower float: cache_dtype; the products' weights e4m3 codes: DecoderWeight).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kvserve/dtype.h"
#include "kvserve/export.h"
#include "kvserve/status.h"

namespace kvserve {

// A product's weight (linear.h): of the stack's dtype, plain [out_features, in_features] or
// interleaved (LinearParams::weight_interleaved), e4m3 codes with a float32 scale per row, uint4
// codes with a float32 scale and offset per group, or int8 codes with a float32 scale per group
// (LinearParams::weight_dtype: weight-only fp8, int4, int8).
struct DecoderWeight {
  const void* data = nullptr;
  std::optional<DType> weight_dtype;  // the codes' (linear.h); nullopt: the stack's dtype
  const float* scale = nullptr;       // the codes' scales
  const float* offset = nullptr;      // uint4 codes' offsets
  bool interleaved = false;
  // [in_features]: the weight's column k multiplies input column input_order[k] (act-order GPTQ);
  // nullptr: column k.
  const int64_t* input_order = nullptr;
  // A product stored in parts of different kinds of codes (a GGUF file's 4-bit q and k beside a 6-bit
  // v): each part's weight and its `rows`, in order, their rows the product's (data above unused);
  // empty: one weight.
  std::vector<DecoderWeight> parts;
  int64_t rows = 0;
};

// One layer's arrays. With q = num_heads * head_dim and kv = num_kv_heads * head_dim:
struct DecoderLayerWeights {
  const void* input_norm = nullptr;    // [hidden]
  DecoderWeight qkv;                   // [q + 2 kv, hidden]
  const void* qkv_bias = nullptr;      // [q + 2 kv] or nullptr
  const void* q_norm = nullptr;        // [head_dim], with k_norm, or both nullptr
  const void* k_norm = nullptr;        // [head_dim]
  DecoderWeight o;                     // [hidden, q]
  const void* o_bias = nullptr;        // [hidden] or nullptr
  const void* post_norm = nullptr;     // [hidden]
  DecoderWeight gate_up;               // [2 intermediate, hidden]: gate rows, then up rows
  const void* gate_up_bias = nullptr;  // [2 intermediate] or nullptr
  DecoderWeight down;                  // [hidden, intermediate]
  const void* down_bias = nullptr;     // [hidden] or nullptr
  void* key_cache = nullptr;           // [num_blocks, block_size, num_kv_heads, head_dim]
  void* value_cache = nullptr;
  int64_t sliding_window = 0;          // 0: none
};

struct DecoderStack {
  DType dtype = DType::kFloat32;        // kFloat32, kFloat16 or kBFloat16
  std::optional<DType> cache_dtype;     // of the KV caches, as PagedAttentionParams::cache_dtype
  int64_t hidden_size = 0, intermediate_size = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t num_blocks = 0, block_size = 0;
  float eps = 1e-6f;    // of every RMSNorm
  float scale = 1.f;    // of the attention scores
  std::vector<DecoderLayerWeights> layers;
  const void* final_norm = nullptr;  // [hidden]
};

// A LoRA adapter's delta on one product: a [rank, in_features], b [out_features, rank] (a fused
// projection's parts stacked in a, block-diagonal in b; the scaling folded into b); a == nullptr:
// the adapter leaves the product alone.
struct LoRADelta {
  const void* a = nullptr;
  const void* b = nullptr;
  int64_t rank = 0;
};

struct DecoderLayerLoRA {
  LoRADelta qkv, o, gate_up, down;
};

// One step: num_tokens rows of every request's new tokens, concatenated (as paged_attention.h).
struct DecoderStepParams {
  void* hidden = nullptr;             // [num_tokens, hidden]: the embeddings in, the final norm's output out
  const void* cos = nullptr;          // [num_tokens, head_dim / 2], the dtype of the stack
  const void* sin = nullptr;          // [num_tokens, head_dim / 2]
  const int64_t* slot_mapping = nullptr;  // [num_tokens]: cache slot of each token, -1 skips it
  const int32_t* block_table = nullptr;   // [num_reqs, max_blocks_per_req], rows block_table_stride apart
  const int32_t* seq_lens = nullptr;      // [num_reqs]
  const int32_t* query_start_loc = nullptr;  // [num_reqs + 1]
  int64_t num_tokens = 0, num_reqs = 0, max_blocks_per_req = 0, block_table_stride = 0;
  // One per layer: the deltas of the LoRA adapter every token of the step runs with; nullptr: none.
  const DecoderLayerLoRA* lora = nullptr;
};

// Sizes and pointers of the stack (kInvalidArgument with a message in `why`, when not null).
KVSERVE_EXPORT Status check_decoder_stack(const DecoderStack& stack, std::string* why);

// Checks the stack and the step (the batch layout as paged_attention_cpu checks it, before anything
// is written), then runs every layer on the calling thread's OpenMP team; kInvalidArgument with a
// message in `why` if a check fails.
KVSERVE_EXPORT Status decoder_stack_cpu(const DecoderStack& stack, const DecoderStepParams& step, std::string* why);

}  // namespace kvserve
