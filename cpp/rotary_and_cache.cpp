// rotary_and_cache's checks, and its CPU path: the CPU kernels in turn (the heads' norms, the
// rotation, the cache write: on the CPU the pass over a step's rows is cheap beside the call; the
// fusion pays on a GPU, cuda/rotary_and_cache.cu).
#include "kvserve/rotary_and_cache.h"

#include "param_checks.h"

namespace kvserve {

using namespace checks;

namespace {

// That params.cache writes the key params.rotary rotates, for the same tokens and heads.
Status check_pairing(const RotaryAndCacheParams& p, std::string* why) {
  const RotaryEmbeddingParams& r = p.rotary;
  const ReshapeAndCacheParams& c = p.cache;
  if (c.key != r.key || c.key_stride_token != r.key_stride_token || c.key_stride_head != r.key_stride_head) {
    return fail(why, "cache.key: expected the key that rotary rotates (same pointer and strides)");
  }
  if (c.num_tokens != r.num_tokens || c.num_kv_heads != r.num_kv_heads || c.head_dim != r.head_dim ||
      c.dtype != r.dtype) {
    return fail(why, "cache: expected the num_tokens, num_kv_heads, head_dim and dtype of rotary, got " +
                         str(c.num_tokens) + ", " + str(c.num_kv_heads) + ", " + str(c.head_dim) + " for " +
                         str(r.num_tokens) + ", " + str(r.num_kv_heads) + ", " + str(r.head_dim));
  }
  return Status::kOk;
}

template <class CacheCheck>
Status check_both(const RotaryAndCacheParams& p, std::string* why, CacheCheck check_cache) {
  Status s = check_rotary_embedding(p.rotary, why);
  if (s == Status::kOk) s = check_cache(p.cache, why);
  if (s == Status::kOk) s = check_pairing(p, why);
  if (s != Status::kOk || (p.query_norm_weight == nullptr && p.key_norm_weight == nullptr)) return s;
  if (p.query_norm_weight == nullptr || p.key_norm_weight == nullptr) {
    return fail(why, "query_norm_weight, key_norm_weight: expected both or neither");
  }
  s = check_rms_norm(rotary_head_norm_params(p, false), why);
  return s == Status::kOk ? check_rms_norm(rotary_head_norm_params(p, true), why) : s;
}

}  // namespace

RmsNormParams rotary_head_norm_params(const RotaryAndCacheParams& p, bool key) {
  const RotaryEmbeddingParams& r = p.rotary;
  RmsNormParams n;
  n.out = key ? r.key : r.query;
  n.input = n.out;
  n.out_stride_token = n.input_stride_token = key ? r.key_stride_token : r.query_stride_token;
  n.out_stride_head = n.input_stride_head = key ? r.key_stride_head : r.query_stride_head;
  n.weight = key ? p.key_norm_weight : p.query_norm_weight;
  n.dtype = r.dtype;
  n.num_tokens = r.num_tokens;
  n.num_heads = key ? r.num_kv_heads : r.num_heads;
  n.hidden = r.head_dim;
  n.eps = p.norm_eps;
  return n;
}

Status check_rotary_and_cache(const RotaryAndCacheParams& p, std::string* why) {
  return check_both(p, why, check_reshape_and_cache);
}

Status check_rotary_and_cache_layout(const RotaryAndCacheParams& p, std::string* why) {
  return check_both(p, why, check_reshape_and_cache_layout);
}

Status rotary_and_cache_cpu(const RotaryAndCacheParams& p) {
  if (check_rotary_and_cache(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  Status s = Status::kOk;
  if (p.query_norm_weight != nullptr) {
    s = rms_norm_cpu(rotary_head_norm_params(p, false));
    if (s == Status::kOk) s = rms_norm_cpu(rotary_head_norm_params(p, true));
  }
  if (s == Status::kOk) s = rotary_embedding_cpu(p.rotary);
  return s == Status::kOk ? reshape_and_cache_cpu(p.cache) : s;
}

}  // namespace kvserve
