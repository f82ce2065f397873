// Randomized: thousands of add / abort / finish / step / failed-step operations on random
// configurations, checked after every step against a mirror of every sequence and a shadow KV cache;
// with steps closed as they are scheduled, and with every step scheduled ahead of the tokens of the
// one before (the fake model picks a step's tokens when it is scheduled and hands them over later,
// some of them changed, as a sampler's settled rows are, and the rows that decoded them retracted).
//
// The shadow KV cache records, per slot, a fingerprint of the token prefix whose last token the
// model would have written there. Before every forward pass each row's whole context, read through
// its block table, must hold exactly its own prefix: this catches a wrong prefix hit, a missed or
// wrong copy-on-write, a block given to two sequences, and any slot_mapping / block_table mismatch.
//
// Half the configurations speculate (prompt lookup): a row's drafts must be the proposer's, the
// fake model takes each draft half the time, and the shadow cache holds the drafts' KV as written,
// so a rejected draft read before it is computed again is caught.
#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "kvserve/ngram_proposer.h"
#include "kvserve/scheduler.h"
#include "scheduler_test_util.h"

namespace kvserve {
namespace {

constexpr int32_t kEos = 1;
constexpr int32_t kStop = 2;
constexpr int32_t kVocab = 24;

struct MirrorRequest {
  RequestParams params;
  int32_t num_prompt_tokens = 0;
  std::vector<std::vector<int32_t>> samples;  // token ids, as the scheduler should hold them
  std::vector<bool> finished;
};

uint64_t fingerprint(const std::vector<int32_t>& tokens, int64_t last_pos) {
  uint64_t h = 1469598103934665603ull;
  for (int64_t p = 0; p <= last_pos; ++p) h = (h ^ static_cast<uint64_t>(tokens[static_cast<size_t>(p)] + 1)) * 1099511628211ull;
  return h;
}

// A step scheduled and not closed yet: its entries, kept by value, and the tokens picked for them.
struct OpenStep {
  std::vector<std::pair<std::string, int32_t>> entries;  // (request id, sample index)
  std::vector<int32_t> draft_offsets;  // SchedulerOutput::sampled_draft_offsets
  std::vector<int32_t> drafts;         // the draft input after each entry, -1 for none
  std::vector<int32_t> tokens;
  std::set<std::string> request_ids;  // of its rows
  std::set<size_t> retracted;  // entries whose row decoded a token that changed (retract_in_flight)
};

class Harness {
 public:
  Harness(uint32_t seed, const SchedulerConfig& config, bool ahead)
      : rng_(seed), config_(config), scheduler_(config), ahead_(ahead),
        shadow_(static_cast<size_t>(config.num_blocks) * config.block_size, 0) {}

  void add_random_request() {
    std::uniform_int_distribution<int32_t> token(3, kVocab - 1);
    const int32_t max_prompt = config_.max_model_len - 1;
    const int32_t prompt_len = std::uniform_int_distribution<int32_t>(1, max_prompt)(rng_);
    // Prompts share one of a few prefixes, so prefix hits happen.
    std::vector<int32_t> prompt(static_cast<size_t>(prompt_len));
    const int32_t family = pick(3);
    for (int32_t i = 0; i < prompt_len; ++i) {
      prompt[static_cast<size_t>(i)] = i < prompt_len * 2 / 3 ? 3 + (family * 7 + i) % (kVocab - 3) : token(rng_);
    }
    RequestParams params;
    params.max_tokens = 1 + pick(16);
    params.min_tokens = pick(params.max_tokens + 1) / 2;
    params.n = std::min(config_.max_num_seqs, pick(4) == 0 ? 2 + pick(2) : 1);
    params.eos_token_ids = {kEos};
    params.ignore_eos = pick(5) == 0;
    if (pick(3) == 0) params.stop_token_ids = {kStop};
    params.priority = pick(3);
    params.arrival_time = static_cast<double>(pick(50));
    params.cache_salt = pick(4) == 0 ? "salt" : "";
    params.skip_prefix_cache = pick(10) == 0;

    const std::string id = "r" + std::to_string(next_id_++);
    const int64_t max_len = std::min<int64_t>(prompt_len + params.max_tokens, config_.max_model_len) - 1;
    const bool fits = params.n * ((max_len + config_.block_size - 1) / config_.block_size) <= config_.num_blocks - 1;
    MirrorRequest mirror{params, prompt_len, {prompt}, {false}};
    try {
      scheduler_.add_request(id, prompt, params);
    } catch (const std::invalid_argument&) {
      EXPECT_FALSE(fits) << "rejected a request that fits: " << id;
      return;
    }
    EXPECT_TRUE(fits) << "accepted a request larger than the cache: " << id;
    mirror_.emplace(id, std::move(mirror));
  }

