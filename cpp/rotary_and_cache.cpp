// rotary_and_cache's checks, and its CPU path: the two CPU kernels in turn (on the CPU the pass
// over a step's rows is cheap beside the call; the fusion pays on a GPU, cuda/rotary_and_cache.cu).
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
  return s;
}

}  // namespace

Status check_rotary_and_cache(const RotaryAndCacheParams& p, std::string* why) {
  return check_both(p, why, check_reshape_and_cache);
}

Status check_rotary_and_cache_layout(const RotaryAndCacheParams& p, std::string* why) {
  return check_both(p, why, check_reshape_and_cache_layout);
}

Status rotary_and_cache_cpu(const RotaryAndCacheParams& p) {
  if (check_rotary_and_cache(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  const Status s = rotary_embedding_cpu(p.rotary);
  return s == Status::kOk ? reshape_and_cache_cpu(p.cache) : s;
}

}  // namespace kvserve
