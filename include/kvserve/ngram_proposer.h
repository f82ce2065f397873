// Draft tokens for speculative decoding by prompt lookup (vLLM's "ngram" method): the sequence's
// last n tokens are looked for earlier in the sequence (prompt and output alike), and the tokens
// that followed that earlier occurrence are the guess of what comes next. The model checks the
// guesses in one step (Scheduler: num_speculative_tokens); what it agrees with is kept.
//
// The longest n in [min_n, max_n] that matches wins, and among its matches the latest (the text
// nearest the end is the likeliest to repeat). Where what followed it runs into the end of the
// sequence, the drafts go on with themselves: a repeating pattern keeps repeating. No match, no drafts.
#pragma once

#include <cstdint>
#include <vector>

#include "kvserve/export.h"

namespace kvserve {

// Replaces `drafts` with the `max_drafts` tokens that followed the latest earlier occurrence of the
// longest suffix of tokens[0, num_tokens) of min_n..max_n tokens, and returns max_drafts; or clears
// it and returns 0 where no suffix matched (or max_drafts <= 0). Requires 1 <= min_n <= max_n.
KVSERVE_EXPORT int32_t propose_ngram_drafts(const int32_t* tokens, int32_t num_tokens, int32_t min_n, int32_t max_n,
                                            int32_t max_drafts, std::vector<int32_t>& drafts);

}  // namespace kvserve
