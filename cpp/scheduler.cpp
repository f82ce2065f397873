// The scheduler's request lifecycle: add, end (finish, abort) and the bookkeeping they share.
// The step itself lives in scheduler_step.cpp, the sampled tokens in scheduler_update.cpp.
#include "kvserve/scheduler.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace kvserve {

namespace {

void check_token_ids(const std::vector<int32_t>& token_ids, const char* name) {
  for (size_t i = 0; i < token_ids.size(); ++i) {
    if (token_ids[i] < 0) {
      throw std::invalid_argument(std::string(name) + "[" + std::to_string(i) + "] = " +
                                  std::to_string(token_ids[i]) + ": token ids must be >= 0");
    }
  }
}

void check_params(const RequestParams& params, const SchedulerConfig& config) {
  if (params.max_tokens < 1) {
    throw std::invalid_argument("max_tokens must be >= 1, got " + std::to_string(params.max_tokens));
  }
  if (params.min_tokens < 0 || params.min_tokens > params.max_tokens) {
    throw std::invalid_argument("min_tokens must be in [0, max_tokens = " + std::to_string(params.max_tokens) +
                                "], got " + std::to_string(params.min_tokens));
  }
  if (params.n < 1 || params.n > config.max_num_seqs) {
    throw std::invalid_argument("n must be in [1, max_num_seqs = " + std::to_string(config.max_num_seqs) +
                                "], got " + std::to_string(params.n));
  }
  if (!std::isfinite(params.arrival_time)) {
    throw std::invalid_argument("arrival_time must be finite, got " + std::to_string(params.arrival_time));
  }
  check_token_ids(params.eos_token_ids, "eos_token_ids");
  check_token_ids(params.stop_token_ids, "stop_token_ids");
}

// kStop, kLength or kAbort: not kNone (still running), nor a value cast from an integer past the
// enum, which would end a sequence with a reason that has no name.
void check_finished_reason(FinishReason reason, const char* fn) {
  if (reason == FinishReason::kStop || reason == FinishReason::kLength || reason == FinishReason::kAbort) return;
  throw std::invalid_argument(std::string(fn) + ": reason must be a finished reason (stop, length or abort), got " +
                              (reason == FinishReason::kNone ? std::string("none")
                                                             : std::to_string(static_cast<int>(reason))));
}

}  // namespace

Scheduler::Scheduler(const SchedulerConfig& config)
    : config_((validate(config), config)),
      manager_(config.num_blocks, config.block_size, config.enable_prefix_caching) {
  // Every per-step array has a hard bound. Reserving it keeps steps free of reallocations and the
  // buffers in place for the scheduler's lifetime, so a view kept past its step reads newer data,
  // never freed memory. Untouched capacity costs address space, not resident memory.
  const auto tokens = static_cast<size_t>(config.max_num_batched_tokens);
  const auto seqs = static_cast<size_t>(config.max_num_seqs);
  // validate() bounds these, and seqs * blocks_per_seq by kMaxBlockTableEntries.
  const auto blocks_per_seq = static_cast<size_t>(max_blocks_per_seq(config));
  output_.input_ids.reserve(tokens);
  output_.positions.reserve(tokens);
  output_.slot_mapping.reserve(tokens);
  output_.query_start_loc.reserve(seqs + 1);
  output_.seq_lens.reserve(seqs);
  output_.block_table.reserve(seqs * blocks_per_seq);
  output_.req_ids.reserve(seqs);
  output_.req_handles.reserve(seqs);
  output_.sample_indices.reserve(seqs);
  // A sequence samples once a step, and after each of its drafts: these take the step's tokens.
  const size_t entries = seqs + std::min(tokens, seqs * static_cast<size_t>(config.num_speculative_tokens));
  output_.logits_indices.reserve(entries);
  output_.sampled_rows.reserve(entries);
  output_.sampled_sample_indices.reserve(entries);
  output_.sampled_draft_offsets.reserve(entries);
  output_.blocks_to_copy.reserve(2 * seqs);
  output_.query_start_loc.push_back(0);
  row_seqs_.reserve(seqs);
  output_.deferred_input_tokens.reserve(seqs);
  output_.deferred_input_sources.reserve(seqs);
  for (OpenStep& step : open_) {
    step.sampled.reserve(entries);
    step.handles.reserve(seqs);
    step.written_blocks.reserve(tokens);
  }
  updates_.reserve(entries);
  num_accepted_per_pos_.assign(static_cast<size_t>(config.num_speculative_tokens), 0);
}

