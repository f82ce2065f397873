// Steps scheduled ahead (scheduler.h): schedule() while the step before is in flight, placeholders
// for its tokens, and what a token not yet known changes: lengths, stops, forks, preemption,
// retracted rows, handles, failures.
#include <gtest/gtest.h>

#include <deque>
#include <numeric>
#include <string>
#include <vector>

#include "kvserve/scheduler.h"
#include "scheduler_test_util.h"

namespace kvserve {
namespace {

using testing::limits;
using testing::sequence;
using testing::small_config;
using I32 = std::vector<int32_t>;
using I64 = std::vector<int64_t>;
using Views = std::vector<std::string_view>;
using Strings = std::vector<std::string>;

I32 range(int32_t first, int32_t count) {
  I32 v(static_cast<size_t>(count));
  std::iota(v.begin(), v.end(), first);
  return v;
}

TEST(SchedulerAhead, ADecodeScheduledAheadComputesThePlaceholderOfTheStepInFlight) {
  Scheduler s(small_config(10, 4, 64));
  s.add_request("a", range(10, 6), limits(3));
  EXPECT_EQ(s.schedule().logits_indices, (I64{5}));  // the prefill samples token 6

  const SchedulerOutput& ahead = s.schedule();
  EXPECT_EQ(ahead.input_ids, (I32{-1}));
  EXPECT_EQ(ahead.positions, (I64{6}));
  EXPECT_EQ(ahead.slot_mapping, (I64{10}));  // block 2, offset 2
  EXPECT_EQ(ahead.seq_lens, (I32{7}));
  EXPECT_EQ(ahead.block_table, (I32{1, 2}));
  EXPECT_EQ(ahead.logits_indices, (I64{0}));
  EXPECT_EQ(ahead.deferred_input_tokens, (I64{0}));
  EXPECT_EQ(ahead.deferred_input_sources, (I32{0}));  // entry 0 of the prefill's tokens
  EXPECT_EQ(sequence(s, "a").num_placeholders, 2);

  const int32_t first = 40;
  const auto& updates = s.update_from_output(&first, 1);  // closes the prefill
  ASSERT_EQ(updates.size(), 1u);
  EXPECT_EQ(updates[0].token_id, 40);
  EXPECT_EQ(updates[0].sampled_index, 0);
  EXPECT_EQ(updates[0].finish_reason, FinishReason::kNone);

  const SchedulerOutput& third = s.schedule();  // the decode of token 7, while token 7 is sampled
  EXPECT_EQ(third.positions, (I64{7}));
  EXPECT_EQ(third.input_ids, (I32{-1}));
  EXPECT_EQ(third.deferred_input_sources, (I32{0}));
  const int32_t second = 41;
  s.update_from_output(&second, 1);

  // Token 8 is the last (max_tokens 3) once the step in flight lands: nothing more to schedule,
  // and an empty step opens nothing.
  EXPECT_EQ(s.schedule().num_reqs, 0);
  const int32_t third_token = 42;
  const auto& last = s.update_from_output(&third_token, 1);
  ASSERT_EQ(last.size(), 1u);
  EXPECT_EQ(last[0].finish_reason, FinishReason::kLength);
  EXPECT_FALSE(s.has_unfinished_requests());
  EXPECT_EQ(s.stats().num_free_blocks, 9);
  EXPECT_TRUE(s.update_from_output(nullptr, 0).empty());  // no step open
}

TEST(SchedulerAhead, AStopTokenLeavesOneRowInFlightWhoseTokenIsDropped) {
  Scheduler s(small_config(10, 4, 64));
  RequestParams params = limits(8);
  params.eos_token_ids = {2};
  s.add_request("a", range(10, 4), params);
  s.add_request("b", range(20, 4), limits(8));
  s.schedule();
  EXPECT_EQ(s.schedule().req_ids, (Views{"a", "b"}));  // both decode ahead
  const I32 eos_and_more = {2, 30};
  const auto& updates = s.update_from_output(eos_and_more.data(), 2);
  ASSERT_EQ(updates.size(), 2u);
  EXPECT_EQ(updates[0].finish_reason, FinishReason::kStop);
  EXPECT_EQ(s.find_request("a"), nullptr);  // its blocks are free though a row of it is in flight

  EXPECT_EQ(s.schedule().req_ids, (Views{"b"}));
  const I32 in_flight = {5, 31};
  const auto& late = s.update_from_output(in_flight.data(), 2);
  ASSERT_EQ(late.size(), 1u);  // "a"'s token is dropped
  EXPECT_EQ(late[0].request_id, "b");
  EXPECT_EQ(late[0].sampled_index, 1);
  EXPECT_EQ(sequence(s, "b").token_ids, (I32{20, 21, 22, 23, 30, 31}));
}

TEST(SchedulerAhead, APromptWithSeveralSamplesForksBeforeItsNextStep) {
  Scheduler s(small_config(16, 4, 64));
  s.add_request("p", range(0, 6), limits(4, /*n=*/2));
  EXPECT_EQ(s.schedule().sampled_sample_indices, (I32{0, 1}));
  EXPECT_EQ(s.schedule().num_reqs, 0);  // which samples to run is known when the prompt's tokens are
  const I32 first = {7, 8};
  s.update_from_output(first.data(), 2);
  const SchedulerOutput& out = s.schedule();
  EXPECT_EQ(out.sample_indices, (I32{0, 1}));
  EXPECT_EQ(out.input_ids, (I32{7, 8}));
  EXPECT_TRUE(out.deferred_input_tokens.empty());
  EXPECT_EQ(s.schedule().deferred_input_sources, (I32{0, 1}));
}

TEST(SchedulerAhead, ABlockIsCachedOnlyOnceItsTokensAreKnown) {
  Scheduler s(small_config(16, 4, 64));
  s.add_request("a", range(10, 3), limits(8));
  s.schedule();  // positions 0..2; token 3 sampled
  EXPECT_EQ(s.schedule().positions, (I64{3}));  // fills block 1 with a placeholder
  EXPECT_EQ(sequence(s, "a").cached_refs.size(), 0u);
  const int32_t token = 50;
  s.update_from_output(&token, 1);
  EXPECT_EQ(s.schedule().positions, (I64{4}));
  EXPECT_EQ(sequence(s, "a").cached_refs.size(), 1u);  // registered by the next allocation

  s.add_request("b", I32{10, 11, 12, 50, 60}, limits(1));
  s.update_from_output(&token, 1);
  s.update_from_output(&token, 1);
  EXPECT_EQ(s.schedule().positions, (I64{5, 4}));  // "b" hits the block ("a" decodes position 5)
  EXPECT_EQ(s.stats().prefix_cache_hits, 4);
}

TEST(SchedulerAhead, ARequestPreemptedWhileItsTokenIsInFlightTakesItWhileWaiting) {
  Scheduler s(small_config(3, 4, 64, 64, 8));  // two usable blocks
  s.add_request("a", range(10, 4), limits(4));
  s.add_request("b", range(20, 4), limits(4));
  s.schedule();  // one block each
  const SchedulerOutput& ahead = s.schedule();  // "a" needs a second block: "b" is preempted
  EXPECT_EQ(ahead.req_ids, (Views{"a"}));
  EXPECT_EQ(ahead.preempted_req_ids, (Strings{"b"}));
  const I32 first = {30, 40};
  s.update_from_output(first.data(), 2);
  EXPECT_EQ(sequence(s, "b").token_ids, (I32{20, 21, 22, 23, 40}));
  EXPECT_EQ(sequence(s, "b").num_placeholders, 0);
  EXPECT_EQ(s.num_waiting(), 1);
  // Run on, one step always ahead, until both finish; "b" recomputes with the token it took.
  std::deque<int32_t> open = {ahead.num_sampled()};
  I32 recomputed;
  for (int32_t steps = 0; (s.has_unfinished_requests() || !open.empty()) && steps < 40; ++steps) {
    const SchedulerOutput& out = s.schedule();
    for (int32_t r = 0; r < out.num_reqs; ++r) {
      if (out.req_ids[static_cast<size_t>(r)] == "b" && recomputed.empty()) {
        recomputed.assign(out.input_ids.begin() + out.query_start_loc[static_cast<size_t>(r)],
                          out.input_ids.begin() + out.query_start_loc[static_cast<size_t>(r) + 1]);
      }
    }
    if (out.num_reqs > 0) open.push_back(out.num_sampled());
    const I32 tokens(static_cast<size_t>(open.front()), 9);
    open.pop_front();
    s.update_from_output(tokens.data(), static_cast<int64_t>(tokens.size()));
  }
  ASSERT_FALSE(recomputed.empty());
  EXPECT_EQ(recomputed.back(), 40);
  EXPECT_FALSE(s.has_unfinished_requests());
  EXPECT_EQ(s.stats().num_free_blocks, 2);
}

TEST(SchedulerAhead, ARowThatDecodedAChangedTokenIsRetractedAndComputedAgain) {
  Scheduler s(small_config(10, 4, 64));
  s.add_request("a", range(10, 6), limits(8));
  s.add_request("b", range(30, 3), limits(8));
  s.schedule();  // the prefills sample "a"'s token 6 and "b"'s token 3
  const SchedulerOutput& ahead = s.schedule();
  EXPECT_EQ(ahead.positions, (I64{6, 3}));
  const int64_t slot = ahead.slot_mapping[0];
  const I32 settled = {40, 50};  // "a"'s row decoded another token than the 40 applied
  s.update_from_output(settled.data(), 2);
  EXPECT_TRUE(s.retract_in_flight("a", 0));
  EXPECT_FALSE(s.retract_in_flight("a", 0));  // its row is void already
  EXPECT_EQ(sequence(s, "a").num_computed_tokens, 6);
  EXPECT_EQ(sequence(s, "a").num_placeholders, 0);
  EXPECT_THROW(s.retract_in_flight("a", 1), std::invalid_argument);

  const SchedulerOutput& again = s.schedule();  // "a" computes position 6 again, its input known
  EXPECT_EQ(again.positions, (I64{6, 4}));
  EXPECT_EQ(again.input_ids, (I32{40, -1}));
  EXPECT_EQ(again.slot_mapping[0], slot);
  EXPECT_EQ(again.deferred_input_tokens, (I64{1}));
  EXPECT_EQ(again.deferred_input_sources, (I32{1}));  // "b"'s entry in the step ahead
  EXPECT_THROW(s.retract_in_flight("b", 0), std::logic_error);  // two steps open
  const I32 in_flight = {7, 51};
  const auto& updates = s.update_from_output(in_flight.data(), 2);  // "a"'s row is void
  ASSERT_EQ(updates.size(), 1u);
  EXPECT_EQ(updates[0].request_id, "b");
  EXPECT_EQ(sequence(s, "a").token_ids, (I32{10, 11, 12, 13, 14, 15, 40}));
  EXPECT_EQ(sequence(s, "a").num_placeholders, 1);  // the row of the step just scheduled
}

TEST(SchedulerAhead, AHandleIsNotReusedWhileAnOpenStepHoldsIt) {
  Scheduler s(small_config(16, 4, 64));
  const int32_t handle = s.add_request("a", range(10, 4), limits(8));
  s.schedule();
  s.schedule();  // "a" decodes ahead
  s.abort("a");
  const int32_t token = 5;
  EXPECT_TRUE(s.update_from_output(&token, 1).empty());
  EXPECT_EQ(s.schedule().num_reqs, 0);  // the step ahead is still open
  EXPECT_NE(s.add_request("b", range(20, 4), limits(8)), handle);
  EXPECT_TRUE(s.update_from_output(&token, 1).empty());  // "a"'s row: never "b"'s
  EXPECT_EQ(sequence(s, "b").token_ids, range(20, 4));
  s.schedule();
  EXPECT_EQ(s.add_request("c", range(30, 4), limits(8)), handle);  // every step that held it closed
}

TEST(SchedulerAhead, AFailureEndsTheRequestsOfEveryOpenStep) {
  Scheduler s(small_config(16, 4, 64));
  s.add_request("a", range(0, 8), limits(8));
  s.schedule();  // registers blocks 0..3 and 4..7
  s.add_request("b", range(100, 3), limits(8));
  EXPECT_EQ(s.schedule().req_ids, (Views{"a", "b"}));
  s.add_request("waiting", range(200, 3), limits(8));
  EXPECT_EQ(s.fail_step(), (Strings{"a", "b"}));
  EXPECT_EQ(s.num_waiting(), 1);
  EXPECT_EQ(s.stats().num_free_blocks, 15);
  EXPECT_THROW(s.update_from_output(nullptr, 1), std::invalid_argument);  // nothing left open

  s.add_request("a", range(0, 8), limits(1));
  s.schedule();
  EXPECT_EQ(s.stats().prefix_cache_hits, 0);  // the failed steps' blocks were forgotten
}

}  // namespace
}  // namespace kvserve
