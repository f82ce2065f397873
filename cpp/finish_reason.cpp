#include "kvserve/finish_reason.h"

#include <stdexcept>
#include <string>

namespace kvserve {

std::string_view finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone: return "";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kAbort: return "abort";
  }
  return "";
}

FinishReason parse_finish_reason(std::string_view name) {
  for (FinishReason reason : {FinishReason::kStop, FinishReason::kLength, FinishReason::kAbort}) {
    if (finish_reason_name(reason) == name) return reason;
  }
  throw std::invalid_argument("finish reason must be \"stop\", \"length\" or \"abort\", got \"" +
                              std::string(name) + "\"");
}

}  // namespace kvserve
