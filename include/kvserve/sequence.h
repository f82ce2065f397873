// One sequence of tokens being generated: a request's prompt followed by one sample's output.
//
// One progress model for prefill, chunked prefill, decode and prefix hits (vLLM v1): the tokens
// [0, num_computed_tokens) have their KV in the cache; each step schedules some of the rest.
// With steps scheduled ahead (Scheduler::schedule while a step is in flight), the tokens that steps
// in flight are sampling count too, as placeholders past token_ids: a decode row computes the
// placeholder, its input id filled on the device from the step that samples it.
//
//   token_ids:   | prompt ............ | output ... |
//                |<-- num_computed_tokens -->|        the last sampled token is never computed yet
//   block_ids:   [b0][b1][b2]...              ceil(num_computed_tokens / block_size) physical blocks
//
// The scheduler owns the token ids and finish state; the KV-cache manager owns the block fields.
#pragma once

#include <cstdint>
#include <vector>

#include "kvserve/block_hash.h"
#include "kvserve/block_pool.h"
#include "kvserve/finish_reason.h"

namespace kvserve {

struct Sequence {
  std::vector<int32_t> token_ids;  // prompt, then the sampled tokens
  int32_t num_computed_tokens = 0;
  int32_t num_placeholders = 0;  // tokens being sampled by steps in flight (0, 1, or 2 between two calls)
  int32_t sample_entry = -1;     // its logits_indices entry in the latest step that samples it
  // The draft tokens its row in the step being built, or in flight, verifies (speculative
  // decoding): until that step closes, how many tokens it lands is unknown, so it is not scheduled.
  std::vector<int32_t> draft_ids;

  std::vector<int32_t> block_ids;       // logical block i -> physical block id
  uint64_t block_ids_epoch = 0;         // renewed whenever block_ids changes other than by appending
  std::vector<BlockHash> block_hashes;  // hashes of full blocks 0.., computed once, kept across preemption
  std::vector<BlockRef> cached_refs;    // cached content of full blocks 0.. registered so far
  BlockHash root_hash;                  // hash of the request's extra keys: the parent of block 0

  int32_t sample_index = 0;
  FinishReason finish_reason = FinishReason::kNone;
  int32_t stop_token_id = -1;  // the EOS or stop token that finished it, -1 for none

  int32_t num_tokens() const { return static_cast<int32_t>(token_ids.size()); }
  int32_t num_tokens_with_placeholders() const { return num_tokens() + num_placeholders; }
  bool finished() const { return finish_reason != FinishReason::kNone; }
};

}  // namespace kvserve
