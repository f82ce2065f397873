// Cost of one scheduler step (schedule() + update_from_output()) with an untimed fake model, in C++.
//
//   scheduler_bench [--steps N]
//
// decode-256 / decode-1024: that many requests decoding (prompt 128, block 16, prefix caching on).
// mixed-256: 256 sequences running; each request has a 512-token prompt and 128 output tokens, and
// a finished request is replaced at once, so steps mix decodes with chunked prefills (8192 tokens).
// "ahead": each step scheduled before the tokens of the one before are applied (async scheduling:
// update_from_output closes the step before the one just scheduled).
// "ngram": speculative decoding by prompt lookup (4 drafts, n-grams of 2 to 4): the fake model's
// text never repeats, so every decode looks up its whole sequence and finds nothing (the lookup's
// worst case); "ngram-2k" the same with 2048-token prompts.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <random>
#include <string>
#include <vector>

#include "kvserve/scheduler.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Scenario {
  const char* name;
  int32_t num_seqs;
  int32_t prompt_len;
  int32_t max_tokens;  // 0: never finishes during the run
  bool replace_finished;
  bool ahead;
  int32_t num_speculative_tokens = 0;
};

struct Result {
  double mean_us = 0;
  double p50_us = 0;
  double p99_us = 0;
  double tokens_per_step = 0;
};

std::vector<int32_t> random_prompt(std::mt19937& rng, int32_t len) {
  std::uniform_int_distribution<int32_t> token(10, 31999);
  std::vector<int32_t> prompt(static_cast<size_t>(len));
  for (int32_t& t : prompt) t = token(rng);
  return prompt;
}

Result run(const Scenario& sc, int32_t steps) {
  const int32_t warmup = 64;
  const int32_t max_tokens = sc.max_tokens > 0 ? sc.max_tokens : warmup + steps + 64;
  kvserve::SchedulerConfig config;
  config.block_size = 16;
  config.max_num_seqs = sc.num_seqs;
  config.max_num_batched_tokens = 8192;
  config.max_model_len = sc.prompt_len + max_tokens;
  config.num_speculative_tokens = sc.num_speculative_tokens;
  config.prompt_lookup_min = 2;
  config.prompt_lookup_max = 4;
  const int32_t blocks_per_req = (config.max_model_len + 15) / 16;
  config.num_blocks = sc.num_seqs * blocks_per_req + 1;
  kvserve::Scheduler scheduler(config);

  std::mt19937 rng(0);
  kvserve::RequestParams params;
  params.max_tokens = max_tokens;
  params.ignore_eos = true;
  int64_t next_id = 0;
  auto add = [&] { scheduler.add_request("req-" + std::to_string(next_id++), random_prompt(rng, sc.prompt_len), params); };
  for (int32_t i = 0; i < sc.num_seqs; ++i) add();

  std::deque<std::vector<int32_t>> open;  // the sampled tokens of each open step, oldest first
  std::vector<double> times;
  times.reserve(static_cast<size_t>(steps));
  int64_t tokens = 0;
  for (int32_t step = 0; step < warmup + steps; ++step) {
    const auto start = Clock::now();
    const kvserve::SchedulerOutput& out = scheduler.schedule();
    const auto scheduled = Clock::now();
    // The fake model (not timed): the next token is a cheap function of the sampled row's position.
    if (out.num_reqs > 0) {
      std::vector<int32_t>& sampled = open.emplace_back(static_cast<size_t>(out.num_sampled()));
      for (int32_t k = 0; k < out.num_sampled(); ++k) {
        sampled[static_cast<size_t>(k)] = static_cast<int32_t>((out.positions[static_cast<size_t>(out.logits_indices[static_cast<size_t>(k)])] * 7 + 1) % 32000);
      }
    }
    const int32_t num_tokens = out.num_tokens;
    const bool close = !open.empty() && (!sc.ahead || open.size() == 2 || out.num_reqs == 0);
    const auto model_done = Clock::now();
    int32_t finished = 0;
    if (close) {
      const auto& updates = scheduler.update_from_output(open.front().data(), static_cast<int64_t>(open.front().size()));
      for (const auto& u : updates) finished += u.finish_reason != kvserve::FinishReason::kNone;
    }
    const auto end = Clock::now();
    if (close) open.pop_front();
    if (step >= warmup) {
      times.push_back(std::chrono::duration<double, std::micro>((scheduled - start) + (end - model_done)).count());
      tokens += num_tokens;
    }
    if (sc.replace_finished) {
      for (int32_t i = 0; i < finished; ++i) add();
    }
  }
  std::sort(times.begin(), times.end());
  Result r;
  for (double t : times) r.mean_us += t;
  r.mean_us /= static_cast<double>(times.size());
  r.p50_us = times[times.size() / 2];
  r.p99_us = times[std::min(times.size() - 1, times.size() * 99 / 100)];
  r.tokens_per_step = static_cast<double>(tokens) / static_cast<double>(times.size());
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  int32_t steps = 2000;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--steps") == 0 && i + 1 < argc) {
      steps = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--steps N]\n", argv[0]);
      return 2;
    }
  }
  if (steps < 1) {
    std::fprintf(stderr, "--steps must be >= 1, got %d\n", steps);
    return 2;
  }
  const Scenario scenarios[] = {
      {"decode-256", 256, 128, 0, false, false},
      {"decode-1024", 1024, 128, 0, false, false},
      {"mixed-256", 256, 512, 128, true, false},
      {"decode-256 ahead", 256, 128, 0, false, true},
      {"mixed-256 ahead", 256, 512, 128, true, true},
      {"decode-256 ngram", 256, 128, 0, false, false, 4},
      {"decode-256 ngram-2k", 256, 2048, 0, false, false, 4},
  };
  std::printf("| scenario | mean us/step | p50 | p99 | tokens/step |\n|---|---|---|---|---|\n");
  for (const Scenario& sc : scenarios) {
    const Result r = run(sc, steps);
    std::printf("| %s | %.1f | %.1f | %.1f | %.0f |\n", sc.name, r.mean_us, r.p50_us, r.p99_us, r.tokens_per_step);
  }
  return 0;
}
