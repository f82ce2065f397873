// Validation of the paged KV-cache kernels' params: everything a kernel relies on to stay inside its
// arrays. The kernels run these checks themselves; callers that want a message call them again
// after a kernel has returned kInvalidArgument (the happy path pays for one pass only).
#include <cmath>
#include <string>

#include "kvserve/paged_attention.h"
#include "kvserve/reshape_and_cache.h"
#include "param_checks.h"

namespace kvserve {

namespace {

using namespace checks;

Status check_cache(int64_t num_blocks, int64_t block_size, int64_t num_kv_heads, int64_t head_dim,
                   int64_t stride_block, std::string* why) {
  if (num_blocks < 0 || block_size < 1) {
    return fail(why, "cache: expected num_blocks >= 0 and block_size >= 1, got " + str(num_blocks) + " and " +
                         str(block_size));
  }
  const int64_t block_elems = block_size * num_kv_heads * head_dim;
  if (num_blocks > 1 && stride_block < block_elems) {
    return fail(why, "cache: block stride " + str(stride_block) + " is less than a block's " + str(block_elems) +
                         " elements (blocks would overlap)");
  }
  return Status::kOk;
}

Status check_cache_dtype(DType dtype, DType cache_dtype, std::string* why) {
  if (cache_dtype_serves(cache_dtype, dtype)) return Status::kOk;
  return fail(why, "cache_dtype: expected the dtype of the rows, float8_e4m3 or float8_e5m2 (or for float32 rows "
                   "float16 or bfloat16)");
}

}  // namespace

Status check_paged_attention_layout(const PagedAttentionParams& p, std::string* why) {
  if (!is_float_dtype(p.dtype)) return fail(why, "dtype: expected float32, float16 or bfloat16");
  if (check_cache_dtype(p.dtype, p.cache_dtype.value_or(p.dtype), why) != Status::kOk) return Status::kInvalidArgument;
  if (p.num_tokens < 0 || p.num_reqs < 0 || p.max_blocks_per_req < 0 || p.head_dim < 1 ||
      p.num_heads < 1 || p.num_kv_heads < 1) {
    return fail(why, "sizes: expected num_tokens, num_reqs, max_blocks_per_req >= 0 and num_heads, "
                     "num_kv_heads, head_dim >= 1");
  }
  if (p.num_heads % p.num_kv_heads != 0) {
    return fail(why, "num_heads " + str(p.num_heads) + " is not a multiple of num_kv_heads " +
                         str(p.num_kv_heads));
  }
  if (p.num_reqs == 0 && p.num_tokens > 0) {
    return fail(why, "num_reqs = 0 with num_tokens = " + str(p.num_tokens) +
                         ": expected every query row to belong to a request");
  }
  Status s = check_rows("query", p.num_tokens, p.num_heads, p.head_dim, p.query_stride_token,
                        p.query_stride_head, why);
  if (s == Status::kOk) {
    s = check_rows("out", p.num_tokens, p.num_heads, p.head_dim, p.out_stride_token, p.out_stride_head, why);
  }
  if (s == Status::kOk) {
    s = check_cache(p.num_blocks, p.block_size, p.num_kv_heads, p.head_dim, p.cache_stride_block, why);
  }
  if (s != Status::kOk) return s;
  if (p.num_reqs > 1 && p.block_table_stride < p.max_blocks_per_req) {
    return fail(why, "block_table: row stride " + str(p.block_table_stride) + " is less than max_blocks_per_req " +
                         str(p.max_blocks_per_req));
  }
  if (!std::isfinite(p.scale)) return fail(why, "scale: expected a finite number, got " + std::to_string(p.scale));
  if (!(p.softcap >= 0.f) || !std::isfinite(p.softcap)) {
    return fail(why, "softcap: expected a finite number > 0 (or none), got " + std::to_string(p.softcap));
  }
  if (p.sliding_window < 0) return fail(why, "sliding_window: expected >= 1 (or none), got " + str(p.sliding_window));
  if (p.num_splits < 0) return fail(why, "num_splits: expected >= 1 (or 0: chosen), got " + str(p.num_splits));
  if (p.query_start_loc == nullptr || (p.num_reqs > 0 && (p.seq_lens == nullptr || p.block_table == nullptr)) ||
      (p.num_tokens > 0 && (p.query == nullptr || p.out == nullptr || p.key_cache == nullptr ||
                            p.value_cache == nullptr))) {
    return fail(why, "a required array is null");
  }
  return Status::kOk;
}

Status check_paged_attention(const PagedAttentionParams& p, std::string* why) {
  const Status layout = check_paged_attention_layout(p, why);
  if (layout != Status::kOk) return layout;
  const int32_t* qsl = p.query_start_loc;
  if (qsl[0] != 0) return fail(why, "query_start_loc[0] = " + str(qsl[0]) + ": expected 0");
  const int64_t max_len = p.max_blocks_per_req * p.block_size;
  for (int64_t i = 0; i < p.num_reqs; ++i) {
    const int64_t num_new = static_cast<int64_t>(qsl[i + 1]) - qsl[i];
    if (num_new < 0) {
      return fail(why, "query_start_loc[" + str(i + 1) + "] = " + str(qsl[i + 1]) + " is less than query_start_loc[" +
                           str(i) + "] = " + str(qsl[i]) + ": expected non-decreasing offsets");
    }
    if (num_new == 0) continue;  // nothing of this request is read
    const int64_t seq_len = p.seq_lens[i];
    if (seq_len < num_new) {
      return fail(why, "seq_lens[" + str(i) + "] = " + str(seq_len) + " is less than the request's " + str(num_new) +
                           " query tokens: expected the context to include them");
    }
    if (seq_len > max_len) {
      return fail(why, "seq_lens[" + str(i) + "] = " + str(seq_len) + " exceeds max_blocks_per_req * block_size = " +
                           str(max_len));
    }
    const int32_t* row = p.block_table + i * p.block_table_stride;
    for (int64_t j = 0; j < (seq_len + p.block_size - 1) / p.block_size; ++j) {
      if (row[j] < 0 || row[j] >= p.num_blocks) {
        return fail(why, "block_table[" + str(i) + "][" + str(j) + "] = " + str(row[j]) + " is out of range [0, " +
                             str(p.num_blocks) + ")");
      }
    }
  }
  if (qsl[p.num_reqs] != p.num_tokens) {
    return fail(why, "query_start_loc[" + str(p.num_reqs) + "] = " + str(qsl[p.num_reqs]) + ": expected num_tokens = " +
                         str(p.num_tokens) + " (every query row belongs to a request)");
  }
  return Status::kOk;
}

Status check_reshape_and_cache_layout(const ReshapeAndCacheParams& p, std::string* why) {
  if (!is_float_dtype(p.dtype)) return fail(why, "dtype: expected float32, float16 or bfloat16");
  if (check_cache_dtype(p.dtype, p.cache_dtype.value_or(p.dtype), why) != Status::kOk) return Status::kInvalidArgument;
  if (p.slot_mapping_dtype != DType::kInt32 && p.slot_mapping_dtype != DType::kInt64) {
    return fail(why, "slot_mapping: expected dtype int32 or int64");
  }
  if (p.num_tokens < 0 || p.num_kv_heads < 1 || p.head_dim < 1) {
    return fail(why, "sizes: expected num_tokens >= 0 and num_kv_heads, head_dim >= 1");
  }
  Status s = check_rows("key", p.num_tokens, p.num_kv_heads, p.head_dim, p.key_stride_token, p.key_stride_head, why);
  if (s == Status::kOk) {
    s = check_rows("value", p.num_tokens, p.num_kv_heads, p.head_dim, p.value_stride_token, p.value_stride_head, why);
  }
  if (s == Status::kOk) s = check_cache(p.num_blocks, p.block_size, p.num_kv_heads, p.head_dim, p.cache_stride_block, why);
  if (s != Status::kOk) return s;
  if (p.num_tokens > 0 && (p.key == nullptr || p.value == nullptr || p.key_cache == nullptr ||
                           p.value_cache == nullptr || p.slot_mapping == nullptr)) {
    return fail(why, "a required array is null");
  }
  return Status::kOk;
}

Status check_reshape_and_cache(const ReshapeAndCacheParams& p, std::string* why) {
  const Status layout = check_reshape_and_cache_layout(p, why);
  if (layout != Status::kOk) return layout;
  const int64_t num_slots = p.num_blocks * p.block_size;
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    const int64_t slot = p.slot_mapping_dtype == DType::kInt64 ? static_cast<const int64_t*>(p.slot_mapping)[t]
                                                               : static_cast<const int32_t*>(p.slot_mapping)[t];
    if (slot != -1 && (slot < 0 || slot >= num_slots)) {
      return fail(why, "slot_mapping[" + str(t) + "] = " + str(slot) +
                           " is out of range: expected -1 or [0, num_blocks * block_size = " + str(num_slots) + ")");
    }
  }
  return Status::kOk;
}

}  // namespace kvserve
