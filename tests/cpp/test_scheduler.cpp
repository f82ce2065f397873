// The scheduler step by step: exact arrays, chunking, budgets, prefix hits, preemption, priorities.
#include <gtest/gtest.h>

#include <numeric>
#include <string>
#include <vector>

#include "kvserve/scheduler.h"
#include "scheduler_test_util.h"

namespace kvserve {
namespace {

using testing::limits;
using testing::small_config;
using testing::step;
using I32 = std::vector<int32_t>;
using I64 = std::vector<int64_t>;
using Views = std::vector<std::string_view>;

I32 range(int32_t first, int32_t count) {
  I32 v(static_cast<size_t>(count));
  std::iota(v.begin(), v.end(), first);
  return v;
}

TEST(Scheduler, PrefillThenDecodeProduceExactArrays) {
  Scheduler s(small_config(10, 4, 64));
  s.add_request("a", range(10, 6), limits(3));

  const SchedulerOutput& out = s.schedule();
  EXPECT_EQ(out.num_reqs, 1);
  EXPECT_EQ(out.num_tokens, 6);
  EXPECT_EQ(out.input_ids, range(10, 6));
  EXPECT_EQ(out.positions, (I64{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(out.slot_mapping, (I64{4, 5, 6, 7, 8, 9}));  // blocks 1 and 2
  EXPECT_EQ(out.query_start_loc, (I32{0, 6}));
  EXPECT_EQ(out.seq_lens, (I32{6}));
  EXPECT_EQ(out.max_blocks_per_req, 2);
  EXPECT_EQ(out.block_table, (I32{1, 2}));
  EXPECT_EQ(out.logits_indices, (I64{5}));
  EXPECT_EQ(out.req_ids, (Views{"a"}));
  EXPECT_EQ(out.sample_indices, (I32{0}));
  EXPECT_EQ(out.sampled_sample_indices, (I32{0}));
  const int32_t first = 40;
  const auto& updates = s.update_from_output(&first, 1);
  ASSERT_EQ(updates.size(), 1u);
  EXPECT_EQ(updates[0].request_id, "a");
  EXPECT_EQ(updates[0].token_id, 40);
  EXPECT_EQ(updates[0].finish_reason, FinishReason::kNone);

  const SchedulerOutput& decode = s.schedule();
  EXPECT_EQ(decode.input_ids, (I32{40}));
  EXPECT_EQ(decode.positions, (I64{6}));
  EXPECT_EQ(decode.slot_mapping, (I64{10}));
  EXPECT_EQ(decode.query_start_loc, (I32{0, 1}));
  EXPECT_EQ(decode.seq_lens, (I32{7}));
  EXPECT_EQ(decode.logits_indices, (I64{0}));
  const int32_t second = 41;
  s.update_from_output(&second, 1);

  auto last = step(s);
  ASSERT_EQ(last.size(), 1u);
  EXPECT_EQ(last[0].token_id, 42);
  EXPECT_EQ(last[0].finish_reason, FinishReason::kLength);
  EXPECT_FALSE(s.has_unfinished_requests());
  EXPECT_EQ(s.stats().num_free_blocks, 9);
  EXPECT_EQ(s.schedule().num_reqs, 0);
}

TEST(Scheduler, ChunkedPrefillSplitsLongPromptsAndRunsRunningRequestsFirst) {
  Scheduler s(small_config(16, 4, 64, /*max_num_batched_tokens=*/4));
  s.add_request("long", range(0, 10), limits(2));
  s.add_request("short", range(100, 3), limits(2));

  const SchedulerOutput& s1 = s.schedule();
  EXPECT_EQ(s1.req_ids, (Views{"long"}));
  EXPECT_EQ(s1.positions, (I64{0, 1, 2, 3}));
  EXPECT_TRUE(s1.logits_indices.empty());
  s.update_from_output(nullptr, 0);

  const SchedulerOutput& s2 = s.schedule();
  EXPECT_EQ(s2.req_ids, (Views{"long"}));
  EXPECT_EQ(s2.positions, (I64{4, 5, 6, 7}));
  s.update_from_output(nullptr, 0);

  const SchedulerOutput& s3 = s.schedule();
  EXPECT_EQ(s3.req_ids, (Views{"long", "short"}));
  EXPECT_EQ(s3.positions, (I64{8, 9, 0, 1}));
  EXPECT_EQ(s3.query_start_loc, (I32{0, 2, 4}));
  EXPECT_EQ(s3.seq_lens, (I32{10, 2}));
  EXPECT_EQ(s3.logits_indices, (I64{1}));  // only the long prompt is complete
  const int32_t token = 7;
  s.update_from_output(&token, 1);

  const SchedulerOutput& s4 = s.schedule();
  EXPECT_EQ(s4.req_ids, (Views{"long", "short"}));
  EXPECT_EQ(s4.positions, (I64{10, 2}));
  EXPECT_EQ(s4.logits_indices, (I64{0, 1}));
}

TEST(Scheduler, LongPrefillTokenThresholdLeavesRoomForThePromptsBehind) {
  // vLLM's long_prefill_token_threshold: a sequence computes at most 4 tokens a step, so the long
  // prompt no longer takes the whole budget of 16 from the short ones behind it, and a decode
  // (one token) runs beside it.
  SchedulerConfig config = small_config(32, 4, 64, /*max_num_batched_tokens=*/16);
  config.long_prefill_token_threshold = 4;
  Scheduler s(config);
  s.add_request("long", range(0, 10), limits(2));
  s.add_request("short", range(100, 3), limits(2));
  s.add_request("other", range(200, 6), limits(2));

  const SchedulerOutput& s1 = s.schedule();
  EXPECT_EQ(s1.req_ids, (Views{"long", "short", "other"}));
  EXPECT_EQ(s1.query_start_loc, (I32{0, 4, 7, 11}));
  EXPECT_EQ(s1.positions, (I64{0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3}));
  EXPECT_EQ(s1.logits_indices, (I64{6}));  // the short prompt is whole
  const int32_t token = 9;
  s.update_from_output(&token, 1);

  const SchedulerOutput& s2 = s.schedule();
  EXPECT_EQ(s2.req_ids, (Views{"long", "short", "other"}));
  EXPECT_EQ(s2.positions, (I64{4, 5, 6, 7, 3, 4, 5}));
  EXPECT_EQ(s2.logits_indices, (I64{4, 6}));  // the short one's decode, the other's last prompt token
}

TEST(Scheduler, WithoutChunkedPrefillAPromptWaitsForRoom) {
  SchedulerConfig config = small_config(16, 4, 8, /*max_num_batched_tokens=*/8);
  config.enable_chunked_prefill = false;
  Scheduler s(config);
  s.add_request("a", range(0, 6), limits(2));
  s.add_request("b", range(50, 5), limits(2));
  EXPECT_EQ(s.schedule().req_ids, (Views{"a"}));
  const int32_t token = 1;
  s.update_from_output(&token, 1);
  const SchedulerOutput& out = s.schedule();
  EXPECT_EQ(out.req_ids, (Views{"a", "b"}));
  EXPECT_EQ(out.num_tokens, 6);
}

TEST(Scheduler, MaxNumSeqsCapsTheBatch) {
  Scheduler s(small_config(32, 4, 64, 64, /*max_num_seqs=*/2));
  for (const char* id : {"a", "b", "c"}) s.add_request(id, range(0, 3), limits(id[0] == 'a' ? 1 : 3));
  auto updates = step(s);
  EXPECT_EQ(updates.size(), 2u);
  EXPECT_EQ(s.num_running(), 1);  // "a" finished after one token
  EXPECT_EQ(s.num_waiting(), 1);
  EXPECT_EQ(s.schedule().req_ids, (Views{"b", "c"}));
}

TEST(Scheduler, PrefixHitSkipsCachedBlocksAndIsCounted) {
  Scheduler s(small_config(16, 4, 64));
  s.add_request("first", range(0, 9), limits(1));
  step(s);
  I32 prompt = range(0, 9);
  prompt.push_back(77);
  s.add_request("second", prompt, limits(1));
  const SchedulerOutput& out = s.schedule();
  EXPECT_EQ(out.positions, (I64{8, 9}));  // blocks 0 and 1 came from the cache
  EXPECT_EQ(out.seq_lens, (I32{10}));
  EXPECT_EQ(out.block_table, (I32{1, 2, 4}));  // block 3 held the first prompt's tail: freed first
  const SchedulerStats stats = s.stats();
  EXPECT_EQ(stats.prefix_cache_queries, 9 + 10);
  EXPECT_EQ(stats.prefix_cache_hits, 8);
}

TEST(Scheduler, SaltAndSkipPrefixCacheBypassSharing) {
  Scheduler s(small_config(16, 4, 64));
  s.add_request("first", range(0, 9), limits(1));
  step(s);
  RequestParams salted = limits(1);
  salted.cache_salt = "tenant";
  s.add_request("salted", range(0, 9), salted);
  RequestParams skipping = limits(1);
  skipping.skip_prefix_cache = true;
  s.add_request("skipping", range(0, 9), skipping);
  const SchedulerOutput& out = s.schedule();
  EXPECT_EQ(out.seq_lens, (I32{9, 9}));
  EXPECT_EQ(out.num_tokens, 18);
  EXPECT_EQ(s.stats().prefix_cache_hits, 0);
}

TEST(Scheduler, PreemptsTheLastRunningRequestAndResumesItFromTheCache) {
  // 3 usable blocks of 2 tokens: "b" may need all three.
  Scheduler s(small_config(4, 2, 8));
  s.add_request("a", I32{1, 2}, limits(2));
  s.add_request("b", I32{5, 6}, limits(4));
  step(s);  // a: block 1, b: block 2

  const SchedulerOutput& out = s.schedule();  // a takes block 3; b finds none
  EXPECT_EQ(out.req_ids, (Views{"a"}));
  EXPECT_EQ(out.preempted_req_ids, (std::vector<std::string>{"b"}));
  const Request* b = s.find_request("b");
  EXPECT_EQ(b->status, RequestStatus::kWaiting);
  EXPECT_EQ(b->samples[0].num_computed_tokens, 0);
  EXPECT_EQ(b->samples[0].token_ids, (I32{5, 6, 7}));  // its output survives
  const int32_t token = 4;
  s.update_from_output(&token, 1);  // "a" ends, its blocks go back; b's prompt block is still cached

  bool resumed = false;
  while (s.has_unfinished_requests()) {
    const SchedulerOutput& next = s.schedule();
    for (int32_t r = 0; r < next.num_reqs; ++r) {
      if (next.req_ids[static_cast<size_t>(r)] == "b" && !resumed) {
        resumed = true;
        EXPECT_EQ(next.positions[static_cast<size_t>(next.query_start_loc[static_cast<size_t>(r)])], 2);
      }
    }
    std::vector<int32_t> sampled(static_cast<size_t>(next.num_sampled()), 9);
    s.update_from_output(sampled.data(), next.num_sampled());
  }
  EXPECT_TRUE(resumed);
  EXPECT_EQ(s.stats().num_preemptions, 1);
  EXPECT_EQ(s.stats().num_free_blocks, 3);
}

TEST(Scheduler, PriorityOrdersAdmissionAndPreemption) {
  Scheduler s(small_config(4, 2, 8, /*max_num_batched_tokens=*/2));
  RequestParams low = limits(4);
  low.priority = 1;
  RequestParams high = limits(4);
  high.priority = 0;
  s.add_request("low", I32{1, 2}, low);
  s.add_request("high", I32{5, 6}, high);
  EXPECT_EQ(s.schedule().req_ids, (Views{"high"}));
  int32_t token = 3;
  s.update_from_output(&token, 1);
  // "high" decodes first; the one token left starts "low"'s prompt.
  const SchedulerOutput& out = s.schedule();
  EXPECT_EQ(out.req_ids, (Views{"high", "low"}));
  EXPECT_EQ(out.logits_indices, (I64{0}));
}

TEST(Scheduler, LowerPriorityRunningRequestIsTheVictim) {
  Scheduler s(small_config(4, 2, 8));
  RequestParams low = limits(4);
  low.priority = 1;
  s.add_request("low", I32{1, 2}, low);
  s.add_request("high", I32{5, 6}, limits(4));
  step(s);
  EXPECT_EQ(s.schedule().preempted_req_ids, (std::vector<std::string>{"low"}));
}

TEST(Scheduler, AbortFreesEverythingAndIsReportedAtTheNextStep) {
  Scheduler s(small_config(16, 4, 64, 64, /*max_num_seqs=*/2));
  s.add_request("a", range(0, 6), limits(8));
  s.add_request("b", range(0, 6), limits(8));
  s.add_request("waiting", range(0, 6), limits(8));
  step(s);
  s.abort("waiting");
  s.abort("a");
  EXPECT_THROW(s.abort("a"), std::invalid_argument);
  const SchedulerOutput& out = s.schedule();
  EXPECT_EQ(out.req_ids, (Views{"b"}));
  EXPECT_EQ(out.finished_req_ids, (std::vector<std::string>{"waiting", "a"}));
  // Aborted between schedule() and update: its sampled entry is dropped.
  s.abort("b");
  const int32_t token = 1;
  EXPECT_TRUE(s.update_from_output(&token, 1).empty());
  EXPECT_EQ(s.stats().num_free_blocks, 15);
  EXPECT_FALSE(s.has_unfinished_requests());
  s.add_request("a", range(0, 6), limits(8));  // the id is free again
}

TEST(Scheduler, AFailedStepEndsItsRequestsAndForgetsTheBlocksItWasToWrite) {
  Scheduler s(small_config(16, 4, 64));
  s.add_request("first", range(0, 9), limits(1));
  step(s);  // tokens 0..7 are cached, and were computed
  s.add_request("extends", range(0, 13), limits(4));
  s.add_request("new", range(100, 9), limits(4));
  s.add_request("ended", range(200, 9), limits(4));
  EXPECT_EQ(s.schedule().positions.front(), 8);  // "extends" hits 8 tokens, then registers 8..11
  s.abort("ended");  // ended between schedule() and the failure: its blocks are forgotten too
  s.fail_step();
  EXPECT_FALSE(s.has_unfinished_requests());
  EXPECT_EQ(s.stats().num_free_blocks, 15);

  s.add_request("extends", range(0, 13), limits(1));
  s.add_request("new", range(100, 9), limits(1));
  s.add_request("ended", range(200, 9), limits(1));
  const SchedulerOutput& out = s.schedule();
  EXPECT_EQ(out.finished_req_ids, (std::vector<std::string>{"ended", "extends", "new"}));
  EXPECT_EQ(out.positions.front(), 8);  // what earlier steps computed is still a hit
  EXPECT_EQ(out.query_start_loc, (I32{0, 5, 14, 23}));
  EXPECT_EQ(s.stats().prefix_cache_hits, 8 + 8);
}

TEST(Scheduler, StopConditions) {
  Scheduler s(small_config(32, 4, 12));
  RequestParams eos = limits(8);
  eos.eos_token_ids = {50, 51};
  eos.min_tokens = 2;
  s.add_request("eos", I32{1}, eos);
  RequestParams ignoring = eos;
  ignoring.ignore_eos = true;
  ignoring.stop_token_ids = {60};
  s.add_request("stop-token", I32{1}, ignoring);
  s.add_request("model-len", range(0, 9), limits(100));

  // Step 1: EOS before min_tokens is just a token. Step 2: it ends "eos"; "stop-token" ignores it.
  // Step 3: the stop token ends "stop-token"; "model-len" reaches 12 tokens.
  const std::vector<std::vector<int32_t>> tokens = {{51, 51, 3}, {50, 50, 3}, {60, 3}};
  std::vector<std::vector<SampleUpdate>> steps;
  for (const auto& t : tokens) steps.push_back(step(s, [&](const SchedulerOutput&, int32_t k) { return t[static_cast<size_t>(k)]; }));
  EXPECT_EQ(steps[0][0].finish_reason, FinishReason::kNone);
  EXPECT_EQ(steps[1][0].finish_reason, FinishReason::kStop);
  EXPECT_EQ(steps[1][0].stop_token_id, 50);
  EXPECT_EQ(steps[1][1].finish_reason, FinishReason::kNone);
  EXPECT_EQ(steps[1][2].finish_reason, FinishReason::kNone);
  EXPECT_EQ(steps[2][0].request_id, "stop-token");
  EXPECT_EQ(steps[2][0].finish_reason, FinishReason::kStop);
  EXPECT_EQ(steps[2][0].stop_token_id, 60);
  EXPECT_EQ(steps[2][1].finish_reason, FinishReason::kLength);
  EXPECT_EQ(steps[2][1].stop_token_id, -1);
  EXPECT_FALSE(s.has_unfinished_requests());
}

TEST(Scheduler, ParallelSamplesForkAtThePromptAndCopyThePartialBlock) {
  Scheduler s(small_config(16, 4, 64));
  RequestParams params = limits(4, /*n=*/3);
  params.eos_token_ids = {0};
  s.add_request("p", range(10, 6), params);

  const SchedulerOutput& prefill = s.schedule();
  EXPECT_EQ(prefill.num_reqs, 1);
  EXPECT_EQ(prefill.logits_indices, (I64{5, 5, 5}));
  EXPECT_EQ(prefill.sampled_sample_indices, (I32{0, 1, 2}));
  const I32 first = {7, 8, 9};
  const auto& forked = s.update_from_output(first.data(), 3);
  ASSERT_EQ(forked.size(), 3u);
  for (int32_t i = 0; i < 3; ++i) {
    EXPECT_EQ(forked[static_cast<size_t>(i)].sample_index, i);
    EXPECT_EQ(forked[static_cast<size_t>(i)].token_id, first[static_cast<size_t>(i)]);
  }

  const SchedulerOutput& decode = s.schedule();
  EXPECT_EQ(decode.req_ids, (Views{"p", "p", "p"}));
  EXPECT_EQ(decode.sample_indices, (I32{0, 1, 2}));
  EXPECT_EQ(decode.input_ids, (I32{7, 8, 9}));
  EXPECT_EQ(decode.positions, (I64{6, 6, 6}));
  EXPECT_EQ(decode.blocks_to_copy, (I64{2, 3, 2, 4}));
  EXPECT_EQ(decode.block_table, (I32{1, 3, 1, 4, 1, 2}));
  EXPECT_EQ(decode.slot_mapping, (I64{14, 18, 10}));
  EXPECT_EQ(s.kv_cache_manager().pool().ref_count(1), 3);

  const I32 second = {0, 5, 5};  // sample 0 samples EOS
  const auto& ended = s.update_from_output(second.data(), 3);
  EXPECT_EQ(ended[0].finish_reason, FinishReason::kStop);
  EXPECT_EQ(s.kv_cache_manager().pool().ref_count(1), 2);
  EXPECT_EQ(s.schedule().sample_indices, (I32{1, 2}));
  const I32 third = {5, 5};
  s.update_from_output(third.data(), 2);
  s.abort("p");
  EXPECT_FALSE(s.has_unfinished_requests());
  EXPECT_EQ(s.stats().num_free_blocks, 15);
}

TEST(Scheduler, FinishSampleEndsOneSampleAndFinishRequestsAll) {
  Scheduler s(small_config(16, 4, 64));
  s.add_request("p", range(0, 3), limits(8, 2));
  s.add_request("q", range(0, 3), limits(8));
  step(s);
  s.finish_sample("p", 1, FinishReason::kStop);
  EXPECT_EQ(s.schedule().sample_indices, (I32{0, 0}));
  const I32 tokens = {1, 1};
  s.update_from_output(tokens.data(), 2);
  EXPECT_THROW(s.finish_requests({"q", "nope"}, FinishReason::kStop), std::invalid_argument);
  EXPECT_NE(s.find_request("q"), nullptr);  // nothing ended by the failed call
  s.finish_requests({"p", "q"}, FinishReason::kStop);
  EXPECT_EQ(s.schedule().finished_req_ids, (std::vector<std::string>{"p", "q"}));
  EXPECT_EQ(s.stats().num_free_blocks, 15);
}

TEST(Scheduler, CallsOutOfOrderAreRejected) {
  Scheduler s(small_config(16, 4, 64));
  s.add_request("a", range(0, 3), limits(4));
  s.schedule();
  s.schedule();  // one step may be in flight: the next is scheduled ahead of its tokens
  EXPECT_THROW(s.schedule(), std::logic_error);  // but not two
  const I32 two = {1, 2};
  EXPECT_THROW(s.update_from_output(two.data(), 2), std::invalid_argument);
  const int32_t negative = -3;
  EXPECT_THROW(s.update_from_output(&negative, 1), std::invalid_argument);
  const int32_t good = 3;
  EXPECT_EQ(s.update_from_output(&good, 1).size(), 1u);
  EXPECT_EQ(s.find_request("a")->samples[0].token_ids.size(), 4u);  // applied once
}

}  // namespace
}  // namespace kvserve