  void end_random_request(bool abort) {
    if (mirror_.empty()) return;
    auto it = std::next(mirror_.begin(), pick(static_cast<int32_t>(mirror_.size())));
    if (abort) {
      scheduler_.abort(it->first);
    } else {
      scheduler_.finish_requests({it->first}, FinishReason::kStop);
    }
    mirror_.erase(it);
  }

  // Schedules a step; without `ahead`, closes it at once, else closes the step before it (if any).
  void step() {
    const SchedulerOutput& out = scheduler_.schedule();
    check_batch(out);
    run_fake_forward(out);
    if (out.num_reqs > 0) open_.push_back(record(out));
    if (pick(20) == 0) end_random_request(/*abort=*/true);
    if (!open_.empty() && (!ahead_ || open_.size() == 2 || out.num_reqs == 0)) close_oldest();
  }

  // A step whose model run fails before it writes any KV: the requests of every open step end, and
  // no later step may read what they never wrote (their slots keep their old fingerprints).
  void failed_step() {
    const SchedulerOutput& out = scheduler_.schedule();
    check_batch(out);
    if (out.num_reqs > 0) open_.push_back(record(out));
    std::set<std::string> live;
    for (const OpenStep& step : open_) {
      for (const std::string& id : step.request_ids) {
        if (mirror_.erase(id) > 0) live.insert(id);
      }
    }
    const std::vector<std::string> ended = scheduler_.fail_step();
    EXPECT_EQ(std::set<std::string>(ended.begin(), ended.end()), live);
    EXPECT_EQ(ended.size(), live.size());
    open_.clear();
    check_reference_counts();
    ++num_failed_steps_;
  }

  bool drain(int32_t max_steps) {
    for (int32_t i = 0; i < max_steps && (scheduler_.has_unfinished_requests() || !open_.empty()); ++i) step();
    return !scheduler_.has_unfinished_requests() && open_.empty();
  }

  void check_all_free() const {
    const BlockPool& pool = scheduler_.kv_cache_manager().pool();
    EXPECT_EQ(pool.num_free_blocks(), config_.num_blocks - 1);
    for (int32_t b = 0; b < config_.num_blocks; ++b) EXPECT_EQ(pool.ref_count(b), 0);
    EXPECT_TRUE(mirror_.empty());
  }

  int64_t num_copies() const { return num_copies_; }
  int64_t num_deferred() const { return num_deferred_; }
  int64_t num_dropped() const { return num_dropped_; }
  int64_t num_retracted() const { return num_retracted_; }
  int64_t num_failed_steps() const { return num_failed_steps_; }
  SchedulerStats stats() const { return scheduler_.stats(); }

  int32_t pick(int32_t n) { return std::uniform_int_distribution<int32_t>(0, n - 1)(rng_); }

