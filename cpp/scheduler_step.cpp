// Scheduler::schedule(): which tokens of which sequences run in this step, as flat arrays.
#include <algorithm>
#include <stdexcept>

#include "kvserve/ngram_proposer.h"
#include "kvserve/scheduler.h"

namespace kvserve {

namespace {

void clear_step(SchedulerOutput& out) {
  out.num_reqs = out.num_tokens = 0;
  out.input_ids.clear();
  out.positions.clear();
  out.slot_mapping.clear();
  out.query_start_loc.resize(1);
  out.seq_lens.clear();
  out.req_ids.clear();
  out.req_handles.clear();
  out.sample_indices.clear();
  out.logits_indices.clear();
  out.sampled_rows.clear();
  out.sampled_sample_indices.clear();
  out.sampled_draft_offsets.clear();
  out.blocks_to_copy.clear();
  out.deferred_input_tokens.clear();
  out.deferred_input_sources.clear();
  out.preempted_req_ids.clear();
  out.finished_req_ids.clear();
}

}  // namespace

const SchedulerOutput& Scheduler::schedule() {
  if (num_open_ == kMaxOpenSteps) {
    throw std::logic_error("schedule() called with " + std::to_string(kMaxOpenSteps) +
                           " steps open: update_from_output() (or fail_step()) must close the oldest first");
  }
  const auto reusable = std::partition(retired_handles_.begin(), retired_handles_.end(),
                                       [this](const auto& retired) { return retired.second > num_closed_; });
  for (auto it = reusable; it != retired_handles_.end(); ++it) free_handles_.push_back(it->first);
  retired_handles_.erase(reusable, retired_handles_.end());
  clear_step(output_);
  output_.finished_req_ids.swap(finished_since_step_);
  row_seqs_.clear();
  OpenStep& step = open_[num_open_];
  step.sampled.clear();

  int32_t budget = config_.max_num_batched_tokens;
  bool preempted = false;
  const int32_t batch_limit = config_.speculative_disable_by_batch_size;
  drafting_ = config_.num_speculative_tokens > 0 && (batch_limit == 0 || num_running_seqs_ <= batch_limit);
  schedule_running(budget, preempted);
  // After a preemption the blocks are short: admitting more would only preempt again.
  if (!preempted) schedule_waiting(budget);
  finish_block_table();
  if (output_.num_reqs > 0) {
    step.handles.assign(output_.req_handles.begin(), output_.req_handles.end());
    step.written_blocks.clear();
    for (const int64_t slot : output_.slot_mapping) step.written_blocks.push_back(static_cast<int32_t>(slot / config_.block_size));
    ++num_open_;
    ++num_opened_;
  }
  return output_;
}

// All `remaining` tokens if they fit the budget and long_prefill_token_threshold; else a chunk, or
// nothing without chunked prefill.
int32_t Scheduler::tokens_to_schedule(int32_t remaining, int32_t budget) const {
  const int32_t cap = config_.long_prefill_token_threshold;
  if (cap > 0 && remaining > cap) remaining = cap;
  if (remaining <= budget) return remaining;
  return config_.enable_chunked_prefill ? budget : 0;
}

void Scheduler::schedule_running(int32_t& budget, bool& preempted) {
  // Running sequences not visited yet: drafts leave each of them a token of the budget.
  int32_t unvisited = num_running_seqs_;
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    const int32_t handle = running_[i];
    plans_.clear();
    Request& req = requests_[static_cast<size_t>(handle)];
    for (Sequence& seq : req.samples) {
      if (seq.finished()) continue;
      --unvisited;
      // Drafts in flight: how many tokens they land is known when their step closes.
      if (!seq.draft_ids.empty()) continue;
      // A token in flight: a fork waits for it, and a length it certainly reaches ends the sequence.
      if (seq.num_placeholders > 0 && (!req.forked() || ends_by_length(req, seq.num_tokens_with_placeholders()))) {
        continue;
      }
      const int32_t remaining = seq.num_tokens_with_placeholders() - seq.num_computed_tokens;
      int32_t num_new = tokens_to_schedule(remaining, budget);
      if (num_new == 0) continue;
      if (remaining == 1 && seq.num_placeholders == 0 && req.forked()) {
        num_new += propose_drafts(req, seq, budget - 1 - unvisited);
      }
      plans_.push_back(SlotPlan{&seq, num_new, {}});
      budget -= num_new;
    }
    if (plans_.empty()) continue;
    // Victims come from the back, which is never scheduled yet in this step: rows already emitted
    // stay valid. When the victim is this request, everything after it is gone too.
    while (!manager_.allocate_slots(plans_, output_.blocks_to_copy)) {
      const bool self = running_.back() == handle;
      preempt_last_running();
      preempted = true;
      if (self) return;
    }
    emit_rows(handle);
  }
}

