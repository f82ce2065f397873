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
// update_from_output() appends the sampled tokens and applies the stop conditions.
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

  // Builds the next batch. Throws std::logic_error if the previous step sampled tokens that
  // update_from_output has not received yet.
  const SchedulerOutput& schedule();

  // Applies the tokens sampled for the last schedule()'s logits_indices (num_sampled of them, in that
  // order) and returns one update per sampled entry whose sequence is still running, valid until the
  // next schedule(). Sequences ended since schedule() (abort, finish_requests) are skipped.
  const std::vector<SampleUpdate>& update_from_output(const int32_t* sampled_token_ids, int64_t num_sampled);

  // The model run of the last schedule() failed: its requests end (kAbort), the prefix cache forgets
  // every block the step was to write (registered when it was scheduled, its KV perhaps never
  // written, even if its request ended since), and the step closes without tokens.
  void fail_step();

  // End requests (all their samples), e.g. on a stop string; unknown ids throw before anything ends.
  void finish_requests(const std::vector<std::string>& request_ids, FinishReason reason);
  // End one sample of a request; before the prompt is computed, the request has one sequence and
  // ending it ends the request.
  void finish_sample(std::string_view request_id, int32_t sample_index, FinishReason reason);
  // End a request with FinishReason::kAbort, whatever its state; frees everything it holds.
  void abort(std::string_view request_id);

  bool has_unfinished_requests() const { return !slot_of_.empty(); }
  int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  int32_t num_waiting() const { return static_cast<int32_t>(waiting_.size()); }
  SchedulerStats stats() const;

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
  };

  int32_t handle_of(std::string_view request_id) const;
  int32_t tokens_to_schedule(int32_t remaining, int32_t budget) const;
  void schedule_running(int32_t& budget, bool& preempted);
  void schedule_waiting(int32_t& budget);
  void preempt_last_running();
  void emit_rows(int32_t handle);
  void finish_block_table();
  void fork(Request& request);
  bool apply_stop_conditions(const Request& request, Sequence& seq);
  void end_sample(int32_t handle, Sequence& seq, FinishReason reason);
  void end_request(int32_t handle, FinishReason reason);
  void drop_finished_running();

  SchedulerConfig config_;
  KVCacheManager manager_;

  std::deque<Request> requests_;  // indexed by handle; a deque keeps ids in place as it grows
  std::vector<int32_t> free_handles_;
  std::vector<int32_t> retired_handles_;  // ended: reusable from the next schedule() on
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
  std::vector<SampledEntry> sampled_;
  std::vector<SampleUpdate> updates_;

  int64_t prefix_cache_queries_ = 0;
  int64_t prefix_cache_hits_ = 0;
  int64_t num_preemptions_ = 0;
};

}  // namespace kvserve
