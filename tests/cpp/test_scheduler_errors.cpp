// Bad configurations and requests: a std::invalid_argument naming the value and what was expected.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "kvserve/scheduler.h"
#include "scheduler_test_util.h"

namespace kvserve {
namespace {

using testing::limits;
using testing::small_config;

void expect_invalid(const std::function<void()>& call, const std::string& message) {
  try {
    call();
    ADD_FAILURE() << "no exception; expected: " << message;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << "got: " << e.what();
  }
}

TEST(SchedulerErrors, BadConfigs) {
  auto make = [](auto edit) {
    return [edit] {
      SchedulerConfig config = small_config(16, 16, 64);
      edit(config);
      Scheduler s(config);
    };
  };
  expect_invalid(make([](SchedulerConfig& c) { c.block_size = 12; }), "block_size must be a power of two in [1, 256], got 12");
  expect_invalid(make([](SchedulerConfig& c) { c.block_size = 512; }), "got 512");
  expect_invalid(make([](SchedulerConfig& c) { c.num_blocks = 1; }), "num_blocks must be >= 2");
  expect_invalid(make([](SchedulerConfig& c) { c.max_num_seqs = 0; }), "max_num_seqs must be >= 1, got 0");
  expect_invalid(make([](SchedulerConfig& c) { c.max_num_batched_tokens = -1; }), "max_num_batched_tokens must be >= 1, got -1");
  expect_invalid(make([](SchedulerConfig& c) { c.max_model_len = 1; }), "max_model_len must be >= 2");
  expect_invalid(make([](SchedulerConfig& c) {
                   c.enable_chunked_prefill = false;
                   c.max_num_batched_tokens = 32;
                 }),
                 "max_num_batched_tokens = 32 is smaller than max_model_len = 64");
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
