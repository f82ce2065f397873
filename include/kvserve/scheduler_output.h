// What one scheduler step hands to the model runner, and what update_from_output hands back.
//
// SchedulerOutput is flat arrays, reused across steps and valid until the next schedule():
//
//   rows r = 0 .. num_reqs-1        one per scheduled sequence (a request with n samples has n rows)
//   tokens t = 0 .. num_tokens-1    row r owns t in [query_start_loc[r], query_start_loc[r+1])
//
//   input_ids[t]        the token to compute
//   positions[t]        its position in its sequence
//   slot_mapping[t]     where its K/V goes: block_table[r][p / block_size] * block_size + p % block_size
//   seq_lens[r]         the row's tokens in the cache after this step (cached context + new tokens)
//   block_table[r][i]   physical block of the row's logical block i; 0 (the null block) past its end
//   logits_indices[k]   token t whose hidden state is sampled: the last token of every row whose
//                       sequence is fully computed after this step. When that completes the prompt of
//                       a request with n > 1 samples, the row repeats n times (sampled_sample_indices
//                       0..n-1), and from the next step on the request runs as n rows.
//   sampled_draft_offsets[k]
//                       speculative decoding: a row that verifies draft tokens (its input ids after the
//                       first) samples each of its tokens, and entry k's token is the j-th draft's
//                       (j = sampled_draft_offsets[k], 0 for a row's first token and every other row):
//                       the sample after the drafts input_ids[logits_indices[k] - j + 1 ..
//                       logits_indices[k]]. update_from_output keeps a row's samples in order while
//                       each equals the draft that followed it (the rest are rejected), and the
//                       sample that differs, or the one after the last draft
//   blocks_to_copy[c]   {src, dst}: copy-on-write of a block samples shared; run before the forward pass
//   deferred_input_tokens[d], deferred_input_sources[d]
//                       token t = deferred_input_tokens[d] is a placeholder (input_ids[t] = -1): its id
//                       is entry deferred_input_sources[d] of the previous step's sampled tokens, which
//                       were not known when this step was scheduled (scheduler.h: steps scheduled ahead)
//
// Blocks a step registers in the prefix cache may be read by another row of the same step, so the
// model runner writes every new K/V of a layer (reshape_and_cache) before that layer's attention.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvserve/finish_reason.h"

namespace kvserve {

struct SchedulerOutput {
  int32_t num_reqs = 0;
  int32_t num_tokens = 0;
  int32_t max_blocks_per_req = 0;  // block_table width: the most blocks any row holds, at least 1

  std::vector<int32_t> input_ids;        // [num_tokens]
  std::vector<int64_t> positions;        // [num_tokens]
  std::vector<int64_t> slot_mapping;     // [num_tokens]
  std::vector<int32_t> query_start_loc;  // [num_reqs + 1], query_start_loc[0] = 0
  std::vector<int32_t> seq_lens;         // [num_reqs]
  std::vector<int32_t> block_table;      // [num_reqs, max_blocks_per_req], row-major

  std::vector<std::string_view> req_ids;  // [num_reqs]
  std::vector<int32_t> req_handles;       // [num_reqs] the request's handle (see SampleUpdate)
  std::vector<int32_t> sample_indices;    // [num_reqs] which of the request's n samples

  std::vector<int64_t> logits_indices;          // [num_sampled]
  std::vector<int32_t> sampled_rows;            // [num_sampled] the row of each sampled entry
  std::vector<int32_t> sampled_sample_indices;  // [num_sampled]
  std::vector<int32_t> sampled_draft_offsets;   // [num_sampled]

  std::vector<int64_t> blocks_to_copy;  // [num_copies, 2]

  std::vector<int64_t> deferred_input_tokens;   // [num_deferred]
  std::vector<int32_t> deferred_input_sources;  // [num_deferred]

  std::vector<std::string> preempted_req_ids;  // preempted by recompute in this step
  std::vector<std::string> finished_req_ids;   // ended outside update_from_output since the last step

  int32_t num_sampled() const { return static_cast<int32_t>(logits_indices.size()); }
  int32_t num_copies() const { return static_cast<int32_t>(blocks_to_copy.size() / 2); }
  int32_t num_deferred() const { return static_cast<int32_t>(deferred_input_tokens.size()); }
};

// One sampled token applied to one sequence.
struct SampleUpdate {
  // A small integer naming the request while it lives (reused once it has ended and a step passed).
  int32_t req_handle = -1;
  std::string_view request_id;  // valid until the next schedule()
  int32_t sample_index = 0;
  int32_t sampled_index = 0;    // its entry in the step's logits_indices (the row of its logprobs)
  int32_t token_id = 0;         // the token appended this step
  FinishReason finish_reason = FinishReason::kNone;
  int32_t stop_token_id = -1;   // the EOS or stop token when finish_reason is kStop by a token
};

struct SchedulerStats {
  int32_t num_blocks = 0;       // as configured, the null block included
  int32_t num_free_blocks = 0;  // in the free queue (cached ones included): num_blocks - 1 when idle
  double kv_cache_usage = 0.0;  // fraction of usable blocks in use, 0..1
  int64_t prefix_cache_queries = 0;  // prompt tokens looked up at admission
  int64_t prefix_cache_hits = 0;     // of those, found in the cache
  int64_t num_preemptions = 0;
  int64_t num_evictions = 0;    // cached blocks reused for other content
  // Speculative decoding (vLLM's spec_decode counters): rows that verified drafts, their draft
  // tokens, and the drafts the model agreed with, in all and by position (index 0: first drafts).
  int64_t num_drafts = 0;
  int64_t num_draft_tokens = 0;
  int64_t num_accepted_tokens = 0;
  std::vector<int64_t> num_accepted_tokens_per_pos;  // [num_speculative_tokens]
};

}  // namespace kvserve
