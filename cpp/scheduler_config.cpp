#include "kvserve/scheduler_config.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace kvserve {

namespace {

void require(bool ok, const char* field, const std::string& expected, int64_t value) {
  if (!ok) {
    throw std::invalid_argument(std::string(field) + " must be " + expected + ", got " + std::to_string(value));
  }
}

}  // namespace

int64_t max_blocks_per_seq(const SchedulerConfig& config) {
  const int64_t by_len = (int64_t{config.max_model_len} + config.block_size - 1) / config.block_size;
  return std::max<int64_t>(0, std::min<int64_t>(by_len, int64_t{config.num_blocks} - 1));
}

void validate(const SchedulerConfig& config) {
  require(config.num_blocks >= 2, "num_blocks", ">= 2 (block 0 is the null block)", config.num_blocks);
  const int32_t bs = config.block_size;
  require(bs >= 1 && bs <= 256 && (bs & (bs - 1)) == 0, "block_size", "a power of two in [1, 256]", bs);
  require(config.max_num_seqs >= 1, "max_num_seqs", ">= 1", config.max_num_seqs);
  require(config.max_num_seqs <= kMaxNumSeqs, "max_num_seqs", "<= " + std::to_string(kMaxNumSeqs),
          config.max_num_seqs);
  require(config.max_num_batched_tokens >= 1, "max_num_batched_tokens", ">= 1", config.max_num_batched_tokens);
  require(config.max_num_batched_tokens <= kMaxNumBatchedTokens, "max_num_batched_tokens",
          "<= " + std::to_string(kMaxNumBatchedTokens), config.max_num_batched_tokens);
  require(config.max_model_len >= 2, "max_model_len", ">= 2 (one prompt token and one output token)",
          config.max_model_len);
  require(config.max_model_len <= kMaxModelLen, "max_model_len", "<= " + std::to_string(kMaxModelLen),
          config.max_model_len);
  require(config.long_prefill_token_threshold >= 0, "long_prefill_token_threshold", ">= 0 (0: no cap)",
          config.long_prefill_token_threshold);
  require(config.long_prefill_token_threshold == 0 || config.enable_chunked_prefill, "long_prefill_token_threshold",
          "0 without chunked prefill (a capped prompt is computed in chunks)", config.long_prefill_token_threshold);
  require(config.num_speculative_tokens >= 0 && config.num_speculative_tokens <= kMaxSpeculativeTokens,
          "num_speculative_tokens", "in [0, " + std::to_string(kMaxSpeculativeTokens) + "]",
          config.num_speculative_tokens);
  require(config.prompt_lookup_min >= 1, "prompt_lookup_min", ">= 1", config.prompt_lookup_min);
  require(config.prompt_lookup_max >= config.prompt_lookup_min && config.prompt_lookup_max <= kMaxPromptLookup,
          "prompt_lookup_max",
          "in [prompt_lookup_min = " + std::to_string(config.prompt_lookup_min) + ", " +
              std::to_string(kMaxPromptLookup) + "]",
          config.prompt_lookup_max);
  require(config.speculative_disable_by_batch_size >= 0, "speculative_disable_by_batch_size", ">= 0 (0: no limit)",
          config.speculative_disable_by_batch_size);
  const int64_t blocks_per_seq = max_blocks_per_seq(config);
  const int64_t block_table_entries = config.max_num_seqs * blocks_per_seq;
  if (block_table_entries > kMaxBlockTableEntries) {
    throw std::invalid_argument(
        "max_num_seqs = " + std::to_string(config.max_num_seqs) + " rows of " + std::to_string(blocks_per_seq) +
        " blocks (max_model_len / block_size = " + std::to_string(config.max_model_len) + " / " +
        std::to_string(config.block_size) + ", at most num_blocks - 1) make a block table of " +
        std::to_string(block_table_entries) + " entries, expected at most " + std::to_string(kMaxBlockTableEntries) +
        ": lower max_num_seqs or max_model_len");
  }
  if (!config.enable_chunked_prefill && config.max_num_batched_tokens < config.max_model_len) {
    throw std::invalid_argument(
        "max_num_batched_tokens = " + std::to_string(config.max_num_batched_tokens) +
        " is smaller than max_model_len = " + std::to_string(config.max_model_len) +
        ": without chunked prefill a whole prompt must fit in one step (enable chunked prefill or raise it)");
  }
}

}  // namespace kvserve
