// The continuous-batching scheduler (vLLM v1's progress model, see sequence.h).
//
// Each step, schedule():
//   1. running requests, in priority order: each unfinished sequence gets its remaining tokens (a
//      decode: one; an unfinished prefill: the next chunk) within max_num_batched_tokens. When the
//      blocks run out, the running request that runs last (lowest priority, latest arrival) is
//      preempted by recompute: its blocks are freed (the prefix cache keeps them warm) and it goes
//      back to the waiting queue, where its order puts it ahead of everything that arrived later;
//   2. if nobody was preempted, waiting requests in order, while tokens (chunked prefill splits a
//      long prompt), max_num_seqs and free blocks last, after taking their prefix-cache hits.
// A sequence computes at most long_prefill_token_threshold tokens a step (when set), drafts
// included: a long prompt takes a slice of each step, not the whole budget, so the prompts and
// decodes behind it keep moving (vLLM's long_prefill_token_threshold).
// update_from_output() appends the sampled tokens and applies the stop conditions.
//
// Speculative decoding (SchedulerConfig::num_speculative_tokens > 0): a decode row whose tokens are
// all known may verify draft tokens (ngram_proposer.h) in the same step: it computes its last token
// and the drafts, samples after each of them, and update_from_output keeps the samples in order
// while each equals the draft that followed it, then one more (the sample that differs, or the one
// after the last draft): at least one token a step, as without drafts. Sampling at a draft's
// position as if the drafts before it were the sequence's is exact, greedy or random: a random draft
// is kept with the probability the model gives it, and a rejected one is replaced by a sample of the
// model's distribution without it. The cache then forgets the rejected drafts' positions (their
// blocks past the sequence's end are freed). Drafts never exceed what max_tokens and max_model_len
// leave, nor the step's token budget less a token for each running sequence after it (drafts never
// crowd out a decode); a sequence whose drafts are in flight is not scheduled ahead.
// A step that starts with more than speculative_disable_by_batch_size sequences running proposes none.
//
// Steps scheduled ahead (vLLM's async scheduling): schedule() may run while the step before it is
// still in flight, its tokens unknown. A sequence that step samples then decodes a placeholder: the
// row's input id is -1 and deferred_input_tokens / deferred_input_sources say which of the previous
// step's sampled tokens the model runner puts there. Steps close in order (update_from_output or
// fail_step), at most two open at once. What follows from a token not yet known:
//   - a sequence certain to end by length when its placeholder lands is not scheduled again;
//   - a request whose prompt completes in the step in flight waits for it before it forks (n > 1);
//   - a sequence that ends on a token (EOS, stop, a stop string) has one row too many in flight:
//     its token is dropped, the KV it writes goes to a block freed at the end (the device runs the
//     steps in order, so whoever gets the block next writes after it);
//   - only blocks full of known tokens enter the prefix cache; a block completed by a placeholder
//     is registered the next time its sequence is scheduled;
//   - a request preempted while its token is in flight takes the token in the waiting queue;
//   - a row that decoded a token the sampler changed afterwards is retracted (retract_in_flight);
//   - a handle (SampleUpdate::req_handle) is reused only once no open step holds it.
//
// Every request finishes: add_request rejects a request that could not fit in the cache on its
// own, and the request that runs first is never the one preempted, so it always makes progress.
//
// Not thread-safe: one thread drives it (the engine loop). Bad input throws std::invalid_argument
// (ValueError in Python) naming the value; calls out of order throw std::logic_error.
#pragma once

#include <cstdint>
#include <deque>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kvserve/export.h"
#include "kvserve/kv_cache_manager.h"
#include "kvserve/request.h"
#include "kvserve/scheduler_config.h"
#include "kvserve/scheduler_output.h"

namespace kvserve {

class KVSERVE_EXPORT Scheduler {
 public:
  explicit Scheduler(const SchedulerConfig& config);

  const SchedulerConfig& config() const { return config_; }

  // Queues a request and returns its handle (SampleUpdate::req_handle). Throws
  // std::invalid_argument for a request id in use, an empty prompt, a negative token id,
  // prompt + 1 > max_model_len, max_tokens < 1, min_tokens outside [0, max_tokens], n outside
  // [1, max_num_seqs], or a request too large for the whole cache.
  int32_t add_request(std::string request_id, std::vector<int32_t> prompt_token_ids, RequestParams params);

  // Builds the next batch. A step with rows opens, to be closed by update_from_output or fail_step;
  // one step may be open when this is called (steps scheduled ahead). Throws std::logic_error when
  // two are.
  const SchedulerOutput& schedule();

  // Closes the oldest open step: applies the tokens sampled for its logits_indices (num_sampled of
  // them, in that order) and returns one update per sampled entry whose sequence has not ended,
  // valid until the next schedule(). Sequences ended since that step was scheduled (abort,
  // finish_requests, a stop in the step before) are skipped. With no step open, 0 tokens is a no-op.
  const std::vector<SampleUpdate>& update_from_output(const int32_t* sampled_token_ids, int64_t num_sampled);

  // The token of the step just closed that a sequence's row in the open step after it decoded (its
  // deferred input) was not the one update_from_output applied: a step scheduled ahead read a
  // sampled token before the sampler settled it. That row is void: its token will be dropped, and
  // the sequence computes the position again in the next step. Returns whether there was such a
  // row (none for a sequence ended, preempted, or not scheduled in that step). Call it between
  // update_from_output and the next schedule(): std::logic_error with two steps open;
  // std::invalid_argument for an unknown request or sample index.
  bool retract_in_flight(std::string_view request_id, int32_t sample_index);

