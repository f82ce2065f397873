// Shared by the scheduler tests: a config for small pools and one engine step with a fake model.
#pragma once

#include <functional>
#include <string_view>
#include <vector>

#include "kvserve/scheduler.h"

namespace kvserve::testing {

inline SchedulerConfig small_config(int32_t num_blocks, int32_t block_size, int32_t max_model_len,
                                    int32_t max_num_batched_tokens = 64, int32_t max_num_seqs = 8) {
  SchedulerConfig config;
  config.num_blocks = num_blocks;
  config.block_size = block_size;
  config.max_model_len = max_model_len;
  config.max_num_batched_tokens = max_num_batched_tokens;
  config.max_num_seqs = max_num_seqs;
  return config;
}

inline RequestParams limits(int32_t max_tokens, int32_t n = 1) {
  RequestParams params;
  params.max_tokens = max_tokens;
  params.n = n;
  return params;
}

// The live request's sample `sample` (the test knows it is live).
inline const Sequence& sequence(const Scheduler& s, std::string_view id, int32_t sample = 0) {
  return s.find_request(id)->samples[static_cast<size_t>(sample)];
}

// The fake model: the token sampled for entry k of a step.
using TokenFn = std::function<int32_t(const SchedulerOutput& out, int32_t k)>;

inline int32_t next_after_input(const SchedulerOutput& out, int32_t k) {
  return out.input_ids[static_cast<size_t>(out.logits_indices[static_cast<size_t>(k)])] + 1;
}

// schedule() then update_from_output() with the fake model's tokens; returns a copy of the updates.
inline std::vector<SampleUpdate> step(Scheduler& scheduler, const TokenFn& token = next_after_input) {
  const SchedulerOutput& out = scheduler.schedule();
  std::vector<int32_t> sampled(static_cast<size_t>(out.num_sampled()));
  for (int32_t k = 0; k < out.num_sampled(); ++k) sampled[static_cast<size_t>(k)] = token(out, k);
  const auto& updates = scheduler.update_from_output(sampled.data(), static_cast<int64_t>(sampled.size()));
  return std::vector<SampleUpdate>(updates.begin(), updates.end());
}

}  // namespace kvserve::testing