int32_t Scheduler::add_request(std::string request_id, std::vector<int32_t> prompt_token_ids, RequestParams params) {
  if (slot_of_.count(request_id) != 0) {
    throw std::invalid_argument("request_id '" + request_id + "' is already in use by an unfinished request");
  }
  if (prompt_token_ids.empty()) {
    throw std::invalid_argument("prompt_token_ids of request '" + request_id + "' is empty: expected at least one token");
  }
  check_token_ids(prompt_token_ids, "prompt_token_ids");
  const int64_t prompt_len = static_cast<int64_t>(prompt_token_ids.size());
  if (prompt_len + 1 > config_.max_model_len) {
    throw std::invalid_argument("prompt of " + std::to_string(prompt_len) + " tokens leaves no room for output: prompt + 1 must be <= max_model_len = " +
                                std::to_string(config_.max_model_len));
  }
  check_params(params, config_);
  // The most blocks the request ever holds: each sample's KV (all but its last token), unshared,
  // as after a preemption. It must fit the cache alone, or it could never finish.
  const int64_t max_len = std::min<int64_t>(prompt_len + params.max_tokens, config_.max_model_len) - 1;
  const int64_t blocks_per_sample = (max_len + config_.block_size - 1) / config_.block_size;
  const int64_t usable_blocks = config_.num_blocks - 1;
  if (params.n * blocks_per_sample > usable_blocks) {
    throw std::invalid_argument("request '" + request_id + "' needs up to " + std::to_string(params.n * blocks_per_sample) +
                                " KV-cache blocks (n = " + std::to_string(params.n) + " samples of up to " +
                                std::to_string(max_len) + " cached tokens, block_size = " +
                                std::to_string(config_.block_size) + ") but the cache has " +
                                std::to_string(usable_blocks));
  }

  int32_t handle;
  if (free_handles_.empty()) {
    handle = static_cast<int32_t>(requests_.size());
    requests_.emplace_back();
  } else {
    handle = free_handles_.back();
    free_handles_.pop_back();
  }
  Request& req = requests_[static_cast<size_t>(handle)];
  req.request_id = std::move(request_id);
  req.num_prompt_tokens = static_cast<int32_t>(prompt_len);
  req.arrival_order = num_added_++;
  req.status = RequestStatus::kWaiting;
  req.num_finished_samples = 0;
  req.samples.clear();
  req.samples.reserve(static_cast<size_t>(params.n));
  req.samples.emplace_back();
  Sequence& seq = req.samples.back();
  seq.token_ids = std::move(prompt_token_ids);
  seq.token_ids.reserve(static_cast<size_t>(max_len) + 1);
  seq.root_hash = root_block_hash(params.cache_salt);
  req.params = std::move(params);
  slot_of_.emplace(req.request_id, handle);
  waiting_.insert(WaitingKey{&req, handle});
  return handle;
}

int32_t Scheduler::handle_of(std::string_view request_id) const {
  const auto it = slot_of_.find(std::string(request_id));
  if (it == slot_of_.end()) {
    throw std::invalid_argument("unknown request_id '" + std::string(request_id) + "' (never added, or already finished)");
  }
  return it->second;
}

