// What the attention kernels read of a step's metadata, checked value by value on the device.
//
// The host never reads device memory, so every metadata value is checked where a kernel reads it:
// a kernel that finds one out of range keeps its reads and writes inside the arrays and poisons
// the rows it owns with NaN (or, when it cannot tell which rows are its own, writes nothing).
// Metadata is what the host copies in before a step and no kernel writes: the tensor-core kernel
// reads it before it waits for the kernel before (compat.cuh), so the reads below go through L2.
//
// Rows: each request's query rows, flattened as (token, head of the kv head's group):
//
//   request row rr = (token - first token of the request) * group + (head % group)
//
// so that one kv head's whole group of query heads shares every key and value it loads (GQA).
#pragma once

#include "compat.cuh"
#include "kvserve/paged_attention.h"

namespace kvserve::gpu {

// A request row's query (its token's offset in the request) and head in the kv head's group, by one
// 32-bit unsigned division: a step's rows fit 32 bits (paged_attention_cuda checks num_tokens * group),
// where a 64-bit division is a subroutine call with code of its own at every use.
struct RowSplit {
  uint32_t group;

  __device__ explicit RowSplit(int64_t group_size) : group(static_cast<uint32_t>(group_size)) {}
  __device__ uint32_t query(int64_t rr) const { return static_cast<uint32_t>(rr) / group; }
  __device__ uint32_t head(int64_t rr) const { return static_cast<uint32_t>(rr) % group; }
};

struct RequestRows {
  int64_t token_begin = 0;  // the request's first query token (row of query and out)
  int64_t num_queries = 0;
  int64_t seq_len = 0;
  bool rows_ok = false;     // query_start_loc entries in [0, num_tokens] and ordered: rows are known
  bool context_ok = false;  // rows_ok, and num_queries <= seq_len <= max_blocks_per_req * block_size
};

__device__ inline RequestRows read_request(const PagedAttentionParams& p, int64_t req) {
  RequestRows r;
  const int64_t begin = load_through_l2(p.query_start_loc + req), end = load_through_l2(p.query_start_loc + req + 1);
  r.rows_ok = 0 <= begin && begin <= end && end <= p.num_tokens;
  if (!r.rows_ok) return r;
  r.token_begin = begin;
  r.num_queries = end - begin;
  r.seq_len = load_through_l2(p.seq_lens + req);
  r.context_ok = r.num_queries <= r.seq_len && r.seq_len <= p.max_blocks_per_req * p.block_size;
  return r;
}

// The request that owns query token `token`: the last i with query_start_loc[i] <= token (requests
// with no query rows share their start with the next one and are passed over). The caller checks
// with read_request that the token really lies in the request's rows.
__device__ inline int64_t request_of_token(const PagedAttentionParams& p, int64_t token) {
  int64_t lo = 0, hi = p.num_reqs - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (load_through_l2(p.query_start_loc + mid) <= token) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Tiles of `rows_per_tile` request rows, numbered over all requests without a plan from the host:
// request i's tiles start at index i + floor(query_start_loc[i] * group / rows_per_tile), which
// leaves each request at least as many indices as it has tiles. So a grid of
// num_reqs + num_tokens * group / rows_per_tile blocks covers every tile; a block whose index falls
// past its request's last tile has nothing to do. Returns false for such a block.
//
// The owner of an index is found by binary search over query_start_loc, a chain of log2(num_reqs)
// dependent reads. When every request may have the same number q of queries (a decode step: q = 1),
// request i would start at i * q: the owner is then worked out without reads and confirmed by the
// two entries of its own that read_request reads next; only a step of mixed lengths searches.
__device__ inline bool locate_tile(const PagedAttentionParams& p, int64_t group, int64_t rows_per_tile,
                                   int64_t index, int64_t* req, int64_t* tile) {
  auto first_index = [&](int64_t i) {
    // Clamped so that a corrupt entry cannot overflow the search; read_request rejects it later.
    const int64_t start = min_i64(max_i64(load_through_l2(p.query_start_loc + i), 0), p.num_tokens);
    return i + start * group / rows_per_tile;
  };
  int64_t lo = 0, hi = p.num_reqs - 1;
  if (p.num_tokens % p.num_reqs == 0) {
    const int64_t q = p.num_tokens / p.num_reqs;
    auto uniform_first = [&](int64_t i) { return i + i * q * group / rows_per_tile; };
    int64_t guess = min_i64(index * rows_per_tile / (rows_per_tile + q * group), hi);
    while (guess < hi && uniform_first(guess + 1) <= index) ++guess;
    while (guess > 0 && uniform_first(guess) > index) --guess;
    // Its own start and the next request's as guessed: the search would stop here too.
    const int32_t* starts = p.query_start_loc + guess;
    if (load_through_l2(starts) == guess * q && load_through_l2(starts + 1) == (guess + 1) * q) lo = hi = guess;
  }
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (first_index(mid) <= index) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  *req = lo;
  *tile = index - first_index(lo);
  return *tile >= 0;
}

// The keys a query at `position` may attend to: [first_visible_key, visible_key_end).
__device__ inline int64_t first_visible_key(const PagedAttentionParams& p, int64_t position) {
  return p.sliding_window > 0 ? max_i64(0, position - p.sliding_window + 1) : 0;
}

__device__ inline int64_t visible_key_end(const PagedAttentionParams& p, int64_t position, int64_t seq_len) {
  return p.causal ? position + 1 : seq_len;
}

// One scaled (and soft-capped) score.
__device__ inline float attention_score(const PagedAttentionParams& p, float dot) {
  const float x = dot * p.scale;
  return p.softcap > 0.f ? p.softcap * tanhf(x / p.softcap) : x;
}

// Keys are below seq_len, an int32, and the launchers check that block_size fits an int32: the
// divisions stay 32-bit (a 64-bit one costs several times more, once per key and thread).
//
// The cache block holding `key` of a request, or -1 when the block table entry is out of range.
__device__ inline int64_t block_of_key(const PagedAttentionParams& p, const int32_t* block_row, int32_t key) {
  const int32_t block = block_row[key / static_cast<int32_t>(p.block_size)];
  return block >= 0 && block < p.num_blocks ? block : -1;
}

// Element offset of (key, kv_head) in either cache, given its block.
__device__ inline int64_t cache_offset(const PagedAttentionParams& p, int64_t block, int32_t key, int64_t kv_head) {
  const int64_t offset = key % static_cast<int32_t>(p.block_size);
  return block * p.cache_stride_block + (offset * p.num_kv_heads + kv_head) * p.head_dim;
}

// A key's place in the paged cache, (block table entry, slot in its block), stepped forward without
// dividing: a kernel that walks keys at a fixed stride pays for one division, not one per key.
struct KeyPlace {
  int32_t entry, offset;

  __device__ KeyPlace(int32_t key, int32_t block_size) : entry(key / block_size), offset(key % block_size) {}

  // Forward by the keys whose own place is `step` (both offsets are below block_size: one carry at most).
  __device__ void advance(const KeyPlace& step, int32_t block_size) {
    entry += step.entry;
    offset += step.offset;
    if (offset >= block_size) {
      offset -= block_size;
      ++entry;
    }
  }
};

}  // namespace kvserve::gpu