 private:
  // The sequence's tokens: those the scheduler holds, then the one the open step picked for it.
  std::vector<int32_t> mirror_tokens(std::string_view id, int32_t sample) {
    auto it = mirror_.find(std::string(id));
    if (it == mirror_.end()) throw std::runtime_error("scheduled an ended request " + std::string(id));
    std::vector<int32_t> tokens = it->second.samples[static_cast<size_t>(sample)];
    if (const int32_t k = in_flight_entry(id, sample); k >= 0) tokens.push_back(in_flight().tokens[static_cast<size_t>(k)]);
    return tokens;
  }

  // A row's tokens: the sequence's (mirror_tokens), then its drafts where its positions go past
  // them, which must be the proposer's guesses from those tokens.
  std::vector<int32_t> row_tokens(const SchedulerOutput& out, int32_t r) {
    std::vector<int32_t> tokens = mirror_tokens(out.req_ids[static_cast<size_t>(r)], out.sample_indices[static_cast<size_t>(r)]);
    const int32_t num_known = static_cast<int32_t>(tokens.size());
    const int32_t num_drafts = out.seq_lens[static_cast<size_t>(r)] - num_known;
    if (num_drafts > 0) {
      std::vector<int32_t> drafts;
      EXPECT_LE(num_drafts, config_.num_speculative_tokens);
      EXPECT_EQ(propose_ngram_drafts(tokens.data(), num_known, config_.prompt_lookup_min, config_.prompt_lookup_max,
                                     num_drafts, drafts), num_drafts);
      tokens.insert(tokens.end(), drafts.begin(), drafts.end());
    }
    return tokens;
  }

  // The open step before the one being checked (steps are recorded after their checks).
  const OpenStep& in_flight() const { return open_.front(); }
  int32_t in_flight_entry(std::string_view id, int32_t sample) const {
    if (open_.empty()) return -1;
    const auto& entries = in_flight().entries;
    for (size_t k = 0; k < entries.size(); ++k) {
      if (entries[k].first == id && entries[k].second == sample && in_flight().retracted.count(k) == 0) {
        return static_cast<int32_t>(k);
      }
    }
    return -1;
  }

  OpenStep record(const SchedulerOutput& out) {
    OpenStep step;
    for (int32_t k = 0; k < out.num_sampled(); ++k) {
      const int32_t row = out.sampled_rows[static_cast<size_t>(k)];
      step.entries.emplace_back(std::string(out.req_ids[static_cast<size_t>(row)]),
                                out.sampled_sample_indices[static_cast<size_t>(k)]);
      // The input after the entry's token, when it is a draft of the same row; the model takes it half the time.
      const int64_t next = out.logits_indices[static_cast<size_t>(k)] + 1;
      const int32_t draft = next < out.query_start_loc[static_cast<size_t>(row) + 1] ? out.input_ids[static_cast<size_t>(next)] : -1;
      step.draft_offsets.push_back(out.sampled_draft_offsets[static_cast<size_t>(k)]);
      step.drafts.push_back(draft);
      step.tokens.push_back(draft >= 0 && pick(2) == 0 ? draft : pick(kVocab));
    }
    for (const std::string_view id : out.req_ids) step.request_ids.emplace(id);
    return step;
  }

  // Closes the oldest open step. Ahead, some of its tokens change after the step after it read them
  // (as a sampler's settled rows do): the rows that decoded them are retracted.
  void close_oldest() {
    OpenStep step = open_.front();
    open_.pop_front();
    std::vector<size_t> changed;
    for (size_t k = 0; ahead_ && k < step.tokens.size(); ++k) {
      if (pick(8) != 0) continue;
      step.tokens[k] = (step.tokens[k] + 1) % kVocab;
      changed.push_back(k);
    }
    const auto& updates = scheduler_.update_from_output(step.tokens.data(), static_cast<int64_t>(step.tokens.size()));
    check_updates(step, updates);
    for (const size_t k : changed) {
      const auto& [id, sample] = step.entries[k];
      const auto it = mirror_.find(id);
      if (it == mirror_.end()) continue;
      const bool finished = static_cast<size_t>(sample) < it->second.finished.size() && it->second.finished[static_cast<size_t>(sample)];
      bool decoded = false;  // a row of the open step decoded the token that changed
      for (size_t j = 0; !open_.empty() && j < open_.front().entries.size(); ++j) {
        if (open_.front().entries[j] == step.entries[k] && !finished) {
          decoded = true;
          open_.front().retracted.insert(j);
          ++num_retracted_;
        }
      }
      EXPECT_EQ(scheduler_.retract_in_flight(id, sample), decoded) << id << " sample " << sample;
    }
    check_reference_counts();
  }

