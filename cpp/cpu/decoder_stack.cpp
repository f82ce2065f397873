// decoder_stack_cpu: the layers of decoder_stack.h, each step of each layer one of the library's CPU
// kernels (linear_cpu, rms_norm_cpu, ...) over views of one scratch buffer.
#include "kvserve/decoder_stack.h"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <vector>

#include "kvserve/layer_ops.h"
#include "kvserve/linear.h"
#include "kvserve/paged_attention.h"
#include "kvserve/reshape_and_cache.h"
#include "half.h"
#include "param_checks.h"

namespace kvserve {

namespace {

using checks::fail;
using checks::str;

// The step's activations, each [num_tokens, width], in one allocation; with a LoRA adapter of
// largest rank `lora_rank`, its products' inner rows (x @ a^T) and deltas too; with a product that
// takes its input in another order (DecoderWeight::input_order), that input's columns so ordered.
struct Scratch {
  std::vector<unsigned char> bytes;
  void* residual;
  void* x;
  void* qkv;
  void* attn;
  void* gate_up;
  void* act;
  void* lora_inner;
  void* lora_delta;
  void* ordered;

  Scratch(const DecoderStack& s, int64_t num_tokens, int64_t lora_rank) {
    const int64_t q = s.num_heads * s.head_dim, kv = s.num_kv_heads * s.head_dim;
    const int64_t widest = std::max({q + 2 * kv, s.hidden_size, 2 * s.intermediate_size});
    bool ordered_inputs = false;
    for (const DecoderLayerWeights& l : s.layers) {
      for (const DecoderWeight* w : {&l.qkv, &l.o, &l.gate_up, &l.down}) ordered_inputs |= w->input_order != nullptr;
    }
    const int64_t widest_input = std::max({s.hidden_size, q, s.intermediate_size});
    const int64_t widths[] = {s.hidden_size, s.hidden_size, q + 2 * kv, q, 2 * s.intermediate_size,
                              s.intermediate_size, lora_rank, lora_rank > 0 ? widest : 0,
                              ordered_inputs ? widest_input : 0};
    constexpr int kViews = 9;
    int64_t offsets[kViews], total = 0;
    for (int i = 0; i < kViews; ++i) {
      offsets[i] = total;
      total += (num_tokens * widths[i] * dtype_bytes(s.dtype) + 63) / 64 * 64;
    }
    bytes.resize(static_cast<size_t>(total));
    void** views[] = {&residual, &x, &qkv, &attn, &gate_up, &act, &lora_inner, &lora_delta, &ordered};
    for (int i = 0; i < kViews; ++i) *views[i] = bytes.data() + offsets[i];
  }
};

LinearParams linear_params(const DecoderStack& s, void* out, const void* input, const DecoderWeight& weight,
                           const void* bias, int64_t num_rows, int64_t in_features, int64_t out_features) {
  LinearParams p;
  p.out = out;
  p.out_stride = out_features;
  p.input = input;
  p.input_stride = in_features;
  p.weight = weight.data;
  p.weight_stride = weight.weight_dtype == DType::kUInt4 ? in_features / 2 : in_features;  // two codes a byte
  p.bias = bias;
  p.num_rows = num_rows;
  p.in_features = in_features;
  p.out_features = out_features;
  p.dtype = s.dtype;
  p.weight_interleaved = weight.interleaved;
  p.weight_dtype = weight.weight_dtype;
  p.weight_scale = weight.scale;
  p.weight_offset = weight.offset;
  return p;
}

// Whether `holds` is true of a product's weight: of the one, or of each of its parts.
template <class F>
bool all_weights(const DecoderWeight& w, F holds) {
  return w.parts.empty() ? holds(w) : std::all_of(w.parts.begin(), w.parts.end(), holds);
}

template <class E>
void gather_columns(void* out, const void* input, const int64_t* order, int64_t num_rows, int64_t width) {
  auto* o = static_cast<E*>(out);
  const auto* x = static_cast<const E*>(input);
  for (int64_t r = 0; r < num_rows; ++r) {
    for (int64_t k = 0; k < width; ++k) o[r * width + k] = x[r * width + order[k]];
  }
}

// out [n, out_features] = input [n, in_features] @ weight^T (+ bias): linear_cpu, over the input's
// columns gathered in the weight's input_order (into t.ordered) where it has one; a weight in parts
// one linear_cpu a part, into its columns of out.
Status product(const DecoderStack& s, void* out, const void* input, const DecoderWeight& weight, const void* bias,
               int64_t n, int64_t in_features, int64_t out_features, Scratch& t) {
  if (weight.input_order != nullptr) {
    if (dtype_bytes(s.dtype) == 4) {
      gather_columns<uint32_t>(t.ordered, input, weight.input_order, n, in_features);
    } else {
      gather_columns<uint16_t>(t.ordered, input, weight.input_order, n, in_features);
    }
    input = t.ordered;
  }
  if (weight.parts.empty()) return linear_cpu(linear_params(s, out, input, weight, bias, n, in_features, out_features));
  const int64_t elem = dtype_bytes(s.dtype);
  int64_t first = 0;
  for (const DecoderWeight& part : weight.parts) {
    LinearParams p = linear_params(s, static_cast<unsigned char*>(out) + first * elem, input, part,
                                   bias == nullptr ? nullptr : static_cast<const unsigned char*>(bias) + first * elem,
                                   n, in_features, part.rows);
    p.out_stride = out_features;
    if (Status status = linear_cpu(p); status != Status::kOk) return status;
    first += part.rows;
  }
  return Status::kOk;
}

// out = norm(input) * weight over [num_tokens, num_heads, width] rows; with `residual`, first
// residual += input (and out is input).
RmsNormParams norm_params(const DecoderStack& s, void* out, const void* input, int64_t stride_token,
                          int64_t num_tokens, int64_t num_heads, int64_t width, const void* weight,
                          void* residual) {
  RmsNormParams p;
  p.out = out;
  p.out_stride_token = stride_token;
  p.out_stride_head = num_heads > 1 ? width : 0;
  p.input = input;
  p.input_stride_token = stride_token;
  p.input_stride_head = p.out_stride_head;
  p.residual = residual;
  p.residual_stride_token = residual != nullptr ? width : 0;
  p.weight = weight;
  p.dtype = s.dtype;
  p.num_tokens = num_tokens;
  p.num_heads = num_heads;
  p.hidden = width;
  p.eps = s.eps;
  return p;
}

ReshapeAndCacheParams cache_params(const DecoderStack& s, const DecoderLayerWeights& layer, const void* qkv,
                                   const DecoderStepParams& step) {
  const int64_t q = s.num_heads * s.head_dim, kv = s.num_kv_heads * s.head_dim, row = q + 2 * kv;
  const int64_t elem = dtype_bytes(s.dtype);
  ReshapeAndCacheParams p;
  p.key = static_cast<const unsigned char*>(qkv) + q * elem;
  p.key_stride_token = row;
  p.key_stride_head = s.head_dim;
  p.value = static_cast<const unsigned char*>(qkv) + (q + kv) * elem;
  p.value_stride_token = row;
  p.value_stride_head = s.head_dim;
  p.key_cache = layer.key_cache;
  p.value_cache = layer.value_cache;
  p.cache_stride_block = s.block_size * kv;
  p.slot_mapping = step.slot_mapping;
  p.slot_mapping_dtype = DType::kInt64;
  p.dtype = s.dtype;
  p.cache_dtype = s.cache_dtype;
  p.num_tokens = step.num_tokens;
  p.num_kv_heads = s.num_kv_heads;
  p.head_dim = s.head_dim;
  p.num_blocks = s.num_blocks;
  p.block_size = s.block_size;
  return p;
}

PagedAttentionParams attention_params(const DecoderStack& s, const DecoderLayerWeights& layer, void* out,
                                      const void* qkv, const DecoderStepParams& step) {
  const int64_t q = s.num_heads * s.head_dim, kv = s.num_kv_heads * s.head_dim;
  PagedAttentionParams p;
  p.out = out;
  p.out_stride_token = q;
  p.out_stride_head = s.head_dim;
  p.query = qkv;
  p.query_stride_token = q + 2 * kv;
  p.query_stride_head = s.head_dim;
  p.key_cache = layer.key_cache;
  p.value_cache = layer.value_cache;
  p.cache_stride_block = s.block_size * kv;
  p.block_table = step.block_table;
  p.block_table_stride = step.block_table_stride;
  p.seq_lens = step.seq_lens;
  p.query_start_loc = step.query_start_loc;
  p.dtype = s.dtype;
  p.cache_dtype = s.cache_dtype;
  p.num_tokens = step.num_tokens;
  p.num_heads = s.num_heads;
  p.num_kv_heads = s.num_kv_heads;
  p.head_dim = s.head_dim;
  p.num_reqs = step.num_reqs;
  p.max_blocks_per_req = step.max_blocks_per_req;
  p.num_blocks = s.num_blocks;
  p.block_size = s.block_size;
  p.scale = s.scale;
  p.causal = true;
  p.sliding_window = layer.sliding_window;
  return p;
}

template <class T>
void add_into(void* out, const void* delta, int64_t count) {
  auto* o = static_cast<T*>(out);
  const auto* d = static_cast<const T*>(delta);
  for (int64_t i = 0; i < count; ++i) cpu::from_float(cpu::to_float(o[i]) + cpu::to_float(d[i]), o + i);
}

// out [n, out_features] += (input [n, in_features] @ a^T) @ b^T, where the adapter adapts this product.
Status add_lora(const DecoderStack& s, const LoRADelta& delta, void* out, const void* input, int64_t n,
                int64_t in_features, int64_t out_features, Scratch& t) {
  if (delta.a == nullptr) return Status::kOk;
  DecoderWeight a, b;  // of the stack's dtype
  a.data = delta.a;
  b.data = delta.b;
  if (Status status = linear_cpu(linear_params(s, t.lora_inner, input, a, nullptr, n, in_features, delta.rank));
      status != Status::kOk) {
    return status;
  }
  if (Status status = linear_cpu(linear_params(s, t.lora_delta, t.lora_inner, b, nullptr, n, delta.rank, out_features));
      status != Status::kOk) {
    return status;
  }
  const int64_t count = n * out_features;
  switch (s.dtype) {
    case DType::kBFloat16: add_into<cpu::BFloat16>(out, t.lora_delta, count); break;
    case DType::kFloat16: add_into<cpu::Float16>(out, t.lora_delta, count); break;
    default: add_into<float>(out, t.lora_delta, count); break;
  }
  return Status::kOk;
}

// Runs one kernel; returns from the enclosing function if it fails.
#define KVSERVE_RUN(call, what)                                                    \
  do {                                                                             \
    if (Status status = (call); status != Status::kOk) {                           \
      if (why != nullptr) *why = std::string(what) + " failed: " + status_string(status); \
      return status;                                                               \
    }                                                                              \
  } while (0)

Status run_layer(const DecoderStack& s, const DecoderLayerWeights& layer, const DecoderLayerLoRA& lora, bool first,
                 const DecoderStepParams& step, Scratch& t, std::string* why) {
  const int64_t n = step.num_tokens, h = s.hidden_size, d = s.head_dim;
  const int64_t q = s.num_heads * d, kv = s.num_kv_heads * d, elem = dtype_bytes(s.dtype);
  // x: the first layer normalizes the embeddings into scratch (they become the residual); later
  // layers add the block output to the residual and normalize it where it is.
  void* x = step.hidden;
  if (first) {
    std::memcpy(t.residual, step.hidden, static_cast<size_t>(n * h * elem));
    x = t.x;
    KVSERVE_RUN(rms_norm_cpu(norm_params(s, x, t.residual, h, n, 1, h, layer.input_norm, nullptr)), "input norm");
  } else {
    KVSERVE_RUN(rms_norm_cpu(norm_params(s, x, x, h, n, 1, h, layer.input_norm, t.residual)), "input norm");
  }
  KVSERVE_RUN(product(s, t.qkv, x, layer.qkv, layer.qkv_bias, n, h, q + 2 * kv, t), "qkv_proj");
  KVSERVE_RUN(add_lora(s, lora.qkv, t.qkv, x, n, h, q + 2 * kv, t), "qkv_proj's LoRA delta");
  auto* key = static_cast<unsigned char*>(t.qkv) + q * elem;
  if (layer.q_norm != nullptr) {
    KVSERVE_RUN(rms_norm_cpu(norm_params(s, t.qkv, t.qkv, q + 2 * kv, n, s.num_heads, d, layer.q_norm, nullptr)),
                "q_norm");
    KVSERVE_RUN(rms_norm_cpu(norm_params(s, key, key, q + 2 * kv, n, s.num_kv_heads, d, layer.k_norm, nullptr)),
                "k_norm");
  }
  RotaryEmbeddingParams rope;
  rope.query = t.qkv;
  rope.query_stride_token = q + 2 * kv;
  rope.query_stride_head = d;
  rope.key = key;
  rope.key_stride_token = q + 2 * kv;
  rope.key_stride_head = d;
  rope.cos = step.cos;
  rope.sin = step.sin;
  rope.cos_sin_stride_token = d / 2;
  rope.dtype = s.dtype;
  rope.num_tokens = n;
  rope.num_heads = s.num_heads;
  rope.num_kv_heads = s.num_kv_heads;
  rope.head_dim = d;
  KVSERVE_RUN(rotary_embedding_cpu(rope), "rotary embedding");
  KVSERVE_RUN(reshape_and_cache_cpu(cache_params(s, layer, t.qkv, step)), "reshape_and_cache");
  KVSERVE_RUN(paged_attention_cpu(attention_params(s, layer, t.attn, t.qkv, step)), "paged_attention");
  KVSERVE_RUN(product(s, step.hidden, t.attn, layer.o, layer.o_bias, n, q, h, t), "o_proj");
  KVSERVE_RUN(add_lora(s, lora.o, step.hidden, t.attn, n, q, h, t), "o_proj's LoRA delta");
  KVSERVE_RUN(rms_norm_cpu(norm_params(s, step.hidden, step.hidden, h, n, 1, h, layer.post_norm, t.residual)),
              "post-attention norm");
  const int64_t inter = s.intermediate_size;
  KVSERVE_RUN(product(s, t.gate_up, step.hidden, layer.gate_up, layer.gate_up_bias, n, h, 2 * inter, t),
              "gate_up_proj");
  KVSERVE_RUN(add_lora(s, lora.gate_up, t.gate_up, step.hidden, n, h, 2 * inter, t), "gate_up_proj's LoRA delta");
  SiluAndMulParams act;
  act.out = t.act;
  act.out_stride_token = inter;
  act.input = t.gate_up;
  act.input_stride_token = 2 * inter;
  act.dtype = s.dtype;
  act.num_tokens = n;
  act.size = inter;
  KVSERVE_RUN(silu_and_mul_cpu(act), "silu_and_mul");
  KVSERVE_RUN(product(s, step.hidden, t.act, layer.down, layer.down_bias, n, inter, h, t), "down_proj");
  KVSERVE_RUN(add_lora(s, lora.down, step.hidden, t.act, n, inter, h, t), "down_proj's LoRA delta");
  return Status::kOk;
}

}  // namespace

Status check_decoder_stack(const DecoderStack& s, std::string* why) {
  if (!checks::is_float_dtype(s.dtype)) return fail(why, "decoder stack: dtype must be float32, float16 or bfloat16");
  if (!cache_dtype_serves(s.cache_dtype.value_or(s.dtype), s.dtype)) {
    return fail(why, "decoder stack: cache_dtype must be its dtype, float8_e4m3 or float8_e5m2 (or for float32 "
                     "float16 or bfloat16)");
  }
  if (s.hidden_size <= 0 || s.intermediate_size <= 0 || s.num_heads <= 0 || s.num_kv_heads <= 0 ||
      s.head_dim <= 0 || s.head_dim % 2 != 0 || s.num_blocks <= 0 || s.block_size <= 0) {
    return fail(why, "decoder stack: sizes must be positive and head_dim even (hidden " + str(s.hidden_size) +
                         ", intermediate " + str(s.intermediate_size) + ", heads " + str(s.num_heads) + "/" +
                         str(s.num_kv_heads) + ", head_dim " + str(s.head_dim) + ")");
  }
  if (s.num_heads % s.num_kv_heads != 0) {
    return fail(why, "decoder stack: num_heads " + str(s.num_heads) + " is not a multiple of num_kv_heads " +
                         str(s.num_kv_heads));
  }
  if (s.layers.empty() || s.final_norm == nullptr) return fail(why, "decoder stack: no layers or no final norm");
  for (size_t i = 0; i < s.layers.size(); ++i) {
    const DecoderLayerWeights& l = s.layers[i];
    const std::string layer = "decoder stack: layer " + str(static_cast<int64_t>(i));
    const void* required[] = {l.input_norm, l.post_norm, l.key_cache, l.value_cache};
    const DecoderWeight* weights[] = {&l.qkv, &l.o, &l.gate_up, &l.down};
    const auto has_data = [](const DecoderWeight& w) { return w.data != nullptr; };
    if (std::find(std::begin(required), std::end(required), nullptr) != std::end(required) ||
        !std::all_of(std::begin(weights), std::end(weights), [&](auto w) { return all_weights(*w, has_data); })) {
      return fail(why, layer + " lacks an array");
    }
    // Codes are read plain, and only codes have scales.
    const auto consistent = [](const DecoderWeight& w) {
      return w.weight_dtype ? !w.interleaved : w.scale == nullptr && w.offset == nullptr;
    };
    if (!std::all_of(std::begin(weights), std::end(weights), [&](auto w) { return all_weights(*w, consistent); })) {
      return fail(why, layer + " has an interleaved quantized weight, or scales without a weight_dtype");
    }
    if ((l.q_norm == nullptr) != (l.k_norm == nullptr) || l.sliding_window < 0) {
      return fail(why, layer + " has one of q_norm and k_norm, or a negative sliding window");
    }
  }
  return Status::kOk;
}

Status decoder_stack_cpu(const DecoderStack& s, const DecoderStepParams& step, std::string* why) {
  if (Status status = check_decoder_stack(s, why); status != Status::kOk) return status;
  if (step.hidden == nullptr || step.cos == nullptr || step.sin == nullptr || step.slot_mapping == nullptr ||
      step.num_tokens < 0) {
    return fail(why, "decoder stack step: missing arrays or a negative num_tokens");
  }
  if (step.num_tokens == 0) return Status::kOk;
  int64_t lora_rank = 0;  // the adapter's largest
  for (size_t i = 0; step.lora != nullptr && i < s.layers.size(); ++i) {
    const DecoderLayerLoRA& l = step.lora[i];
    for (const LoRADelta* d : {&l.qkv, &l.o, &l.gate_up, &l.down}) {
      if ((d->a == nullptr) != (d->b == nullptr) || (d->a != nullptr && d->rank <= 0)) {
        return fail(why, "decoder stack step: layer " + str(static_cast<int64_t>(i)) +
                             "'s LoRA delta lacks a or b, or has a rank below 1");
      }
      lora_rank = std::max(lora_rank, d->rank);
    }
  }
  // The batch layout is the same for every layer: checked once, before the first layer writes.
  Scratch t(s, step.num_tokens, lora_rank);
  if (Status status = check_paged_attention(attention_params(s, s.layers[0], t.attn, t.qkv, step), why);
      status != Status::kOk) {
    return status;
  }
  const int64_t num_slots = s.num_blocks * s.block_size;
  for (int64_t i = 0; i < step.num_tokens; ++i) {
    if (step.slot_mapping[i] < -1 || step.slot_mapping[i] >= num_slots) {
      return fail(why, "slot_mapping[" + str(i) + "] = " + str(step.slot_mapping[i]) + " is outside the cache's " +
                           str(num_slots) + " slots");
    }
  }
  const DecoderLayerLoRA none;
  for (size_t i = 0; i < s.layers.size(); ++i) {
    const DecoderLayerLoRA& lora = step.lora != nullptr ? step.lora[i] : none;
    if (Status status = run_layer(s, s.layers[i], lora, i == 0, step, t, why); status != Status::kOk) return status;
  }
  KVSERVE_RUN(rms_norm_cpu(norm_params(s, step.hidden, step.hidden, s.hidden_size, step.num_tokens, 1, s.hidden_size,
                                       s.final_norm, t.residual)),
              "final norm");
  return Status::kOk;
}

}  // namespace kvserve