// A decode's drafts (seq.draft_ids), as many as the budget, the sequence's length limits and
// long_prefill_token_threshold (less the decode's own token) leave: each one the model accepts
// lands one more token. Returns how many.
int32_t Scheduler::propose_drafts(const Request& req, Sequence& seq, int32_t budget) {
  if (!drafting_ || !req.params.speculate) return 0;
  const int32_t num_output = seq.num_tokens() - req.num_prompt_tokens;
  const int32_t cap = config_.long_prefill_token_threshold;
  const int32_t room = std::min({config_.num_speculative_tokens, budget, req.params.max_tokens - num_output - 1,
                                 config_.max_model_len - seq.num_tokens() - 1, cap > 0 ? cap - 1 : budget});
  return propose_ngram_drafts(seq.token_ids.data(), seq.num_tokens(), config_.prompt_lookup_min,
                              config_.prompt_lookup_max, room, seq.draft_ids);
}

void Scheduler::schedule_waiting(int32_t& budget) {
  const bool use_cache = manager_.pool().prefix_caching();
  while (!waiting_.empty() && budget > 0) {
    const int32_t handle = waiting_.begin()->handle;
    Request& req = requests_[static_cast<size_t>(handle)];
    if (num_running_seqs_ + req.num_seqs() > config_.max_num_seqs) return;

    plans_.clear();
    int32_t left = budget;
    int64_t queried = 0;
    int64_t hits = 0;
    bool progress = false;
    for (Sequence& seq : req.samples) {
      if (seq.finished()) continue;
      SlotPlan plan{&seq, 0, {}};
      int32_t num_cached = 0;
      if (use_cache && !req.params.skip_prefix_cache) {
        num_cached = manager_.get_computed_blocks(seq, plan.hit_blocks);
        queried += seq.num_tokens();
        hits += num_cached;
      }
      plan.num_new_tokens = tokens_to_schedule(seq.num_tokens() - num_cached, left);
      left -= plan.num_new_tokens;
      progress |= plan.num_new_tokens > 0;
      if (plan.num_new_tokens > 0 || !plan.hit_blocks.empty()) plans_.push_back(std::move(plan));
    }
    if (!progress || !manager_.allocate_slots(plans_, output_.blocks_to_copy)) return;

    budget = left;
    prefix_cache_queries_ += queried;
    prefix_cache_hits_ += hits;
    waiting_.erase(waiting_.begin());
    req.status = RequestStatus::kRunning;
    num_running_seqs_ += req.num_seqs();
    const auto pos = std::upper_bound(running_.begin(), running_.end(), handle, [this](int32_t a, int32_t b) {
      return runs_before(requests_[static_cast<size_t>(a)], requests_[static_cast<size_t>(b)]);
    });
    running_.insert(pos, handle);
    emit_rows(handle);
  }
}

// A victim with a token in flight takes it in the waiting queue. Nothing is admitted in the step
// that preempts; the engine schedules again only after that token's step closed. A caller that
// schedules again sooner (after an empty step) may admit it with its token still in flight: it
// then computes its known tokens as a chunk, and samples once the token has landed.
void Scheduler::preempt_last_running() {
  const int32_t handle = running_.back();
  running_.pop_back();
  Request& req = requests_[static_cast<size_t>(handle)];
  for (Sequence& seq : req.samples) {
    if (seq.finished()) continue;
    manager_.free(seq);
    // Drafts proposed in this step go; drafts in flight (a token being sampled) stay until their
    // step closes, keeping the sequence from a row that would guess their outcome.
    if (seq.num_placeholders == 0) seq.draft_ids.clear();
  }
  num_running_seqs_ -= req.num_seqs();
  req.status = RequestStatus::kWaiting;
  waiting_.insert(WaitingKey{&req, handle});
  output_.preempted_req_ids.push_back(req.request_id);
  ++num_preemptions_;
}