  int64_t slot_of(const SchedulerOutput& out, int32_t row, int64_t pos) const {
    const int32_t block = out.block_table[static_cast<size_t>(row * out.max_blocks_per_req + pos / config_.block_size)];
    EXPECT_GE(block, 1);
    EXPECT_LT(block, config_.num_blocks);
    return static_cast<int64_t>(block) * config_.block_size + pos % config_.block_size;
  }

  void check_batch(const SchedulerOutput& out) {
    ASSERT_LE(out.num_tokens, config_.max_num_batched_tokens);
    ASSERT_LE(out.num_reqs, config_.max_num_seqs);
    ASSERT_EQ(out.query_start_loc.size(), static_cast<size_t>(out.num_reqs) + 1);
    ASSERT_EQ(out.query_start_loc.back(), out.num_tokens);
    ASSERT_EQ(out.block_table.size(), static_cast<size_t>(out.num_reqs * out.max_blocks_per_req));
    ASSERT_EQ(out.deferred_input_tokens.size(), out.deferred_input_sources.size());
    std::map<int64_t, int32_t> deferred;  // token -> entry of the open step that samples its input
    for (int32_t d = 0; d < out.num_deferred(); ++d) {
      EXPECT_TRUE(deferred.emplace(out.deferred_input_tokens[static_cast<size_t>(d)], out.deferred_input_sources[static_cast<size_t>(d)]).second);
    }
    num_deferred_ += out.num_deferred();
    std::set<int64_t> slots;
    std::set<std::pair<std::string_view, int32_t>> rows;
    for (int32_t r = 0; r < out.num_reqs; ++r) {
      const std::string_view id = out.req_ids[static_cast<size_t>(r)];
      const int32_t sample = out.sample_indices[static_cast<size_t>(r)];
      const auto tokens = row_tokens(out, r);
      const int32_t in_flight_entry_of_row = in_flight_entry(id, sample);
      EXPECT_TRUE(rows.emplace(out.req_ids[static_cast<size_t>(r)], out.sample_indices[static_cast<size_t>(r)]).second);
      const int32_t begin = out.query_start_loc[static_cast<size_t>(r)];
      const int32_t end = out.query_start_loc[static_cast<size_t>(r) + 1];
      ASSERT_LT(begin, end);
      if (config_.long_prefill_token_threshold > 0) ASSERT_LE(end - begin, config_.long_prefill_token_threshold);
      const int32_t seq_len = out.seq_lens[static_cast<size_t>(r)];
      ASSERT_LE(seq_len, static_cast<int32_t>(tokens.size()));
      for (int32_t t = begin; t < end; ++t) {
        const int64_t pos = out.positions[static_cast<size_t>(t)];
        EXPECT_EQ(pos, seq_len - (end - t));
        EXPECT_LT(pos, config_.max_model_len);
        const auto it = deferred.find(t);
        if (in_flight_entry_of_row >= 0 && pos == static_cast<int64_t>(tokens.size()) - 1) {
          // The token the open step samples: a placeholder, filled from that step's entry.
          ASSERT_NE(it, deferred.end()) << "the input of token " << t << " is not known yet but not deferred";
          EXPECT_EQ(it->second, in_flight_entry_of_row);
          EXPECT_EQ(out.input_ids[static_cast<size_t>(t)], -1);
        } else {
          EXPECT_EQ(it, deferred.end()) << "token " << t << " deferred, its input known";
          EXPECT_EQ(out.input_ids[static_cast<size_t>(t)], tokens[static_cast<size_t>(pos)]);
        }
        EXPECT_EQ(out.slot_mapping[static_cast<size_t>(t)], slot_of(out, r, pos));
        EXPECT_TRUE(slots.insert(out.slot_mapping[static_cast<size_t>(t)]).second) << "slot given twice";
      }
    }
    for (int32_t k = 0; k < out.num_sampled(); ++k) {
      // A row samples after its last known token and after each draft.
      const int32_t row = out.sampled_rows[static_cast<size_t>(k)];
      const auto known = mirror_tokens(out.req_ids[static_cast<size_t>(row)], out.sample_indices[static_cast<size_t>(row)]);
      const int32_t num_drafts = out.seq_lens[static_cast<size_t>(row)] - static_cast<int32_t>(known.size());
      const int32_t offset = out.sampled_draft_offsets[static_cast<size_t>(k)];
      ASSERT_GE(num_drafts, 0);
      ASSERT_LE(offset, num_drafts);
      EXPECT_EQ(out.logits_indices[static_cast<size_t>(k)],
                out.query_start_loc[static_cast<size_t>(row) + 1] - 1 - (num_drafts - offset));
    }
  }