  // The model run of an open step failed: every open step closes without tokens (a step scheduled
  // ahead depends on the tokens of the one before), their requests end (kAbort), and the prefix
  // cache forgets every block they were to write (registered when scheduled, the KV perhaps never
  // written, even if the request ended since). Returns the ids of the requests it ended.
  std::vector<std::string> fail_step();

  // End requests (all their samples), e.g. on a stop string; unknown ids throw before anything ends.
  // Here and in finish_sample, `reason` is kStop, kLength or kAbort (std::invalid_argument otherwise).
  void finish_requests(const std::vector<std::string>& request_ids, FinishReason reason);
  // End one sample of a request; before the prompt is computed, the request has one sequence and
  // ending it ends the request.
  void finish_sample(std::string_view request_id, int32_t sample_index, FinishReason reason);
  // End a request with FinishReason::kAbort, whatever its state; frees everything it holds.
  void abort(std::string_view request_id);

  bool has_unfinished_requests() const { return !slot_of_.empty(); }
  int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  int32_t num_waiting() const { return static_cast<int32_t>(waiting_.size()); }
  // The running requests' sequences (a request of n samples runs n): the batch's places in use.
  int32_t num_running_seqs() const { return num_running_seqs_; }
  SchedulerStats stats() const;
  // Drops the prefix cache's entries when no request holds a block (KVCacheManager); false while one does.
  bool reset_prefix_cache() { return manager_.reset_prefix_cache(); }

  // For tests and debugging: the live request with this id (nullptr when none), and the block state.
  const Request* find_request(std::string_view request_id) const;
  const KVCacheManager& kv_cache_manager() const { return manager_; }

 private:
  struct WaitingKey {
    const Request* request;
    int32_t handle;
    bool operator<(const WaitingKey& other) const { return runs_before(*request, *other.request); }
  };
  struct SampledEntry {
    int32_t handle;
    int32_t sample_index;
    bool forks;  // completes the prompt of an unforked request with n > 1
    bool retracted = false;  // its row decoded a token that changed (retract_in_flight): dropped
    int32_t draft_offset = 0;  // SchedulerOutput::sampled_draft_offsets: > 0 continues a chain of drafts
    int32_t draft = -1;        // the draft token input after it, which its sample must equal for the chain to go on
  };
  // A step scheduled and not yet closed.
  struct OpenStep {
    std::vector<SampledEntry> sampled;   // one per logits_indices entry
    std::vector<int32_t> handles;        // of its rows
    std::vector<int32_t> written_blocks; // where its tokens' K/V goes
  };
  static constexpr int32_t kMaxOpenSteps = 2;

  int32_t handle_of(std::string_view request_id) const;
  int32_t tokens_to_schedule(int32_t remaining, int32_t budget) const;
  int32_t propose_drafts(const Request& request, Sequence& seq, int32_t budget);
  void end_drafts(Sequence& seq);
  void schedule_running(int32_t& budget, bool& preempted);
  void schedule_waiting(int32_t& budget);
  void preempt_last_running();
  void emit_rows(int32_t handle);
  void finish_block_table();
  void fork(Request& request);
  bool apply_stop_conditions(const Request& request, Sequence& seq);
  bool ends_by_length(const Request& request, int32_t num_tokens) const;
  void close_oldest_step();
  void end_sample(int32_t handle, Sequence& seq, FinishReason reason);
  void end_request(int32_t handle, FinishReason reason);
  void drop_finished_running();

  SchedulerConfig config_;
  KVCacheManager manager_;

  std::deque<Request> requests_;  // indexed by handle; a deque keeps ids in place as it grows
  std::vector<int32_t> free_handles_;
  // Ended requests' handles, each with the number of steps opened when it ended: reusable once
  // that many have closed (no open step holds it), from the next schedule() on.
  std::vector<std::pair<int32_t, uint64_t>> retired_handles_;
  std::unordered_map<std::string, int32_t> slot_of_;
  uint64_t num_added_ = 0;

  std::vector<int32_t> running_;  // handles in runs_before order
  std::set<WaitingKey> waiting_;
  int32_t num_running_seqs_ = 0;  // sum of num_seqs() over running requests
  bool running_has_finished_ = false;

  SchedulerOutput output_;
  std::vector<std::string> finished_since_step_;
  std::vector<SlotPlan> plans_;
  std::vector<const Sequence*> row_seqs_;
  // What each block_table row held after the last step: a row whose sequence and epoch are
  // unchanged only needs the blocks appended since (the table is rewritten when its width changes).
  struct TableRow {
    const Sequence* seq;
    uint64_t epoch;
    size_t num_blocks;
  };
  std::vector<TableRow> table_rows_;
  OpenStep open_[kMaxOpenSteps];  // oldest first
  int32_t num_open_ = 0;
  uint64_t num_opened_ = 0;
  uint64_t num_closed_ = 0;
  std::vector<SampleUpdate> updates_;

  int64_t prefix_cache_queries_ = 0;
  int64_t prefix_cache_hits_ = 0;
  int64_t num_preemptions_ = 0;
  bool drafting_ = false;  // whether this step proposes drafts (speculative_disable_by_batch_size)
  int64_t num_drafts_ = 0;
  int64_t num_draft_tokens_ = 0;
  std::vector<int64_t> num_accepted_per_pos_;
};

}  // namespace kvserve
