#include "kvserve/ngram_proposer.h"

#include <algorithm>

namespace kvserve {

int32_t propose_ngram_drafts(const int32_t* tokens, int32_t num_tokens, int32_t min_n, int32_t max_n,
                             int32_t max_drafts, std::vector<int32_t>& drafts) {
  drafts.clear();
  if (max_drafts <= 0) return 0;
  // The suffix [num_tokens - n, num_tokens) against every earlier window [start, start + n), latest
  // first; a window must end before the suffix does, leaving at least one token to propose.
  for (int32_t n = std::min(max_n, num_tokens - 1); n >= min_n; --n) {
    const int32_t* suffix = tokens + num_tokens - n;
    for (int32_t start = num_tokens - n - 1; start >= 0; --start) {
      if (!std::equal(suffix, suffix + n, tokens + start)) continue;
      // What followed the match, read on into the drafts themselves where it reaches the end (the
      // sequence the drafts extend repeats the pattern the match found).
      const int32_t first = start + n;
      for (int32_t i = 0; i < max_drafts; ++i) {
        const int32_t at = first + i;
        drafts.push_back(at < num_tokens ? tokens[at] : drafts[static_cast<size_t>(at - num_tokens)]);
      }
      return max_drafts;
    }
  }
  return 0;
}

}  // namespace kvserve