  // Copies, then writes every new token's K/V, then checks every row reads its own prefix.
  void run_fake_forward(const SchedulerOutput& out) {
    const size_t bs = static_cast<size_t>(config_.block_size);
    for (int32_t c = 0; c < out.num_copies(); ++c) {
      const auto src = static_cast<size_t>(out.blocks_to_copy[static_cast<size_t>(2 * c)]);
      const auto dst = static_cast<size_t>(out.blocks_to_copy[static_cast<size_t>(2 * c + 1)]);
      ++num_copies_;
      std::copy_n(shadow_.begin() + static_cast<std::ptrdiff_t>(src * bs), bs, shadow_.begin() + static_cast<std::ptrdiff_t>(dst * bs));
    }
    for (int32_t r = 0; r < out.num_reqs; ++r) {
      const auto tokens = row_tokens(out, r);
      for (int32_t t = out.query_start_loc[static_cast<size_t>(r)]; t < out.query_start_loc[static_cast<size_t>(r) + 1]; ++t) {
        shadow_[static_cast<size_t>(out.slot_mapping[static_cast<size_t>(t)])] = fingerprint(tokens, out.positions[static_cast<size_t>(t)]);
      }
    }
    for (int32_t r = 0; r < out.num_reqs; ++r) {
      const auto tokens = row_tokens(out, r);
      for (int64_t p = 0; p < out.seq_lens[static_cast<size_t>(r)]; ++p) {
        ASSERT_EQ(shadow_[static_cast<size_t>(slot_of(out, r, p))], fingerprint(tokens, p))
            << "row " << r << " (" << out.req_ids[static_cast<size_t>(r)] << ") reads wrong KV at position " << p;
      }
    }
  }

