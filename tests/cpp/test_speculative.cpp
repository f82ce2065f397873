// Speculative decoding by prompt lookup: the n-gram proposer, and the scheduler's draft rows (their
// inputs, samples, the tokens update_from_output keeps, the blocks of rejected drafts, the limits).
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "kvserve/ngram_proposer.h"
#include "kvserve/scheduler.h"
#include "scheduler_test_util.h"

namespace kvserve {
namespace {

using testing::limits;
using testing::sequence;
using testing::small_config;
using I32 = std::vector<int32_t>;
using I64 = std::vector<int64_t>;

I32 propose(const I32& tokens, int32_t min_n, int32_t max_n, int32_t max_drafts) {
  I32 drafts{99};  // replaced
  const int32_t n = propose_ngram_drafts(tokens.data(), static_cast<int32_t>(tokens.size()), min_n, max_n,
                                         max_drafts, drafts);
  EXPECT_EQ(n, static_cast<int32_t>(drafts.size()));
  return drafts;
}

TEST(NgramProposer, TheLongestSuffixThatMatchesWinsAndItsLatestOccurrence) {
  // Suffix (7, 8): earlier at 0 (then 1) and at 4 (then 3); suffix (8) alone also after 6 (then 5).
  const I32 tokens{7, 8, 1, 2, 7, 8, 3, 8, 5, 7, 8};
  EXPECT_EQ(propose(tokens, 1, 3, 2), (I32{3, 8}));
  EXPECT_EQ(propose(tokens, 1, 1, 2), (I32{5, 7}));  // only n = 1: (8) last seen at 7
  EXPECT_EQ(propose(tokens, 3, 3, 2), (I32{}));      // (5, 7, 8) never seen before
  EXPECT_EQ(propose(tokens, 1, 3, 0), (I32{}));
  EXPECT_EQ(propose(I32{4}, 1, 1, 3), (I32{}));  // nothing before the suffix
}

TEST(NgramProposer, AMatchRunningIntoTheEndGoesOnWithItsOwnDrafts) {
  EXPECT_EQ(propose(I32{5, 1, 2, 1, 2}, 2, 2, 5), (I32{1, 2, 1, 2, 1}));
  EXPECT_EQ(propose(I32{3, 3, 3}, 1, 2, 4), (I32{3, 3, 3, 3}));
}

// The proposer's rule stated plainly: for n from max_n down to min_n, the latest earlier window of n
// tokens equal to the last n; what follows it, read on into the drafts.
I32 reference_drafts(const I32& tokens, int32_t min_n, int32_t max_n, int32_t max_drafts) {
  const int32_t size = static_cast<int32_t>(tokens.size());
  for (int32_t n = std::min(max_n, size - 1); n >= min_n; --n) {
    for (int32_t start = size - n - 1; start >= 0; --start) {
      if (!std::equal(tokens.end() - n, tokens.end(), tokens.begin() + start)) continue;
      I32 extended = tokens;
      for (int32_t i = 0; i < max_drafts; ++i) extended.push_back(extended[static_cast<size_t>(start + n + i)]);
      return I32(extended.begin() + size, extended.end());
    }
  }
  return {};
}

TEST(NgramProposer, EqualsTheRuleStatedPlainlyOnRandomSequences) {
  std::mt19937 rng(7);
  int32_t matched = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const int32_t vocab = 2 + static_cast<int32_t>(rng() % 6);
    I32 tokens(1 + rng() % 40);
    for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
    const int32_t min_n = 1 + static_cast<int32_t>(rng() % 3);
    const int32_t max_n = min_n + static_cast<int32_t>(rng() % 4);
    const int32_t max_drafts = static_cast<int32_t>(rng() % 6);
    const I32 expected = max_drafts > 0 ? reference_drafts(tokens, min_n, max_n, max_drafts) : I32{};
    EXPECT_EQ(propose(tokens, min_n, max_n, max_drafts), expected) << "trial " << trial;
    matched += !expected.empty();
  }
  EXPECT_GT(matched, 1000);
}

SchedulerConfig speculative_config(int32_t num_blocks, int32_t block_size, int32_t num_speculative_tokens,
                                   int32_t max_num_batched_tokens = 64) {
  SchedulerConfig config = small_config(num_blocks, block_size, 128, max_num_batched_tokens);
  config.num_speculative_tokens = num_speculative_tokens;
  config.prompt_lookup_min = 2;
  config.prompt_lookup_max = 3;
  return config;
}

// The fake model of a repeating text: the token after position p is pattern[(p + 1) % period].
int32_t periodic(const SchedulerOutput& out, int32_t k, const I32& pattern) {
  const int64_t position = out.positions[static_cast<size_t>(out.logits_indices[static_cast<size_t>(k)])];
  return pattern[static_cast<size_t>((position + 1) % static_cast<int64_t>(pattern.size()))];
}

I32 tokens_of(const std::vector<SampleUpdate>& updates) {
  I32 tokens;
  for (const SampleUpdate& u : updates) tokens.push_back(u.token_id);
  return tokens;
}

TEST(SchedulerSpeculative, ADecodeVerifiesItsDraftsAndKeepsWhatTheModelAgreesWith) {
  const I32 pattern{1, 2, 3, 4};
  Scheduler s(speculative_config(16, 4, 3));
  s.add_request("a", I32{1, 2, 3, 4, 1, 2}, limits(20));
  auto model = [&](const SchedulerOutput& out, int32_t k) { return periodic(out, k, pattern); };
  EXPECT_EQ(tokens_of(testing::step(s, model)), (I32{3}));  // the prefill: no drafts

  // Tokens 1 2 3 4 1 2 3: the suffix (2, 3) was followed by 4 1 2.
  const SchedulerOutput& out = s.schedule();
  EXPECT_EQ(out.input_ids, (I32{3, 4, 1, 2}));
  EXPECT_EQ(out.positions, (I64{6, 7, 8, 9}));
  EXPECT_EQ(out.seq_lens, (I32{10}));
  EXPECT_EQ(out.logits_indices, (I64{0, 1, 2, 3}));
  EXPECT_EQ(out.sampled_draft_offsets, (I32{0, 1, 2, 3}));
  EXPECT_EQ(out.block_table, (I32{1, 2, 3}));
  const I32 agreed{4, 1, 2, 3};
  const auto& updates = s.update_from_output(agreed.data(), 4);
  EXPECT_EQ(tokens_of({updates.begin(), updates.end()}), (I32{4, 1, 2, 3}));  // three drafts and one more
  EXPECT_EQ(updates[3].sampled_index, 3);
  EXPECT_EQ(sequence(s, "a").num_tokens(), 11);
  EXPECT_EQ(sequence(s, "a").num_computed_tokens, 10);

  const SchedulerStats stats = s.stats();
  EXPECT_EQ(stats.num_drafts, 1);
  EXPECT_EQ(stats.num_draft_tokens, 3);
  EXPECT_EQ(stats.num_accepted_tokens, 3);
  EXPECT_EQ(stats.num_accepted_tokens_per_pos, (I64{1, 1, 1}));
}

TEST(SchedulerSpeculative, ARejectedDraftEndsTheRowAndItsBlocksPastTheSequenceAreFreed) {
  Scheduler s(speculative_config(16, 4, 3));
  s.add_request("a", I32{1, 2, 3, 4, 1, 2, 3}, limits(20));
  testing::step(s, [](const SchedulerOutput&, int32_t) { return 4; });  // tokens 1 2 3 4 1 2 3 4
  const SchedulerOutput& out = s.schedule();
  EXPECT_EQ(out.input_ids, (I32{4, 1, 2, 3}));  // positions 7..10: blocks 1, 2, 3
  EXPECT_EQ(s.stats().num_free_blocks, 12);
  const I32 sampled{1, 9, 5, 6};  // draft 1 taken, draft 2 rejected: the model says 9
  const auto& updates = s.update_from_output(sampled.data(), 4);
  EXPECT_EQ(tokens_of({updates.begin(), updates.end()}), (I32{1, 9}));
  const Sequence& seq = sequence(s, "a");
  EXPECT_EQ(seq.token_ids, (I32{1, 2, 3, 4, 1, 2, 3, 4, 1, 9}));
  EXPECT_EQ(seq.num_computed_tokens, 9);
  EXPECT_EQ(seq.block_ids.size(), 3u);  // positions 0..8
  EXPECT_EQ(s.stats().num_accepted_tokens_per_pos, (I64{1, 0, 0}));

  // The next row starts at the token the model chose; (1, 9) was never seen: no drafts.
  const SchedulerOutput& next = s.schedule();
  EXPECT_EQ(next.input_ids, (I32{9}));
  EXPECT_EQ(next.positions, (I64{9}));
  EXPECT_EQ(next.sampled_draft_offsets, (I32{0}));
  const int32_t token = 2;
  s.update_from_output(&token, 1);
  s.abort("a");
  EXPECT_EQ(s.stats().num_free_blocks, 15);
}

TEST(SchedulerSpeculative, AStopTokenAmongTheKeptSamplesEndsTheSequenceThere) {
  Scheduler s(speculative_config(16, 4, 4));
  RequestParams params = limits(20);
  params.stop_token_ids = {2};
  s.add_request("a", I32{1, 3, 1, 3, 1}, params);
  testing::step(s, [](const SchedulerOutput&, int32_t) { return 3; });  // 1 3 1 3 1 3
  EXPECT_EQ(s.schedule().input_ids, (I32{3, 1, 3, 1, 3}));
  const I32 sampled{1, 2, 1, 3, 1};  // draft 1 taken, then the stop token 2 (the draft was 3)
  const auto& updates = s.update_from_output(sampled.data(), 5);
  ASSERT_EQ(updates.size(), 2u);
  EXPECT_EQ(updates[1].token_id, 2);
  EXPECT_EQ(updates[1].finish_reason, FinishReason::kStop);
  EXPECT_FALSE(s.has_unfinished_requests());
  EXPECT_EQ(s.stats().num_free_blocks, 15);
}

TEST(SchedulerSpeculative, AStopTokenThatIsTheDraftEndsTheChain) {
  Scheduler s(speculative_config(16, 4, 3));
  RequestParams params = limits(20);
  params.eos_token_ids = {7};
  params.min_tokens = 2;
  s.add_request("a", I32{5, 7, 5, 7, 5}, params);
  testing::step(s, [](const SchedulerOutput&, int32_t) { return 7; });  // under min_tokens: EOS goes on
  EXPECT_EQ(s.schedule().input_ids, (I32{7, 5, 7, 5}));
  const I32 sampled{5, 7, 5, 7};  // 5 taken, then 7 (EOS, the draft too) ends it
  const auto& updates = s.update_from_output(sampled.data(), 4);
  EXPECT_EQ(tokens_of({updates.begin(), updates.end()}), (I32{5, 7}));
  EXPECT_EQ(updates.back().finish_reason, FinishReason::kStop);
  EXPECT_EQ(s.stats().num_free_blocks, 15);
}

TEST(SchedulerSpeculative, DraftsStayWithinMaxTokensMaxModelLenAndTheBudget) {
  const I32 pattern{1, 2};
  auto model = [&](const SchedulerOutput& out, int32_t k) { return periodic(out, k, pattern); };
  {
    Scheduler s(speculative_config(16, 4, 8));
    s.add_request("a", I32{1, 2, 1, 2, 1}, limits(4));
    testing::step(s, model);                             // 1 output token
    EXPECT_EQ(s.schedule().input_ids, (I32{2, 1, 2}));  // 3 left: two drafts and one more
  }
  {
    SchedulerConfig config = speculative_config(16, 4, 8);
    config.max_model_len = 9;
    Scheduler s(config);
    s.add_request("a", I32{1, 2, 1, 2, 1}, limits(20));
    testing::step(s, model);
    EXPECT_EQ(s.schedule().input_ids, (I32{2, 1, 2}));  // 6 tokens of 9
  }
  {
    Scheduler s(speculative_config(16, 4, 8, 6));
    s.add_request("a", I32{1, 2, 1, 2, 1}, limits(20));
    s.add_request("b", I32{1, 2, 1, 2, 1}, limits(20));
    testing::step(s, model);
    testing::step(s, model);  // the rest of b's prompt (the budget of 6 cut it)
    const SchedulerOutput& out = s.schedule();
    EXPECT_EQ(out.query_start_loc, (I32{0, 5, 6}));  // a: a token and four drafts, leaving b its decode
    EXPECT_EQ(out.req_ids.size(), 2u);
  }
}

TEST(SchedulerSpeculative, ARequestMaySpeculateOrNot) {
  const I32 pattern{1, 2};
  auto model = [&](const SchedulerOutput& out, int32_t k) { return periodic(out, k, pattern); };
  Scheduler s(speculative_config(16, 4, 3));
  RequestParams params = limits(20);
  params.speculate = false;
  s.add_request("a", I32{1, 2, 1, 2, 1}, params);
  testing::step(s, model);
  EXPECT_EQ(s.schedule().input_ids, (I32{2}));
}

TEST(SchedulerSpeculative, NoDraftsWhileMoreSequencesRunThanTheBatchLimit) {
  const I32 pattern{1, 2};
  auto model = [&](const SchedulerOutput& out, int32_t k) { return periodic(out, k, pattern); };
  SchedulerConfig config = speculative_config(16, 4, 2);
  config.speculative_disable_by_batch_size = 1;
  Scheduler s(config);
  s.add_request("a", I32{1, 2, 1, 2, 1}, limits(20));
  s.add_request("b", I32{1, 2, 1, 2, 1}, limits(2));
  testing::step(s, model);
  EXPECT_EQ(s.schedule().input_ids, (I32{2, 2}));  // two running: plain decodes
  const I32 sampled{1, 1};
  s.update_from_output(sampled.data(), 2);  // b ends (max_tokens 2)
  EXPECT_EQ(s.schedule().input_ids, (I32{1, 2, 1}));  // a alone: drafts again
}

TEST(SchedulerSpeculative, ASequenceWhoseDraftsAreInFlightIsNotScheduledAhead) {
  const I32 pattern{1, 2};
  Scheduler s(speculative_config(16, 4, 2));
  s.add_request("a", I32{1, 2, 1, 2, 1}, limits(20));
  s.add_request("b", I32{6, 6, 6, 6, 7}, limits(20));  // (6, 7) never seen: no drafts
  testing::step(s, [&](const SchedulerOutput& out, int32_t k) { return periodic(out, k, pattern); });
  EXPECT_EQ(s.schedule().input_ids, (I32{2, 1, 2, 2}));  // a: 2 and drafts 1 2; b: its 2
  const SchedulerOutput& ahead = s.schedule();  // b decodes its placeholder; a waits for its drafts
  EXPECT_EQ(ahead.req_ids.size(), 1u);
  EXPECT_EQ(ahead.req_ids[0], "b");
  EXPECT_EQ(ahead.input_ids, (I32{-1}));

  const I32 sampled{1, 2, 1, 3};  // a keeps every draft and one more
  const auto& updates = s.update_from_output(sampled.data(), 4);
  EXPECT_EQ(tokens_of({updates.begin(), updates.end()}), (I32{1, 2, 1, 3}));
  const int32_t b_token = 4;
  s.update_from_output(&b_token, 1);
  EXPECT_EQ(sequence(s, "a").num_computed_tokens, 8);
  EXPECT_EQ(s.schedule().positions.front(), 8);  // a again, from its last token
}

TEST(SchedulerSpeculative, ASequencePreemptedWithItsDraftsInFlightTakesTheirTokensWhileWaiting) {
  // 6 usable blocks of 2 tokens. b runs first; a verifies one draft, filling the cache, and b's
  // decode scheduled ahead needs a block: a, last to run, is preempted with its drafts in flight.
  SchedulerConfig config = speculative_config(7, 2, 1);
  Scheduler s(config);
  RequestParams late = limits(8);
  late.priority = 1;
  s.add_request("b", I32{6, 6, 9}, limits(8));
  s.add_request("a", I32{1, 2, 1, 2, 1}, late);
  const I32 pattern{1, 2};
  auto model = [&](const SchedulerOutput& out, int32_t k) {
    return out.req_ids[static_cast<size_t>(out.sampled_rows[static_cast<size_t>(k)])] == "b" ? 8
                                                                                             : periodic(out, k, pattern);
  };
  testing::step(s, model);  // the prompts: b 6 6 9 8, a 1 2 1 2 1 2; 5 blocks in use

  const SchedulerOutput& verify = s.schedule();
  EXPECT_EQ(verify.input_ids, (I32{8, 2, 1}));  // b's decode; a's 2 and its draft 1
  I32 sampled(static_cast<size_t>(verify.num_sampled()));
  for (int32_t k = 0; k < verify.num_sampled(); ++k) sampled[static_cast<size_t>(k)] = model(verify, k);
  EXPECT_EQ(s.stats().num_free_blocks, 0);

  const SchedulerOutput& ahead = s.schedule();
  EXPECT_EQ(ahead.preempted_req_ids, (std::vector<std::string>{"a"}));
  EXPECT_EQ(ahead.input_ids, (I32{-1}));  // b's placeholder
  const auto& updates = s.update_from_output(sampled.data(), static_cast<int64_t>(sampled.size()));
  EXPECT_EQ(updates.size(), 3u);  // b's token; a's draft kept and one more
  const Sequence& a = sequence(s, "a");
  EXPECT_EQ(a.token_ids, (I32{1, 2, 1, 2, 1, 2, 1, 2}));
  EXPECT_EQ(a.num_computed_tokens, 0);
  EXPECT_TRUE(a.draft_ids.empty());
  EXPECT_EQ(s.num_waiting(), 1);
  const int32_t b_token = 8;
  s.update_from_output(&b_token, 1);

  while (s.has_unfinished_requests()) testing::step(s, model);
  EXPECT_EQ(s.stats().num_free_blocks, 6);
}

}  // namespace
}  // namespace kvserve
