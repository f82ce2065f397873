// Why a sequence stopped, with the names the OpenAI API and vLLM use for them.
#pragma once

#include <cstdint>
#include <string_view>

#include "kvserve/export.h"

namespace kvserve {

enum class FinishReason : uint8_t {
  kNone = 0,  // still running
  kStop,      // an EOS or stop token was sampled, or the caller saw a stop string
  kLength,    // max_tokens generated, or max_model_len reached
  kAbort,     // aborted by the caller
};

// "stop", "length", "abort" (and "" for kNone).
KVSERVE_EXPORT std::string_view finish_reason_name(FinishReason reason);
// The inverse for the three finished reasons; throws std::invalid_argument naming `name` otherwise.
KVSERVE_EXPORT FinishReason parse_finish_reason(std::string_view name);

}  // namespace kvserve
