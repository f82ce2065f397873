// Bad configurations and requests: a std::invalid_argument naming the value and what was expected.
#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <string>

#include "kvserve/scheduler.h"
#include "scheduler_test_util.h"

namespace kvserve {
namespace {

using testing::limits;
using testing::small_config;

constexpr int32_t kIntMax = std::numeric_limits<int32_t>::max();

void expect_invalid(const std::function<void()>& call, const std::string& message) {
  try {
    call();
    ADD_FAILURE() << "no exception; expected: " << message;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << "got: " << e.what();
  }
}

// Building a Scheduler from small_config(16, 16, 64) after `edit` changed it.
std::function<void()> with_config(const std::function<void(SchedulerConfig&)>& edit) {
  return [edit] {
    SchedulerConfig config = small_config(16, 16, 64);
    edit(config);
    Scheduler s(config);
  };
}

TEST(SchedulerErrors, BadConfigs) {
  expect_invalid(with_config([](SchedulerConfig& c) { c.block_size = 12; }), "block_size must be a power of two in [1, 256], got 12");
  expect_invalid(with_config([](SchedulerConfig& c) { c.block_size = 512; }), "got 512");
  expect_invalid(with_config([](SchedulerConfig& c) { c.num_blocks = 1; }), "num_blocks must be >= 2");
  expect_invalid(with_config([](SchedulerConfig& c) { c.max_num_seqs = 0; }), "max_num_seqs must be >= 1, got 0");
  expect_invalid(with_config([](SchedulerConfig& c) { c.max_num_batched_tokens = -1; }), "max_num_batched_tokens must be >= 1, got -1");
  expect_invalid(with_config([](SchedulerConfig& c) { c.max_model_len = 1; }), "max_model_len must be >= 2");
  expect_invalid(with_config([](SchedulerConfig& c) {
                   c.enable_chunked_prefill = false;
                   c.max_num_batched_tokens = 32;
                 }),
                 "max_num_batched_tokens = 32 is smaller than max_model_len = 64");
  expect_invalid(with_config([](SchedulerConfig& c) { c.long_prefill_token_threshold = -1; }),
                 "long_prefill_token_threshold must be >= 0 (0: no cap), got -1");
  expect_invalid(with_config([](SchedulerConfig& c) {
                   c.enable_chunked_prefill = false;
                   c.long_prefill_token_threshold = 8;
                 }),
                 "long_prefill_token_threshold must be 0 without chunked prefill");
}

// Upper bounds: the constructor reserves its per-step arrays at their hard bound, which used to be
// computed in int32 (max_model_len = INT_MAX overflowed) and unbounded (a block table of terabytes).
TEST(SchedulerErrors, ConfigsPastTheUpperBounds) {
  expect_invalid(with_config([](SchedulerConfig& c) { c.max_model_len = kIntMax; }),
                 "max_model_len must be <= 16777216, got 2147483647");
  expect_invalid(with_config([](SchedulerConfig& c) {
                   c.max_num_seqs = 1024;
                   c.max_model_len = 1 << 30;
                   c.block_size = 1;
                 }),
                 "max_model_len must be <= 16777216, got 1073741824");
  expect_invalid(with_config([](SchedulerConfig& c) { c.max_num_seqs = kIntMax; }), "max_num_seqs must be <= 65536, got 2147483647");
  expect_invalid(with_config([](SchedulerConfig& c) { c.max_num_batched_tokens = kIntMax; }),
                 "max_num_batched_tokens must be <= 16777216, got 2147483647");
  // Each field within its bound, the block table past its own: 65536 rows of 8192 blocks.
  expect_invalid(with_config([&](SchedulerConfig& c) {
                   c.num_blocks = 8193;
                   c.block_size = 1;
                   c.max_num_seqs = kMaxNumSeqs;
                   c.max_model_len = kMaxModelLen;
                 }),
                 "max_num_seqs = 65536 rows of 8192 blocks (max_model_len / block_size = 16777216 / 1, at most "
                 "num_blocks - 1) make a block table of 536870912 entries, expected at most 268435456");
}

TEST(SchedulerErrors, TheLargestConfigsAreAccepted) {
  // A sequence holds at most num_blocks - 1 blocks: a small cache bounds the block table, however
  // long max_model_len is.
  SchedulerConfig config = small_config(64, 1, kMaxModelLen, kMaxNumBatchedTokens, kMaxNumSeqs);
  EXPECT_EQ(max_blocks_per_seq(config), 63);
  Scheduler s(config);
  s.add_request("a", {1, 2, 3}, limits(4));
  EXPECT_EQ(s.schedule().num_tokens, 3);
  // Long contexts with many sequences, within the block table's bound.
  config = small_config(kIntMax, 16, 1 << 20, 8192, 4096);
  EXPECT_EQ(max_blocks_per_seq(config), 65536);
  EXPECT_NO_THROW(validate(config));
}

TEST(SchedulerErrors, BadRequests) {
  Scheduler s(small_config(16, 4, 16));
  s.add_request("a", {1, 2}, limits(2));
  expect_invalid([&] { s.add_request("a", {1}, limits(2)); }, "request_id 'a' is already in use");
  expect_invalid([&] { s.add_request("e", {}, limits(2)); }, "prompt_token_ids of request 'e' is empty");
  expect_invalid([&] { s.add_request("n", {1, -4}, limits(2)); }, "prompt_token_ids[1] = -4: token ids must be >= 0");
  expect_invalid([&] { s.add_request("l", std::vector<int32_t>(16, 1), limits(2)); },
                 "prompt of 16 tokens leaves no room for output: prompt + 1 must be <= max_model_len = 16");
  expect_invalid([&] { s.add_request("m", {1}, limits(0)); }, "max_tokens must be >= 1, got 0");
  RequestParams min_over = limits(2);
  min_over.min_tokens = 3;
  expect_invalid([&] { s.add_request("m", {1}, min_over); }, "min_tokens must be in [0, max_tokens = 2], got 3");
  expect_invalid([&] { s.add_request("n", {1}, limits(2, 0)); }, "n must be in [1, max_num_seqs = 8], got 0");
  RequestParams bad_eos = limits(2);
  bad_eos.eos_token_ids = {2, -1};
  expect_invalid([&] { s.add_request("x", {1}, bad_eos); }, "eos_token_ids[1] = -1");
  // 8 samples of up to 15 cached tokens need 8 * 4 blocks; the cache has 15.
  expect_invalid([&] { s.add_request("big", {1}, limits(100, 8)); },
                 "request 'big' needs up to 32 KV-cache blocks (n = 8 samples of up to 15 cached tokens, "
                 "block_size = 4) but the cache has 15");
  expect_invalid([&] { s.abort("missing"); }, "unknown request_id 'missing'");
  expect_invalid([&] { s.finish_sample("a", 1, FinishReason::kStop); }, "sample_index must be in [0, n = 1), got 1");
  expect_invalid([&] { s.finish_requests({"a"}, FinishReason::kNone); }, "reason must be a finished reason");
  // A value past the enum (cast from an integer) used to end the request with a nameless reason.
  const auto past_the_enum = static_cast<FinishReason>(9);
  expect_invalid([&] { s.finish_requests({"a"}, past_the_enum); },
                 "finish_requests: reason must be a finished reason (stop, length or abort), got 9");
  expect_invalid([&] { s.finish_sample("a", 0, past_the_enum); },
                 "finish_sample: reason must be a finished reason (stop, length or abort), got 9");
  expect_invalid([&] { s.finish_sample("a", 0, FinishReason::kNone); }, "got none");
  // None of the rejected requests left anything behind.
  EXPECT_EQ(s.num_waiting(), 1);
  EXPECT_EQ(s.stats().num_free_blocks, 15);
}

TEST(SchedulerErrors, FinishReasonNames) {
  EXPECT_EQ(parse_finish_reason("length"), FinishReason::kLength);
  EXPECT_EQ(finish_reason_name(FinishReason::kAbort), "abort");
  expect_invalid([] { parse_finish_reason("done"); }, "finish reason must be \"stop\", \"length\" or \"abort\", got \"done\"");
}

}  // namespace
}  // namespace kvserve
