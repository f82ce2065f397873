// The scheduler's limits (names as in vLLM's engine arguments).
#pragma once

#include <cstdint>

#include "kvserve/export.h"

namespace kvserve {

struct SchedulerConfig {
  int32_t num_blocks = 0;                // KV-cache blocks, block 0 (the null block) included
  int32_t block_size = 16;               // tokens per block: a power of two in [1, 256]
  int32_t max_num_seqs = 256;            // sequences running at once (a request with n samples counts n)
  int32_t max_num_batched_tokens = 8192; // tokens computed per step
  int32_t max_model_len = 0;             // prompt + output tokens of one sequence
  bool enable_prefix_caching = true;
  bool enable_chunked_prefill = true;    // off: a prompt is computed in one step or waits
};

// Throws std::invalid_argument naming the first field out of range and what it must be.
KVSERVE_EXPORT void validate(const SchedulerConfig& config);

}  // namespace kvserve