// One row per plan that computes tokens; advances the sequences past them.
void Scheduler::emit_rows(int32_t handle) {
  const Request& req = requests_[static_cast<size_t>(handle)];
  const int32_t bs = config_.block_size;
  SchedulerOutput& out = output_;
  for (const SlotPlan& plan : plans_) {
    if (plan.num_new_tokens == 0) continue;
    Sequence& seq = *plan.seq;
    const int32_t row = out.num_reqs++;
    const int32_t start = seq.num_computed_tokens;
    const int32_t end = start + plan.num_new_tokens;
    const int32_t num_known = seq.num_tokens();
    const int32_t num_drafts = static_cast<int32_t>(seq.draft_ids.size());
    for (int32_t pos = start; pos < end; ++pos) {
      if (pos < num_known) {
        out.input_ids.push_back(seq.token_ids[static_cast<size_t>(pos)]);
      } else if (pos < num_known + num_drafts) {
        out.input_ids.push_back(seq.draft_ids[static_cast<size_t>(pos - num_known)]);
      } else {  // the placeholder of the step in flight
        out.deferred_input_tokens.push_back(static_cast<int64_t>(out.input_ids.size()));
        out.deferred_input_sources.push_back(seq.sample_entry);
        out.input_ids.push_back(-1);
      }
      out.positions.push_back(pos);
      out.slot_mapping.push_back(static_cast<int64_t>(seq.block_ids[static_cast<size_t>(pos / bs)]) * bs + pos % bs);
    }
    out.num_tokens += plan.num_new_tokens;
    out.query_start_loc.push_back(out.num_tokens);
    out.seq_lens.push_back(end);
    out.req_ids.push_back(req.request_id);
    out.req_handles.push_back(handle);
    out.sample_indices.push_back(seq.sample_index);
    row_seqs_.push_back(&seq);
    seq.num_computed_tokens = end;
    if (end < seq.num_tokens_with_placeholders()) continue;  // a prefill chunk: nothing to sample yet

    const bool forks = !req.forked();
    seq.sample_entry = out.num_sampled();
    ++seq.num_placeholders;
    std::vector<SampledEntry>& sampled = open_[num_open_].sampled;
    const int32_t num_samples = forks ? req.params.n : 1;
    for (int32_t k = 0; k < num_samples; ++k) {
      const int32_t sample_index = forks ? k : seq.sample_index;
      // A row with drafts samples after its last known token and after each draft.
      for (int32_t j = 0; j <= num_drafts; ++j) {
        out.logits_indices.push_back(out.num_tokens - 1 - num_drafts + j);
        out.sampled_rows.push_back(row);
        out.sampled_sample_indices.push_back(sample_index);
        out.sampled_draft_offsets.push_back(j);
        const int32_t draft = j < num_drafts ? seq.draft_ids[static_cast<size_t>(j)] : -1;
        sampled.push_back(SampledEntry{handle, sample_index, forks, false, j, draft});
      }
    }
    if (num_drafts > 0) {
      ++num_drafts_;
      num_draft_tokens_ += num_drafts;
    }
  }
}

void Scheduler::finish_block_table() {
  SchedulerOutput& out = output_;
  size_t width = 1;
  for (const Sequence* seq : row_seqs_) width = std::max(width, seq->block_ids.size());
  if (static_cast<int32_t>(width) != out.max_blocks_per_req) table_rows_.clear();
  out.max_blocks_per_req = static_cast<int32_t>(width);
  out.block_table.resize(row_seqs_.size() * width);
  for (size_t r = 0; r < row_seqs_.size(); ++r) {
    const Sequence& seq = *row_seqs_[r];
    int32_t* row = out.block_table.data() + r * width;
    if (r < table_rows_.size() && table_rows_[r].seq == &seq && table_rows_[r].epoch == seq.block_ids_epoch) {
      std::copy(seq.block_ids.begin() + static_cast<std::ptrdiff_t>(table_rows_[r].num_blocks), seq.block_ids.end(),
                row + table_rows_[r].num_blocks);
    } else {
      std::fill(std::copy(seq.block_ids.begin(), seq.block_ids.end(), row), row + width, 0);
    }
  }
  table_rows_.resize(row_seqs_.size());
  for (size_t r = 0; r < row_seqs_.size(); ++r) {
    table_rows_[r] = TableRow{row_seqs_[r], row_seqs_[r]->block_ids_epoch, row_seqs_[r]->block_ids.size()};
  }
}

}  // namespace kvserve
