// linear_rotary_and_cache's check (linear_rotary_and_cache.h): both ops' own, and that the rotated
// and cached q, k and v are the product's columns. The kernel is CUDA's (cuda/linear.cu).
#include "kvserve/linear_rotary_and_cache.h"

#include "param_checks.h"

namespace kvserve {

using namespace checks;

Status check_linear_rotary_and_cache(const LinearParams& linear, const RotaryAndCacheParams& rc, std::string* why) {
  Status s = check_linear(linear, why);
  if (s == Status::kOk) s = check_rotary_and_cache_layout(rc, why);
  if (s != Status::kOk) return s;
  const RotaryEmbeddingParams& r = rc.rotary;
  const ReshapeAndCacheParams& c = rc.cache;
  if (linear.silu_and_mul_output || linear.dtype != r.dtype || linear.num_rows != r.num_tokens ||
      linear.out_features != (r.num_heads + 2 * r.num_kv_heads) * r.head_dim) {
    return fail(why, "linear: expected the product [q | k | v] of rotary's tokens and dtype, (num_heads + 2 * "
                     "num_kv_heads) * head_dim = " + str((r.num_heads + 2 * r.num_kv_heads) * r.head_dim) +
                         " out_features, got " + str(linear.out_features) + " for " + str(linear.num_rows) +
                         " rows (rotary: " + str(r.num_tokens) + ")");
  }
  // Strides are compared only where they place something: a one-token view's token stride, and a
  // one-head view's head stride, are whatever the framework made them (torch packs them).
  const auto* out = static_cast<const char*>(linear.out);
  const int64_t element = dtype_bytes(linear.dtype);
  auto columns_of_out = [&](const void* at, int64_t column, int64_t heads, int64_t stride_token, int64_t stride_head) {
    return static_cast<const char*>(at) == out + column * element &&
           (linear.num_rows <= 1 || stride_token == linear.out_stride) && (heads <= 1 || stride_head == r.head_dim);
  };
  if (!columns_of_out(r.query, 0, r.num_heads, r.query_stride_token, r.query_stride_head) ||
      !columns_of_out(r.key, r.num_heads * r.head_dim, r.num_kv_heads, r.key_stride_token, r.key_stride_head) ||
      !columns_of_out(c.value, (r.num_heads + r.num_kv_heads) * r.head_dim, r.num_kv_heads, c.value_stride_token,
                      c.value_stride_head)) {
    return fail(why, "query, key, value: expected the q, k and v columns of linear.out (its rows, a head every "
                     "head_dim)");
  }
  return Status::kOk;
}

}  // namespace kvserve