const Request* Scheduler::find_request(std::string_view request_id) const {
  const auto it = slot_of_.find(std::string(request_id));
  return it == slot_of_.end() ? nullptr : &requests_[static_cast<size_t>(it->second)];
}

void Scheduler::end_sample(int32_t handle, Sequence& seq, FinishReason reason) {
  Request& req = requests_[static_cast<size_t>(handle)];
  seq.finish_reason = reason;
  manager_.free(seq);
  const int32_t ended = req.forked() ? 1 : req.params.n;
  req.num_finished_samples += ended;
  if (req.status == RequestStatus::kRunning) num_running_seqs_ -= ended;
  if (req.num_finished_samples < req.params.n) return;

  if (req.status == RequestStatus::kWaiting) waiting_.erase(WaitingKey{&req, handle});
  if (req.status == RequestStatus::kRunning) running_has_finished_ = true;
  req.status = RequestStatus::kFinished;
  slot_of_.erase(req.request_id);
  retired_handles_.emplace_back(handle, num_opened_);
}

void Scheduler::end_request(int32_t handle, FinishReason reason) {
  Request& req = requests_[static_cast<size_t>(handle)];
  for (Sequence& seq : req.samples) {
    if (!seq.finished()) end_sample(handle, seq, reason);
  }
  finished_since_step_.push_back(req.request_id);
}

void Scheduler::drop_finished_running() {
  if (!running_has_finished_) return;
  running_.erase(std::remove_if(running_.begin(), running_.end(),
                                [this](int32_t h) { return requests_[static_cast<size_t>(h)].status == RequestStatus::kFinished; }),
                 running_.end());
  running_has_finished_ = false;
}

void Scheduler::finish_requests(const std::vector<std::string>& request_ids, FinishReason reason) {
  check_finished_reason(reason, "finish_requests");
  std::vector<int32_t> handles;
  handles.reserve(request_ids.size());
  for (const std::string& id : request_ids) handles.push_back(handle_of(id));
  for (int32_t handle : handles) {
    if (requests_[static_cast<size_t>(handle)].status != RequestStatus::kFinished) end_request(handle, reason);
  }
  drop_finished_running();
}

void Scheduler::finish_sample(std::string_view request_id, int32_t sample_index, FinishReason reason) {
  check_finished_reason(reason, "finish_sample");
  const int32_t handle = handle_of(request_id);
  Request& req = requests_[static_cast<size_t>(handle)];
  if (sample_index < 0 || sample_index >= req.params.n) {
    throw std::invalid_argument("sample_index must be in [0, n = " + std::to_string(req.params.n) + "), got " +
                                std::to_string(sample_index));
  }
  if (!req.forked()) {
    end_request(handle, reason);
  } else if (!req.samples[static_cast<size_t>(sample_index)].finished()) {
    end_sample(handle, req.samples[static_cast<size_t>(sample_index)], reason);
    if (req.status == RequestStatus::kFinished) finished_since_step_.push_back(req.request_id);
  }
  drop_finished_running();
}

void Scheduler::abort(std::string_view request_id) {
  end_request(handle_of(request_id), FinishReason::kAbort);
  drop_finished_running();
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  const BlockPool& pool = manager_.pool();
  s.num_blocks = pool.num_blocks();
  s.num_free_blocks = pool.num_free_blocks();
  s.kv_cache_usage = 1.0 - static_cast<double>(s.num_free_blocks) / (s.num_blocks - 1);
  s.prefix_cache_queries = prefix_cache_queries_;
  s.prefix_cache_hits = prefix_cache_hits_;
  s.num_preemptions = num_preemptions_;
  s.num_evictions = pool.num_evictions();
  s.num_drafts = num_drafts_;
  s.num_draft_tokens = num_draft_tokens_;
  s.num_accepted_tokens_per_pos = num_accepted_per_pos_;
  for (const int64_t accepted : num_accepted_per_pos_) s.num_accepted_tokens += accepted;
  return s;
}

}  // namespace kvserve