  void check_updates(const OpenStep& step, const std::vector<SampleUpdate>& updates) {
    const auto& entries = step.entries;
    const auto& sampled = step.tokens;
    size_t u = 0;
    bool accepted = false;  // the entry before took its draft: the next of its row counts
    for (size_t k = 0; k < entries.size(); ++k) {
      const bool counts = step.draft_offsets[k] == 0 || accepted;
      accepted = false;
      if (!counts) continue;  // after a rejected draft, or a token that ended the sequence
      if (step.retracted.count(k) > 0) continue;  // its row decoded a token that changed: void
      auto it = mirror_.find(entries[k].first);
      if (it == mirror_.end()) continue;  // aborted after schedule()
      MirrorRequest& m = it->second;
      const int32_t sample = entries[k].second;
      if (static_cast<int32_t>(m.samples.size()) < m.params.n) {  // the fork
        const std::vector<int32_t> prompt = m.samples[0];
        m.samples.resize(static_cast<size_t>(m.params.n), prompt);
        m.finished.resize(static_cast<size_t>(m.params.n), false);
      }
      std::vector<int32_t>& tokens = m.samples[static_cast<size_t>(sample)];
      if (m.finished[static_cast<size_t>(sample)]) {
        // Scheduled ahead before the token that ended it was known: its token is dropped.
        ASSERT_TRUE(ahead_) << "sampled a finished sequence";
        ++num_dropped_;
        continue;
      }
      const int32_t token = sampled[k];
      tokens.push_back(token);
      const int32_t num_output = static_cast<int32_t>(tokens.size()) - m.num_prompt_tokens;
      FinishReason expected = FinishReason::kNone;
      if (num_output >= m.params.min_tokens && ((!m.params.ignore_eos && token == kEos) ||
                                                (!m.params.stop_token_ids.empty() && token == kStop))) {
        expected = FinishReason::kStop;
      } else if (num_output >= m.params.max_tokens || static_cast<int32_t>(tokens.size()) >= config_.max_model_len) {
        expected = FinishReason::kLength;
      }
      ASSERT_LT(u, updates.size());
      EXPECT_EQ(updates[u].request_id, entries[k].first);
      EXPECT_EQ(updates[u].sample_index, sample);
      EXPECT_EQ(updates[u].token_id, token);
      EXPECT_EQ(updates[u].finish_reason, expected);
      EXPECT_EQ(updates[u].stop_token_id, expected == FinishReason::kStop ? token : -1);
      ++u;
      accepted = expected == FinishReason::kNone && token == step.drafts[k];
      if (expected != FinishReason::kNone) {
        m.finished[static_cast<size_t>(sample)] = true;
        if (std::all_of(m.finished.begin(), m.finished.end(), [](bool f) { return f; }) &&
            static_cast<int32_t>(m.finished.size()) == m.params.n) {
          EXPECT_EQ(scheduler_.find_request(entries[k].first), nullptr);
          mirror_.erase(it);
        }
      }
    }
    EXPECT_EQ(u, updates.size());
  }

  // Every block's reference count equals the number of live sequences holding it.
  void check_reference_counts() const {
    std::vector<int32_t> holders(static_cast<size_t>(config_.num_blocks), 0);
    for (const auto& [id, mirror] : mirror_) {
      const Request* req = scheduler_.find_request(id);
      ASSERT_NE(req, nullptr) << id;
      for (const Sequence& seq : req->samples) {
        EXPECT_EQ(seq.token_ids, mirror.samples[static_cast<size_t>(seq.sample_index)]);
        for (int32_t b : seq.block_ids) ++holders[static_cast<size_t>(b)];
      }
    }
    const BlockPool& pool = scheduler_.kv_cache_manager().pool();
    int32_t unreferenced = 0;
    for (int32_t b = 1; b < config_.num_blocks; ++b) {
      ASSERT_EQ(pool.ref_count(b), holders[static_cast<size_t>(b)]) << "block " << b;
      unreferenced += holders[static_cast<size_t>(b)] == 0;
    }
    EXPECT_EQ(holders[0], 0) << "the null block was handed out";
    EXPECT_EQ(pool.num_free_blocks(), unreferenced);
  }

