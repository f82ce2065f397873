// A C++ embedder of kvserve's core: drives the scheduler with a fake model, without Python.
//
// The fake model keeps a real paged "KV cache" (one int per slot: the token written there), so it
// depends on the scheduler's arrays being right: it writes each new token to its slot_mapping slot,
// copies blocks as blocks_to_copy says, and "attends" by reading every context slot through the
// block table. Its next token is a hash of that context. At the end each sequence is checked against
// the same hash computed directly on its tokens; the program exits non-zero on any mismatch.
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "kvserve/copy_blocks.h"
#include "kvserve/scheduler.h"

namespace {

constexpr int32_t kVocab = 1000;
constexpr int32_t kEos = 7;

// The "model": a token from the whole context, shifted by the sample index so samples differ.
int32_t next_token(const std::vector<int32_t>& context, int32_t sample_index) {
  uint32_t h = 17;
  for (size_t i = 0; i < context.size(); ++i) h = h * 31 + static_cast<uint32_t>(context[i]) * static_cast<uint32_t>(i + 1);
  return static_cast<int32_t>((h + static_cast<uint32_t>(sample_index)) % kVocab);
}

// What one sample should generate, computed without the scheduler.
std::vector<int32_t> reference(std::vector<int32_t> tokens, int32_t sample_index, const kvserve::RequestParams& p) {
  std::vector<int32_t> output;
  while (static_cast<int32_t>(output.size()) < p.max_tokens) {
    const int32_t t = next_token(tokens, sample_index);
    tokens.push_back(t);
    output.push_back(t);
    if (t == kEos && static_cast<int32_t>(output.size()) >= p.min_tokens) break;
  }
  return output;
}

}  // namespace

int main() {
  kvserve::SchedulerConfig config;
  config.num_blocks = 32;
  config.block_size = 4;
  config.max_num_seqs = 8;
  config.max_num_batched_tokens = 8;  // small: prompts are computed in chunks
  config.max_model_len = 64;
  kvserve::Scheduler scheduler(config);

  const std::vector<int32_t> system_prompt = {101, 102, 103, 104, 105, 106, 107, 108, 109};
  struct Submitted {
    std::vector<int32_t> prompt;
    kvserve::RequestParams params;
  };
  std::map<std::string, Submitted> submitted;
  auto submit = [&](const std::string& id, std::vector<int32_t> question, int32_t max_tokens, int32_t n) {
    std::vector<int32_t> prompt = system_prompt;
    prompt.insert(prompt.end(), question.begin(), question.end());
    kvserve::RequestParams params;
    params.max_tokens = max_tokens;
    params.n = n;
    params.eos_token_ids = {kEos};
    scheduler.add_request(id, prompt, params);
    submitted[id] = Submitted{prompt, params};
  };
  submit("chat-1", {201, 202, 203}, 12, 1);
  submit("chat-2", {301, 302}, 10, 1);     // shares the system prompt's full blocks with chat-1
  submit("samples", {401, 402, 403, 404}, 8, 3);  // three samples of one prompt

  std::vector<int32_t> kv_cache(static_cast<size_t>(config.num_blocks * config.block_size), -1);
  std::map<std::pair<std::string, int32_t>, std::vector<int32_t>> outputs;
  int32_t steps = 0;
  while (scheduler.has_unfinished_requests()) {
    const kvserve::SchedulerOutput& out = scheduler.schedule();
    ++steps;
    kvserve::copy_blocks_cpu(kv_cache.data(), config.num_blocks, config.block_size * static_cast<int64_t>(sizeof(int32_t)),
                             out.blocks_to_copy.data(), out.num_copies());
    for (int32_t t = 0; t < out.num_tokens; ++t) {
      kv_cache[static_cast<size_t>(out.slot_mapping[static_cast<size_t>(t)])] = out.input_ids[static_cast<size_t>(t)];
    }
    std::vector<int32_t> sampled;
    for (int32_t k = 0; k < out.num_sampled(); ++k) {
      const int32_t row = out.sampled_rows[static_cast<size_t>(k)];
      std::vector<int32_t> context;
      for (int32_t pos = 0; pos < out.seq_lens[static_cast<size_t>(row)]; ++pos) {
        const int32_t block = out.block_table[static_cast<size_t>(row * out.max_blocks_per_req + pos / config.block_size)];
        context.push_back(kv_cache[static_cast<size_t>(block * config.block_size + pos % config.block_size)]);
      }
      sampled.push_back(next_token(context, out.sampled_sample_indices[static_cast<size_t>(k)]));
    }
    std::printf("step %2d: %d rows, %2d tokens, %d sampled, %d block copies\n", steps, out.num_reqs, out.num_tokens,
                out.num_sampled(), out.num_copies());
    for (const kvserve::SampleUpdate& u : scheduler.update_from_output(sampled.data(), static_cast<int64_t>(sampled.size()))) {
      outputs[{std::string(u.request_id), u.sample_index}].push_back(u.token_id);
      if (u.finish_reason != kvserve::FinishReason::kNone) {
        std::printf("  %s sample %d finished: %s\n", std::string(u.request_id).c_str(), u.sample_index,
                    std::string(kvserve::finish_reason_name(u.finish_reason)).c_str());
      }
    }
  }

  int failures = 0;
  for (const auto& [id, request] : submitted) {
    for (int32_t i = 0; i < request.params.n; ++i) {
      if (outputs[{id, i}] != reference(request.prompt, i, request.params)) {
        std::printf("MISMATCH: %s sample %d\n", id.c_str(), i);
        ++failures;
      }
    }
  }
  const kvserve::SchedulerStats stats = scheduler.stats();
  std::printf("%d steps; prefix cache: %lld of %lld prompt tokens hit; %d of %d blocks free\n", steps,
              static_cast<long long>(stats.prefix_cache_hits), static_cast<long long>(stats.prefix_cache_queries),
              stats.num_free_blocks, stats.num_blocks);
  if (stats.num_free_blocks != config.num_blocks - 1) ++failures;
  return failures == 0 ? 0 : 1;
}
