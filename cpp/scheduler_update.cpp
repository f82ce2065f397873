// Scheduler::update_from_output(): append the sampled tokens, fork parallel samples, apply stops;
// Scheduler::retract_in_flight(): void a row that decoded a token changed since;
// Scheduler::fail_step(): close a step whose model run failed.
#include <algorithm>
#include <stdexcept>

#include "kvserve/scheduler.h"

namespace kvserve {

namespace {

bool contains(const std::vector<int32_t>& ids, int32_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

}  // namespace

const std::vector<SampleUpdate>& Scheduler::update_from_output(const int32_t* sampled_token_ids, int64_t num_sampled) {
  const size_t expected = num_open_ > 0 ? open_[0].sampled.size() : 0;
  if (num_sampled != static_cast<int64_t>(expected)) {
    throw std::invalid_argument("sampled_token_ids: expected " + std::to_string(expected) +
                                " token ids (one per logits_indices entry of the oldest open step), got " +
                                std::to_string(num_sampled));
  }
  for (int64_t k = 0; k < num_sampled; ++k) {
    if (sampled_token_ids[k] < 0) {
      throw std::invalid_argument("sampled_token_ids[" + std::to_string(k) + "] = " +
                                  std::to_string(sampled_token_ids[k]) + ": token ids must be >= 0");
    }
  }
  updates_.clear();
  if (num_open_ == 0) return updates_;
  const std::vector<SampledEntry>& sampled = open_[0].sampled;
  bool accepted = false;  // the entry before took its draft: a chain's next entry counts
  for (size_t k = 0; k < sampled.size(); ++k) {
    const SampledEntry& entry = sampled[k];
    const bool counts = entry.draft_offset == 0 || accepted;
    accepted = false;
    if (!counts) continue;  // after a rejected draft
    Request& req = requests_[static_cast<size_t>(entry.handle)];
    if (req.status == RequestStatus::kFinished || entry.retracted) continue;  // ended since schedule(), or void
    if (entry.forks && !req.forked()) fork(req);
    Sequence& seq = req.samples[static_cast<size_t>(entry.sample_index)];
    if (seq.finished()) continue;

    const int32_t token = sampled_token_ids[k];
    if (entry.draft_offset == 0) --seq.num_placeholders;
    seq.token_ids.push_back(token);
    updates_.push_back(SampleUpdate{entry.handle, req.request_id, entry.sample_index, static_cast<int32_t>(k), token,
                                    FinishReason::kNone, -1});
    if (apply_stop_conditions(req, seq)) {
      updates_.back().finish_reason = seq.finish_reason;
      updates_.back().stop_token_id = seq.stop_token_id;
      end_sample(entry.handle, seq, seq.finish_reason);
      seq.draft_ids.clear();
      continue;
    }
    if (entry.draft >= 0 && token == entry.draft) {
      accepted = true;
      ++num_accepted_per_pos_[static_cast<size_t>(entry.draft_offset)];
    } else if (entry.draft >= 0 || entry.draft_offset > 0) {
      end_drafts(seq);
    }
  }
  close_oldest_step();
  drop_finished_running();
  return updates_;
}

bool Scheduler::retract_in_flight(std::string_view request_id, int32_t sample_index) {
  const int32_t handle = handle_of(request_id);
  Request& req = requests_[static_cast<size_t>(handle)];
  if (sample_index < 0 || sample_index >= static_cast<int32_t>(req.samples.size())) {
    throw std::invalid_argument("sample_index must be in [0, " + std::to_string(req.samples.size()) + "), got " +
                                std::to_string(sample_index));
  }
  if (num_open_ > 1) {
    throw std::logic_error("retract_in_flight() called with " + std::to_string(num_open_) +
                           " steps open: it belongs between update_from_output() and the next schedule()");
  }
  Sequence& seq = req.samples[static_cast<size_t>(sample_index)];
  // A placeholder left after update_from_output is the open step's, whose row decoded the token
  // just applied (a sequence of that step, preempted since or forking, holds none).
  if (seq.finished() || seq.num_placeholders == 0 || num_open_ == 0) return false;
  SampledEntry& entry = open_[0].sampled[static_cast<size_t>(seq.sample_entry)];
  entry.retracted = true;
  --seq.num_placeholders;
  --seq.num_computed_tokens;  // its block stays: the next step writes the position there again
  return true;
}

std::vector<std::string> Scheduler::fail_step() {
  // A block written by these steps was allocated or copied for them, so a cache entry it has now
  // was registered by one of them (a full block is never written again): its KV cannot be trusted.
  std::vector<std::string> ended;
  for (int32_t i = 0; i < num_open_; ++i) {
    for (const int32_t block : open_[i].written_blocks) manager_.forget_cached(block);
    for (const int32_t handle : open_[i].handles) {
      if (requests_[static_cast<size_t>(handle)].status != RequestStatus::kFinished) {
        ended.push_back(requests_[static_cast<size_t>(handle)].request_id);
        end_request(handle, FinishReason::kAbort);
      }
    }
  }
  while (num_open_ > 0) close_oldest_step();
  drop_finished_running();
  return ended;
}

// A row's drafts are settled: the positions past the sequence's last token (rejected drafts) are not
// computed any more. A sequence preempted meanwhile computed fewer, and keeps them.
void Scheduler::end_drafts(Sequence& seq) {
  seq.draft_ids.clear();
  if (seq.num_computed_tokens > seq.num_tokens() - 1) manager_.truncate(seq, seq.num_tokens() - 1);
}

void Scheduler::close_oldest_step() {
  std::rotate(open_, open_ + 1, open_ + kMaxOpenSteps);
  --num_open_;
  ++num_closed_;
}

void Scheduler::fork(Request& req) {
  for (int32_t i = 1; i < req.params.n; ++i) {
    req.samples.emplace_back();
    manager_.fork(req.samples.front(), req.samples.back());
    req.samples.back().sample_index = i;
  }
}

// Sets seq.finish_reason (and stop_token_id) when its last token ends it. A stop token wins over
// the length limit when both hold: the model did end there.
bool Scheduler::apply_stop_conditions(const Request& req, Sequence& seq) {
  const RequestParams& params = req.params;
  const int32_t token = seq.token_ids.back();
  const int32_t num_output = seq.num_tokens() - req.num_prompt_tokens;
  if (num_output >= params.min_tokens &&
      ((!params.ignore_eos && contains(params.eos_token_ids, token)) || contains(params.stop_token_ids, token))) {
    seq.finish_reason = FinishReason::kStop;
    seq.stop_token_id = token;
    return true;
  }
  if (ends_by_length(req, seq.num_tokens())) {
    seq.finish_reason = FinishReason::kLength;
    return true;
  }
  return false;
}

// Whether a sequence of `num_tokens` tokens has reached max_tokens or max_model_len.
bool Scheduler::ends_by_length(const Request& req, int32_t num_tokens) const {
  return num_tokens - req.num_prompt_tokens >= req.params.max_tokens || num_tokens >= config_.max_model_len;
}

}  // namespace kvserve
