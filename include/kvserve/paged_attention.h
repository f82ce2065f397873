// paged_attention: attention of new query tokens over a paged KV cache, for prefill, chunked prefill,
// decode and any mix of them in one call.
//
//   query, out:             [num_tokens, num_heads, head_dim]   tokens of all requests, concatenated
//   key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim]
//   block_table:            [num_reqs, max_blocks_per_req] int32   cache blocks of each request, in order
//   seq_lens:               [num_reqs] int32   context length including this step's tokens
//   query_start_loc:        [num_reqs + 1] int32   request i owns query rows [qsl[i], qsl[i+1])
//
// Query row j of request i sits at position seq_lens[i] - (qsl[i+1] - qsl[i]) + j: its K/V must already
// be in the cache (reshape_and_cache first). With `causal` it attends to positions <= its own; a
// `sliding_window` W keeps positions > own - W; a `softcap` c maps each scaled score s to c*tanh(s/c).
// Head h reads kv head h / (num_heads / num_kv_heads) (GQA). Scores and sums are float32 whatever the
// storage dtype. Caches of a narrower float than the rows (an fp8 KV cache, or a 16-bit one for a
// float32 model; written by reshape_and_cache) are read as the values their elements stand for (no
// scale).
//
// Strides are in elements. The last dimension of every array is contiguous; query/out rows and heads
// may be strided (a view into a fused qkv projection); a cache block is contiguous, blocks may be
// strided (K and V views of one [num_blocks, 2, block_size, ...] tensor).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "kvserve/config.h"
#include "kvserve/dtype.h"
#include "kvserve/export.h"
#include "kvserve/status.h"

namespace kvserve {

struct PagedAttentionParams {
  void* out = nullptr;
  int64_t out_stride_token = 0, out_stride_head = 0;
  const void* query = nullptr;
  int64_t query_stride_token = 0, query_stride_head = 0;
  const void* key_cache = nullptr;
  const void* value_cache = nullptr;
  int64_t cache_stride_block = 0;  // both caches; within a block, [block_size, num_kv_heads, head_dim]
  const int32_t* block_table = nullptr;
  int64_t block_table_stride = 0;  // elements from one request's row to the next
  const int32_t* seq_lens = nullptr;
  const int32_t* query_start_loc = nullptr;

  DType dtype = DType::kFloat32;        // of query and out: kFloat32, kFloat16 or kBFloat16
  // Of both caches: unset = `dtype`; or kFloat8E4M3 / kFloat8E5M2; for float32 rows also kFloat16 / kBFloat16.
  std::optional<DType> cache_dtype;
  int64_t num_tokens = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t num_reqs = 0, max_blocks_per_req = 0, num_blocks = 0, block_size = 0;

  float scale = 1.f;
  bool causal = true;
  int64_t sliding_window = 0;  // 0: none
  float softcap = 0.f;         // 0: none
  // CUDA: split each tile's keys across at most this many thread blocks (flash-decoding; fewer when
  // the split workspace is too small), 0: as many as fill the device. A speed setting, for tuning
  // and benchmarks: any count gives the same values to within float32 rounding. The CPU ignores it.
  int64_t num_splits = 0;
};

// Every size, stride and metadata value the kernel will use, including each block id a request
// reaches, so that the kernel never reads or writes outside the arrays. Returns kOk, or
// kInvalidArgument and, when `why` is not null, a message naming the bad value and what was expected.
// Metadata must be in host memory.
KVSERVE_EXPORT Status check_paged_attention(const PagedAttentionParams& params, std::string* why);

// The part of check_paged_attention that reads no array: dtype, sizes, strides, scalars and null
// pointers. The whole check where the metadata lives in device memory, which the host never reads.
KVSERVE_EXPORT Status check_paged_attention_layout(const PagedAttentionParams& params, std::string* why);

// Runs check_paged_attention, then the kernel on the calling thread's OpenMP team (the team torch
// uses too, so the two never oversubscribe the cores). Vectorized for the best ISA the CPU has (see
// cpu_isa.h).
KVSERVE_EXPORT Status paged_attention_cpu(const PagedAttentionParams& params);

#if KVSERVE_HAS_CUDA
// The same contract with every array in the current CUDA (or HIP) device's memory, enqueued on
// `stream` (a cudaStream_t; nullptr = the default stream); capturable in a CUDA graph.
//
// The host runs check_paged_attention_layout only. The kernels check each metadata value they read
// and never touch memory outside the arrays: the rows of a request whose seq_len or block ids are
// out of range are written as NaN; a request whose query_start_loc entries are out of range or
// decreasing is skipped (its rows are left as they were).
//
// float16/bfloat16 with head_dim 64, 128 or 256 (16-byte aligned rows) run on tensor cores (sm_80+),
// over caches of their own dtype or fp8 (widened in shared memory), with the keys of short batches
// split across thread blocks and merged (flash-decoding); the split partials live in one workspace
// per device, allocated on the first call that splits (16 MiB), so calls on two streams of one
// device must not overlap. Other dtypes and head_dims up to 512 take a portable kernel (the only one
// under HIP); larger head_dims return kUnsupported.
KVSERVE_EXPORT Status paged_attention_cuda(const PagedAttentionParams& params, void* stream);
#endif

}  // namespace kvserve
