#include "kvserve/scheduler_config.h"

#include <stdexcept>
#include <string>

namespace kvserve {

namespace {

void require(bool ok, const char* field, const char* expected, int64_t value) {
  if (!ok) {
    throw std::invalid_argument(std::string(field) + " must be " + expected + ", got " + std::to_string(value));
  }
}

}  // namespace

void validate(const SchedulerConfig& config) {
  require(config.num_blocks >= 2, "num_blocks", ">= 2 (block 0 is the null block)", config.num_blocks);
  const int32_t bs = config.block_size;
  require(bs >= 1 && bs <= 256 && (bs & (bs - 1)) == 0, "block_size", "a power of two in [1, 256]", bs);
  require(config.max_num_seqs >= 1, "max_num_seqs", ">= 1", config.max_num_seqs);
  require(config.max_num_batched_tokens >= 1, "max_num_batched_tokens", ">= 1", config.max_num_batched_tokens);
  require(config.max_model_len >= 2, "max_model_len", ">= 2 (one prompt token and one output token)",
          config.max_model_len);
  if (!config.enable_chunked_prefill && config.max_num_batched_tokens < config.max_model_len) {
    throw std::invalid_argument(
        "max_num_batched_tokens = " + std::to_string(config.max_num_batched_tokens) +
        " is smaller than max_model_len = " + std::to_string(config.max_model_len) +
        ": without chunked prefill a whole prompt must fit in one step (enable chunked prefill or raise it)");
  }
}

}  // namespace kvserve
