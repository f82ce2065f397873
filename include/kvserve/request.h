// A generation request as the scheduler sees it: prompt token ids and the limits that end it. The
// scheduler knows nothing of text or sampling; stop strings are the detokenizer's, which ends a
// request through Scheduler::finish_requests.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvserve/sequence.h"

namespace kvserve {

struct RequestParams {
  int32_t max_tokens = 16;              // tokens to generate at most, per sample
  int32_t min_tokens = 0;               // EOS and stop tokens are ignored before this many
  std::vector<int32_t> eos_token_ids;   // end the sample ("stop") unless ignore_eos
  bool ignore_eos = false;
  std::vector<int32_t> stop_token_ids;  // end the sample ("stop"), also with ignore_eos
  int32_t priority = 0;                 // lower runs first and is preempted last (vLLM's convention)
  double arrival_time = 0.0;            // earlier runs first among equal priorities; then add order
  int32_t n = 1;                        // parallel samples sharing the prompt
  std::string cache_salt;               // requests with different salts never share cached blocks
  bool skip_prefix_cache = false;       // compute every prompt token (e.g. for prompt logprobs)
  // Its decodes may verify draft tokens (SchedulerConfig::num_speculative_tokens); off for a
  // sampler that must see each token before it can judge the next (a grammar's).
  bool speculate = true;
};

enum class RequestStatus : uint8_t { kWaiting, kRunning, kFinished };

struct Request {
  std::string request_id;
  RequestParams params;
  int32_t num_prompt_tokens = 0;
  uint64_t arrival_order = 0;  // how many requests were added before it: the last tie-breaker
  RequestStatus status = RequestStatus::kWaiting;
  // One sequence until the prompt is computed; then params.n, forked from the first.
  std::vector<Sequence> samples;
  int32_t num_finished_samples = 0;  // ending the single sequence of an unforked request ends all n

  bool forked() const { return static_cast<int32_t>(samples.size()) == params.n; }
  // Sequences it occupies (or will, once forked) against max_num_seqs.
  int32_t num_seqs() const { return params.n - num_finished_samples; }
};

// Whether `a` is scheduled before `b`: smaller (priority, arrival_time, arrival_order) first.
inline bool runs_before(const Request& a, const Request& b) {
  if (a.params.priority != b.params.priority) return a.params.priority < b.params.priority;
  if (a.params.arrival_time != b.params.arrival_time) return a.params.arrival_time < b.params.arrival_time;
  return a.arrival_order < b.arrival_order;
}

}  // namespace kvserve
