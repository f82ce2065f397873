// What paged_attention_cpu hands to the kernel of one ISA: a unit of work, the scratch it runs in,
// and where a work item that covers only part of the keys leaves its unnormalized result.
#pragma once

#include <cstdint>

#include "kvserve/paged_attention.h"

namespace kvserve::cpu {

// Keys per step of the online softmax: one 16-lane row of scores per query row.
inline constexpr int kChunk = 16;

// Query rows [token_begin, token_end) of request `req` and the heads of kv head `kv_head`, against
// key positions [key_begin, key_end). Tile row r is token token_begin + r / group, head
// kv_head * group + r % group (group = num_heads / num_kv_heads).
struct AttentionWork {
  int32_t req, kv_head;
  int32_t token_begin, token_end;
  int32_t key_begin, key_end;
  int64_t partial_row;  // first row of its slot in AttentionPartials; -1: write `out` directly
};

// Results of work items that split a tile's keys, merged afterwards: per row, the output before
// normalization [head_dim], the running max score and the sum of exp(score - max).
struct AttentionPartials {
  float* out;
  float* max;
  float* sum;
};

// One thread's scratch, for tiles of up to `rows` rows (sizes in the comments), 64-byte aligned.
struct AttentionScratch {
  float* q;          // [rows, head_dim]   queries of the tile, as the score kernel wants them
  float* k;          // [head_dim, kChunk] keys of one chunk, transposed
  float* v;          // [kChunk, head_dim] values of one chunk, as float
  float* s;          // [rows, kChunk]     scores, then probabilities
  float* out;        // [rows, head_dim]   output before normalization
  float* max;        // [rows]
  float* sum;        // [rows]
  int32_t* key_begin;  // [rows] the keys each row may see: [key_begin, key_end)
  int32_t* key_end;
};

// Runs one work item; `next` (or null) is the item the thread will most likely run after it, whose
// first keys are prefetched while this one finishes.
using AttendFn = void (*)(const PagedAttentionParams&, const AttentionWork&, const AttentionWork* next,
                          const AttentionScratch&, const AttentionPartials&);

// The kernel of one ISA for a dtype, the caches' dtype and a head_dim, or null where that ISA has none.
AttendFn attend_portable(DType dtype, DType cache_dtype, int64_t head_dim);
AttendFn attend_avx2(DType dtype, DType cache_dtype, int64_t head_dim);
AttendFn attend_avx512(DType dtype, DType cache_dtype, int64_t head_dim);
AttendFn attend_avx512_bf16(DType dtype, DType cache_dtype, int64_t head_dim);

}  // namespace kvserve::cpu
