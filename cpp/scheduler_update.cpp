// Scheduler::update_from_output(): append the sampled tokens, fork parallel samples, apply stops;
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
  if (num_sampled != static_cast<int64_t>(sampled_.size())) {
    throw std::invalid_argument("sampled_token_ids: expected " + std::to_string(sampled_.size()) +
                                " token ids (one per logits_indices entry of the last schedule()), got " +
                                std::to_string(num_sampled));
  }
  for (int64_t k = 0; k < num_sampled; ++k) {
    if (sampled_token_ids[k] < 0) {
      throw std::invalid_argument("sampled_token_ids[" + std::to_string(k) + "] = " +
                                  std::to_string(sampled_token_ids[k]) + ": token ids must be >= 0");
    }
  }
  updates_.clear();
  for (size_t k = 0; k < sampled_.size(); ++k) {
    const SampledEntry& entry = sampled_[k];
    Request& req = requests_[static_cast<size_t>(entry.handle)];
    if (req.status != RequestStatus::kRunning) continue;  // ended since schedule()
    if (entry.forks && !req.forked()) fork(req);
    Sequence& seq = req.samples[static_cast<size_t>(entry.sample_index)];
    if (seq.finished()) continue;

    const int32_t token = sampled_token_ids[k];
    seq.token_ids.push_back(token);
    updates_.push_back(SampleUpdate{entry.handle, req.request_id, entry.sample_index, token, FinishReason::kNone, -1});
    if (apply_stop_conditions(req, seq)) {
      updates_.back().finish_reason = seq.finish_reason;
      updates_.back().stop_token_id = seq.stop_token_id;
      end_sample(entry.handle, seq, seq.finish_reason);
    }
  }
  sampled_.clear();
  drop_finished_running();
  return updates_;
}

void Scheduler::fail_step() {
  // A block written by this step was allocated or copied for it, so a cache entry it has now was
  // registered by this step (a full block is never written again): its KV cannot be trusted.
  for (const int64_t slot : output_.slot_mapping) manager_.forget_cached(static_cast<int32_t>(slot / config_.block_size));
  for (const int32_t handle : output_.req_handles) {
    if (requests_[static_cast<size_t>(handle)].status != RequestStatus::kFinished) {
      end_request(handle, FinishReason::kAbort);
    }
  }
  sampled_.clear();
  drop_finished_running();
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
  if (num_output >= params.max_tokens || seq.num_tokens() >= config_.max_model_len) {
    seq.finish_reason = FinishReason::kLength;
    return true;
  }
  return false;
}

}  // namespace kvserve
