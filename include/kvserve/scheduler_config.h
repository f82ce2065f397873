// The scheduler's limits (names as in vLLM's engine arguments).
#pragma once

#include <cstdint>

#include "kvserve/export.h"

namespace kvserve {

// Upper bounds. The scheduler reserves its per-step arrays once, at their hard bound, so that they
// never move (views of them stay valid): the bounds keep that reservation far below the memory of
// any machine while sitting well above real configurations (vLLM's defaults: 256 or 1024 sequences,
// 8192 or 16384 tokens per step; the longest contexts: about 10M tokens).
inline constexpr int32_t kMaxNumSeqs = 1 << 16;
inline constexpr int32_t kMaxNumBatchedTokens = 1 << 24;
inline constexpr int32_t kMaxModelLen = 1 << 24;
// The block table's hard bound: max_num_seqs rows of the most blocks one sequence holds,
// min(ceil(max_model_len / block_size), num_blocks - 1) (1 GiB of int32).
inline constexpr int64_t kMaxBlockTableEntries = int64_t{1} << 28;
// Draft tokens one decode verifies at most, and the longest n-gram prompt lookup matches.
inline constexpr int32_t kMaxSpeculativeTokens = 64;
inline constexpr int32_t kMaxPromptLookup = 1024;

struct SchedulerConfig {
  int32_t num_blocks = 0;                // KV-cache blocks, block 0 (the null block) included
  int32_t block_size = 16;               // tokens per block: a power of two in [1, 256]
  int32_t max_num_seqs = 256;            // sequences running at once (n samples count n), at most kMaxNumSeqs
  int32_t max_num_batched_tokens = 8192; // tokens computed per step, at most kMaxNumBatchedTokens
  int32_t max_model_len = 0;             // prompt + output tokens of one sequence, at most kMaxModelLen
  bool enable_prefix_caching = true;
  bool enable_chunked_prefill = true;    // off: a prompt is computed in one step or waits
  // Speculative decoding by prompt lookup (ngram_proposer.h): a decode verifies up to this many
  // draft tokens in the same step (0: off, at most kMaxSpeculativeTokens), found by matching the
  // last prompt_lookup_min..prompt_lookup_max tokens (1 <= min <= max <= kMaxPromptLookup).
  int32_t num_speculative_tokens = 0;
  int32_t prompt_lookup_min = 5;
  int32_t prompt_lookup_max = 5;
  // A step proposes no drafts while more sequences than this run (0: no limit): a large batch
  // already keeps the hardware busy, and verifying drafts the model refuses costs it.
  int32_t speculative_disable_by_batch_size = 0;
  // A sequence computes at most this many tokens a step (0: as many as the budget leaves; needs
  // chunked prefill): a long prompt leaves room for the prompts and decodes behind it. (Last, so
  // that embedders' initializers in field order keep their meaning.)
  int32_t long_prefill_token_threshold = 0;
};

// Throws std::invalid_argument naming the first field out of range and what it must be.
KVSERVE_EXPORT void validate(const SchedulerConfig& config);

// The most block ids one sequence holds: min(ceil(max_model_len / block_size), num_blocks - 1), in
// int64 (no overflow for any int32 fields).
KVSERVE_EXPORT int64_t max_blocks_per_seq(const SchedulerConfig& config);

}  // namespace kvserve