  std::mt19937 rng_;
  SchedulerConfig config_;
  Scheduler scheduler_;
  std::vector<uint64_t> shadow_;
  bool ahead_;
  std::map<std::string, MirrorRequest> mirror_;
  std::deque<OpenStep> open_;  // oldest first
  int64_t next_id_ = 0;
  int64_t num_copies_ = 0;
  int64_t num_failed_steps_ = 0;
  int64_t num_deferred_ = 0;
  int64_t num_dropped_ = 0;
  int64_t num_retracted_ = 0;
};

SchedulerConfig random_config(std::mt19937& rng) {
  auto pick = [&](int32_t lo, int32_t hi) { return std::uniform_int_distribution<int32_t>(lo, hi)(rng); };
  SchedulerConfig config;
  config.block_size = 1 << pick(0, 3);
  config.max_model_len = pick(8, 40);
  const int32_t one_request = (config.max_model_len - 2) / config.block_size + 1;
  config.num_blocks = 1 + pick(one_request, 4 * one_request);
  config.max_num_seqs = pick(1, 6);
  config.enable_chunked_prefill = pick(0, 9) < 7;
  config.enable_prefix_caching = pick(0, 9) < 8;
  config.max_num_batched_tokens = config.enable_chunked_prefill ? pick(1, 48) : pick(config.max_model_len, 64);
  config.num_speculative_tokens = pick(0, 1) * pick(1, 5);
  config.prompt_lookup_min = pick(1, 2);
  config.prompt_lookup_max = config.prompt_lookup_min + pick(0, 2);
  config.long_prefill_token_threshold = config.enable_chunked_prefill && pick(0, 2) == 0 ? pick(1, 8) : 0;
  return config;
}

void run_random_workloads(bool ahead) {
  int64_t preemptions = 0, hits = 0, copies = 0, failed_steps = 0, deferred = 0, dropped = 0, retracted = 0;
  int64_t draft_tokens = 0, accepted = 0;
  for (uint32_t seed = 0; seed < 40; ++seed) {
    std::mt19937 config_rng(seed);
    const SchedulerConfig config = random_config(config_rng);
    SCOPED_TRACE("seed " + std::to_string(seed) + ", block_size " + std::to_string(config.block_size) +
                 ", num_blocks " + std::to_string(config.num_blocks) + ", max_model_len " +
                 std::to_string(config.max_model_len));
    Harness harness(seed, config, ahead);
    for (int32_t op = 0; op < 300; ++op) {
      const int32_t dice = harness.pick(100);
      if (dice < 30) {
        harness.add_random_request();
      } else if (dice < 33) {
        harness.end_random_request(/*abort=*/true);
      } else if (dice < 35) {
        harness.end_random_request(/*abort=*/false);
      } else if (dice < 37) {
        harness.failed_step();
      } else {
        harness.step();
      }
      if (::testing::Test::HasFatalFailure()) return;
    }
    ASSERT_TRUE(harness.drain(20000)) << "requests did not finish: livelock";
    harness.check_all_free();
    preemptions += harness.stats().num_preemptions;
    hits += harness.stats().prefix_cache_hits;
    copies += harness.num_copies();
    failed_steps += harness.num_failed_steps();
    deferred += harness.num_deferred();
    dropped += harness.num_dropped();
    retracted += harness.num_retracted();
    draft_tokens += harness.stats().num_draft_tokens;
    accepted += harness.stats().num_accepted_tokens;
  }
  // The workloads reach the paths they are meant to check.
  EXPECT_GT(preemptions, 100);
  EXPECT_GT(hits, 1000);
  EXPECT_GT(copies, 50);
  EXPECT_GT(failed_steps, 100);
  // Ahead, a sequence proposes only when no token of it is in flight: after a step with drafts.
  EXPECT_GT(draft_tokens, ahead ? 200 : 800);
  EXPECT_GT(accepted, ahead ? 60 : 250);
  if (ahead) {
    EXPECT_GT(deferred, 1000);
    EXPECT_GT(dropped, 50);  // rows of sequences that ended on the token in flight
    EXPECT_GT(retracted, 200);
  } else {
    EXPECT_EQ(deferred, 0);
  }
}

TEST(SchedulerProperties, RandomWorkloadsKeepEveryInvariantAndFinish) { run_random_workloads(/*ahead=*/false); }

TEST(SchedulerProperties, RandomWorkloadsScheduledAheadKeepEveryInvariantAndFinish) {
  run_random_workloads(/*ahead=*/true);
}

}  // namespace
}  // namespace kvserve
