#include "kvserve/ngram_proposer.h"

#include <algorithm>

namespace kvserve {

int32_t propose_ngram_drafts(const int32_t* tokens, int32_t num_tokens, int32_t min_n, int32_t max_n,
                             int32_t max_drafts, std::vector<int32_t>& drafts) {
  drafts.clear();
  if (max_drafts <= 0) return 0;
  // One pass over the earlier positions `end`, latest first: how many tokens ending at `end` equal
  // the sequence's last ones (at most max_n). The longest wins, and of equal lengths the latest.
  // Most positions differ at their first token: blocks of kBlock positions none of which holds the
  // last token are skipped by a comparison the compiler vectorizes.
  constexpr int32_t kBlock = 32;
  const int32_t last = num_tokens - 1;
  const int32_t target = tokens[last];
  int32_t best_length = 0;
  int32_t best_end = -1;
  for (int32_t block_end = last - 1; block_end >= 0 && best_length < max_n; block_end -= kBlock) {
    const int32_t block_start = std::max(0, block_end - kBlock + 1);
    if (block_end - block_start + 1 == kBlock) {
      bool any = false;
      for (int32_t i = 0; i < kBlock; ++i) any |= tokens[block_start + i] == target;
      if (!any) continue;
    }
    for (int32_t end = block_end; end >= block_start && best_length < max_n; --end) {
      const int32_t most = std::min(max_n, end + 1);
      int32_t length = 0;
      while (length < most && tokens[end - length] == tokens[last - length]) ++length;
      if (length > best_length) {
        best_length = length;
        best_end = end;
      }
    }
  }
  if (best_length < min_n) return 0;
  // What followed the match, read on into the drafts themselves where it reaches the end (the
  // sequence the drafts extend repeats the pattern the match found).
  for (int32_t i = 0; i < max_drafts; ++i) {
    const int32_t at = best_end + 1 + i;
    drafts.push_back(at < num_tokens ? tokens[at] : drafts[static_cast<size_t>(at - num_tokens)]);
  }
  return max_drafts;
}

}  // namespace kvserve
