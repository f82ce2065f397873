// The CUDA paged-attention kernels, run by the GPU emulator (gpu_emulator/), against the CPU kernel
// on the same random data: both attention kernels (tensor cores for float16/bfloat16 with head_dim
// 64/128/256, their decode tiles of four warps and of two; the portable kernel otherwise), with and
// without split keys, over caches of the rows' dtype and narrower ones, and bad metadata.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "emulated_buffers.h"
#include "kvserve/paged_attention.h"

namespace {

using kvserve::Status;
using namespace emulated_test;

// ---- paged attention ---------------------------------------------------------------------------

struct AttentionCase {
  DType dtype;
  int64_t head_dim, num_heads, num_kv_heads, block_size;
  std::vector<int32_t> new_tokens, seq_lens;
  int64_t sliding_window = 0;
  float softcap = 0.f;
  bool causal = true;
  bool strided = false;  // query/out as views of wider rows, K and V as views of one tensor
  int64_t num_splits = 0;  // 0: chosen by the launch
  std::optional<DType> cache_dtype;  // narrower than dtype, or the same (unset)
};

std::string describe(const AttentionCase& c) {
  std::string s = std::string(name(c.dtype)) + " D" + std::to_string(c.head_dim) + " H" + std::to_string(c.num_heads) +
                  "/" + std::to_string(c.num_kv_heads) + " bs" + std::to_string(c.block_size) + " q,ctx:";
  for (size_t i = 0; i < c.new_tokens.size(); ++i) s += " " + std::to_string(c.new_tokens[i]) + "," + std::to_string(c.seq_lens[i]);
  if (c.cache_dtype) s += std::string(" cache ") + name(*c.cache_dtype);
  return s;
}

// Both kernels' inputs, and an output array for each, poisoned with NaN.
struct AttentionRun {
  int64_t num_tokens = 0, num_blocks = 0, width = 0, row_stride = 0, block_stride = 0;
  std::vector<int32_t> seq_lens, block_table, query_start_loc;  // the run's own (a case may be a temporary)
  Buffer query, caches, cpu_out, gpu_out;
  kvserve::PagedAttentionParams params;
  EarlyLoads early_loads;  // of the last run_gpu()

  explicit AttentionRun(const AttentionCase& c, uint32_t seed = 0)
      : seq_lens(c.seq_lens),
        query(c.dtype, 0),
        caches(c.cache_dtype.value_or(c.dtype), 0),
        cpu_out(c.dtype, 0),
        gpu_out(c.dtype, 0) {
    std::mt19937 rng(seed);
    const int64_t num_reqs = static_cast<int64_t>(c.seq_lens.size());
    query_start_loc.assign(1, 0);
    for (int32_t n : c.new_tokens) query_start_loc.push_back(query_start_loc.back() + n);
    num_tokens = query_start_loc.back();
    for (int32_t len : c.seq_lens) {
      const int64_t blocks = (len + c.block_size - 1) / c.block_size;
      width = std::max(width, blocks + 1);  // a spare column, out of range: a kernel that reads it fails
      num_blocks += blocks;
    }
    num_blocks += 3;
    std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    block_table.assign(static_cast<size_t>(num_reqs * width), static_cast<int32_t>(num_blocks + 1000));
    size_t used = 0;
    for (int64_t i = 0; i < num_reqs; ++i) {
      for (int64_t j = 0; j < (c.seq_lens[i] + c.block_size - 1) / c.block_size; ++j) block_table[i * width + j] = ids[used++];
    }
    const int64_t head_stride = c.head_dim + (c.strided ? 8 : 0);
    row_stride = (c.num_heads + (c.strided ? 3 : 0)) * head_stride;
    const int64_t block_elems = c.block_size * c.num_kv_heads * c.head_dim;
    block_stride = c.strided ? 2 * block_elems : block_elems;
    query = random_buffer(c.dtype, static_cast<size_t>(num_tokens * row_stride), rng);
    caches = random_buffer(c.cache_dtype.value_or(c.dtype), static_cast<size_t>(num_blocks * 2 * block_elems), rng);
    cpu_out = nan_buffer(c.dtype, static_cast<size_t>(num_tokens * row_stride));
    gpu_out = nan_buffer(c.dtype, static_cast<size_t>(num_tokens * row_stride));

    auto& p = params;
    p.query = query.data();
    p.query_stride_token = p.out_stride_token = row_stride;
    p.query_stride_head = p.out_stride_head = head_stride;
    const int64_t element = kvserve::dtype_bytes(c.cache_dtype.value_or(c.dtype));
    p.key_cache = caches.data();
    p.value_cache = static_cast<char*>(caches.data()) + (c.strided ? block_elems : num_blocks * block_elems) * element;
    p.cache_stride_block = block_stride;
    p.block_table = block_table.data();
    p.block_table_stride = width;
    p.seq_lens = seq_lens.data();
    p.query_start_loc = query_start_loc.data();
    p.dtype = c.dtype;
    p.num_tokens = num_tokens;
    p.num_heads = c.num_heads;
    p.num_kv_heads = c.num_kv_heads;
    p.head_dim = c.head_dim;
    p.num_reqs = num_reqs;
    p.max_blocks_per_req = width;
    p.num_blocks = num_blocks;
    p.block_size = c.block_size;
    p.scale = 1.f / std::sqrt(static_cast<float>(c.head_dim));
    p.causal = c.causal;
    p.sliding_window = c.sliding_window;
    p.softcap = c.softcap;
    p.num_splits = c.num_splits;
    p.cache_dtype = c.cache_dtype;
  }

  Status run_cpu() {
    kvserve::PagedAttentionParams p = params;
    p.out = cpu_out.data();
    return kvserve::paged_attention_cpu(p);
  }
  Status run_gpu() {
    kvserve::PagedAttentionParams p = params;
    p.out = gpu_out.data();
    const Status status = kvserve::paged_attention_cuda(p, nullptr);
    // Before its wait for the kernel before, a block reads only the step's metadata, which no kernel
    // writes (compat.cuh), and inside its arrays, whatever the metadata says.
    early_loads = loads_before_wait({{query_start_loc.data(), query_start_loc.size() * sizeof(int32_t)},
                                     {p.seq_lens, static_cast<size_t>(p.num_reqs) * sizeof(int32_t)},
                                     {block_table.data(), block_table.size() * sizeof(int32_t)}});
    EXPECT_EQ(early_loads.outside, 0u) << "of " << early_loads.all << " loads before the wait";
    return status;
  }
  size_t at(int64_t token, int64_t head, int64_t d) const {
    return static_cast<size_t>(token * params.out_stride_token + head * params.out_stride_head + d);
  }
};

void expect_attention_matches(const AttentionCase& c) {
  AttentionRun run(c);
  ASSERT_EQ(run.run_cpu(), Status::kOk) << describe(c);
  ASSERT_EQ(run.run_gpu(), Status::kOk) << describe(c);
  const double tol = tolerance(c.dtype);
  int mismatches = 0;
  for (int64_t t = 0; t < run.num_tokens; ++t) {
    for (int64_t h = 0; h < c.num_heads; ++h) {
      for (int64_t d = 0; d < c.head_dim; ++d) {
        const float expected = run.cpu_out.get(run.at(t, h, d)), got = run.gpu_out.get(run.at(t, h, d));
        if (!(std::abs(got - expected) <= tol * (1 + std::abs(expected))) && ++mismatches <= 5) {
          ADD_FAILURE() << describe(c) << ": token " << t << " head " << h << " dim " << d << ": " << got
                        << " vs the CPU kernel's " << expected;
        }
      }
    }
  }
  EXPECT_EQ(mismatches, 0) << describe(c);
  if (c.strided) {  // nothing outside the rows' heads was written
    for (int64_t t = 0; t < run.num_tokens; ++t) {
      for (int64_t i = c.num_heads * run.params.out_stride_head; i < run.row_stride; ++i) {
        EXPECT_TRUE(std::isnan(run.gpu_out.get(static_cast<size_t>(t * run.row_stride + i))));
      }
    }
  }
}

// (new tokens, context) per request: decode, prefill, chunked prefill and mixes, lengths that start,
// end and cross blocks.
const std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> kBatches = {
    {{1, 1, 1, 1}, {1, 16, 33, 70}},
    {{17, 40}, {17, 40}},
    {{9, 12}, {41, 75}},
    {{1, 23, 1, 5}, {50, 23, 9, 37}},
};

TEST(EmulatedPagedAttention, TensorCoreKernelMatchesCpu) {
  for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    for (int64_t head_dim : {64, 128, 256}) {
      for (auto [heads, kv_heads] : {std::pair<int64_t, int64_t>{4, 4}, {8, 2}, {16, 2}}) {
        for (const auto& [new_tokens, seq_lens] : kBatches) {
          if (head_dim == 256 && heads == 16) continue;  // the largest tiles add time, not coverage
          expect_attention_matches({dtype, head_dim, heads, kv_heads, 16, new_tokens, seq_lens});
        }
      }
    }
  }
}

// locate_tile works out a block's request when all may have q queries (checked against the
// request's own query_start_loc entries), and searches otherwise: equal lengths (q = 1, q = 3),
// lengths whose total divides by the count without being equal, a request without queries.
TEST(EmulatedPagedAttention, TheTensorCoreKernelPlansFromMetadataBeforeItWaits) {
  // A decode batch and a prefill one: the blocks locate their tile, read their request and the
  // block-table entries of their first stage before the wait (run_gpu checks where those loads go).
  for (const auto& [new_tokens, seq_lens] : kBatches) {
    AttentionRun run({DType::kBFloat16, 128, 8, 2, 16, new_tokens, seq_lens});
    ASSERT_EQ(run.run_gpu(), Status::kOk);
    EXPECT_GT(run.early_loads.all, 0u);
  }
}

TEST(EmulatedPagedAttention, TilesFindTheirRequestWhateverTheQueryLengths) {
  const std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> batches = {
      {{1, 1, 1, 1, 1, 1, 1, 1, 1}, {5, 16, 33, 70, 2, 9, 17, 64, 1}},
      {{3, 3, 3}, {3, 20, 45}},
      {{2, 6}, {30, 6}},
      {{1, 5, 1, 1}, {40, 5, 12, 3}},
      {{0, 4}, {9, 4}},
  };
  for (auto [heads, kv_heads] : {std::pair<int64_t, int64_t>{8, 2}, {4, 4}, {16, 1}}) {
    for (const auto& [new_tokens, seq_lens] : batches) {
      expect_attention_matches({DType::kBFloat16, 64, heads, kv_heads, 16, new_tokens, seq_lens});
    }
  }
}

// Over fp8 caches the tensor-core kernel widens each stage in shared memory (attention_mma.cuh);
// the portable kernel reads any narrower cache (float32 rows: 16-bit caches too). Decode, prefill
// and mixed steps, split keys, windows and softcaps, interleaved caches: the CPU kernel's outputs
// over the same cache bits.
TEST(EmulatedPagedAttention, NarrowerCachesMatchCpu) {
  auto expect_over = [](DType cache, AttentionCase c) {
    c.cache_dtype = cache;
    expect_attention_matches(c);
  };
  for (DType dtype : {DType::kBFloat16, DType::kFloat16, DType::kFloat32}) {
    for (DType cache : narrower_caches(dtype)) {
      // Tensor cores (16-bit rows): decode and prefill tiles at head_dim 128, every head_dim for one
      // pair; the portable kernel (float32 rows) in the mixed step with the window below.
      const bool every_head_dim = dtype == DType::kBFloat16 && cache == DType::kFloat8E4M3;
      for (int64_t head_dim : {64, 128, 256}) {
        if (dtype == DType::kFloat32 || (!every_head_dim && head_dim != 128)) continue;
        for (const auto& [new_tokens, seq_lens] : kBatches) {
          expect_over(cache, {dtype, head_dim, 8, 2, 16, new_tokens, seq_lens});
        }
      }
      AttentionCase split{dtype, 64, 8, 1, 16, {1, 2}, {700, 300}};
      split.num_splits = 3;
      expect_over(cache, split);
      AttentionCase windowed{dtype, 64, 8, 2, 16, {1, 23, 1, 5}, {50, 23, 9, 37}};
      windowed.sliding_window = 7;
      windowed.softcap = 2.f;
      windowed.strided = true;
      expect_over(cache, windowed);
    }
  }
  expect_over(DType::kFloat8E5M2, {DType::kBFloat16, 80, 4, 4, 16, {1, 23, 1, 5}, {50, 23, 9, 37}});  // portable
}

// KVSERVE_DECODE_WARPS (device_resources.h) for the scope of one test.
class DecodeWarps {
 public:
  explicit DecodeWarps(const char* value) { setenv("KVSERVE_DECODE_WARPS", value, 1); }
  ~DecodeWarps() { unsetenv("KVSERVE_DECODE_WARPS"); }
  DecodeWarps(const DecodeWarps&) = delete;
  DecodeWarps& operator=(const DecodeWarps&) = delete;
};

// The threads of the last launch's blocks.
unsigned last_block_threads() { return kvserve::gpu::emulator::block_dim().x; }

// The two-warp decode tile (head_dim 128): decode steps over 16-bit and fp8 caches, full groups of
// 16 query heads, split keys, windows with softcaps; a step that also prefills keeps the prefill
// tile.
TEST(EmulatedPagedAttention, TwoWarpDecodeTilesMatchCpu) {
  const DecodeWarps two("2");
  for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    for (std::optional<DType> cache : {std::optional<DType>{}, std::optional<DType>{DType::kFloat8E4M3}}) {
      AttentionCase decode{dtype, 128, 8, 2, 16, {1, 1, 1, 1}, {1, 16, 33, 70}};
      decode.cache_dtype = cache;
      expect_attention_matches(decode);
      EXPECT_EQ(last_block_threads(), 64u);
      AttentionCase full_groups{dtype, 128, 32, 2, 16, {1, 1}, {40, 97}};
      full_groups.cache_dtype = cache;
      expect_attention_matches(full_groups);
      AttentionCase split{dtype, 128, 8, 1, 16, {1, 1}, {700, 300}};
      split.num_splits = 3;
      split.cache_dtype = cache;
      expect_attention_matches(split);
      AttentionCase windowed{dtype, 128, 8, 2, 16, {1, 1, 1}, {50, 9, 37}};
      windowed.sliding_window = 7;
      windowed.softcap = 2.f;
      windowed.strided = true;
      windowed.cache_dtype = cache;
      expect_attention_matches(windowed);
    }
  }
  expect_attention_matches({DType::kBFloat16, 128, 8, 2, 16, {1, 23, 1, 5}, {50, 23, 9, 37}});
  EXPECT_EQ(last_block_threads(), 128u);
}

// "auto" takes the two-warp tile only for a decode step whose blocks (a request and kv head each)
// outnumber the four-warp tile's places: three an SM (its shared memory), 396 on the emulator's H100.
TEST(EmulatedPagedAttention, AutoDecodeTakesTwoWarpsPastTheFourWarpTilesPlaces) {
  const DecodeWarps automatic("auto");
  for (int32_t requests : {99, 100}) {  // x 4 kv heads: 396 blocks, then 400
    std::vector<int32_t> ones(static_cast<size_t>(requests), 1), contexts(static_cast<size_t>(requests));
    for (size_t i = 0; i < contexts.size(); ++i) contexts[i] = 1 + static_cast<int32_t>((i * 37) % 40);
    expect_attention_matches({DType::kBFloat16, 128, 8, 4, 16, ones, contexts});
    EXPECT_EQ(last_block_threads(), requests == 99 ? 128u : 64u) << requests << " requests";
  }
}

TEST(EmulatedPagedAttention, PortableKernelMatchesCpu) {
  for (const auto& [new_tokens, seq_lens] : kBatches) {
    expect_attention_matches({DType::kFloat32, 64, 8, 2, 16, new_tokens, seq_lens});
    expect_attention_matches({DType::kBFloat16, 80, 4, 4, 16, new_tokens, seq_lens});  // no tensor-core instance
  }
  expect_attention_matches({DType::kFloat16, 36, 8, 2, 16, {1, 23, 1, 5}, {50, 23, 9, 37}});
}

// With 8 heads over 2 kv heads, mixed batches take the tensor-core kernel's 64-row prefill tiles,
// decode batches its 16-row decode tiles (paged_attention.cu); the third batch's short requests
// (12 and 8 rows of several tokens) sit in prefill tiles whose warps split the keys, as decode tiles'
// do. The masks are checked in every case.
const std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> kLayoutBatches = {
    {{1, 23, 1, 5}, {50, 23, 9, 37}},
    {{1, 1, 1, 1}, {50, 23, 9, 70}},
    {{3, 40, 1, 2}, {50, 40, 9, 30}},
};

TEST(EmulatedPagedAttention, BlockSizesWindowsSoftcapAndNonCausal) {
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    for (const auto& [new_tokens, seq_lens] : kLayoutBatches) {
      for (int64_t block_size : {1, 32}) expect_attention_matches({dtype, 64, 8, 2, block_size, new_tokens, seq_lens});
      for (int64_t window : {1, 7, 20}) {
        AttentionCase c{dtype, 64, 8, 2, 16, new_tokens, seq_lens};
        c.sliding_window = window;
        expect_attention_matches(c);
      }
      AttentionCase capped{dtype, 64, 8, 2, 16, new_tokens, seq_lens};
      capped.softcap = 2.f;
      expect_attention_matches(capped);
    }
    // 32-key stages (head_dim 256): the tile's last rows see nothing of its first stage.
    AttentionCase narrow{dtype, 256, 2, 2, 16, {70}, {70}};
    narrow.sliding_window = 7;
    expect_attention_matches(narrow);
    AttentionCase both_ways{dtype, 64, 8, 2, 16, {9, 12}, {41, 75}};
    both_ways.causal = false;
    expect_attention_matches(both_ways);
  }
}

TEST(EmulatedPagedAttention, NegativeScaleKeepsTheOrderOfScores) {
  // Without a softcap the tensor-core kernel keeps raw dot products and takes their maximum, which
  // only a positive scale preserves: a negative one goes the way softcapped scores go.
  const AttentionCase c{DType::kBFloat16, 64, 8, 2, 16, {1, 23, 1, 5}, {50, 23, 9, 37}};
  AttentionRun run(c);
  run.params.scale = -0.3f;
  ASSERT_EQ(run.run_cpu(), Status::kOk);
  ASSERT_EQ(run.run_gpu(), Status::kOk);
  for (int64_t t = 0; t < run.num_tokens; ++t) {
    for (int64_t h = 0; h < 8; ++h) {
      for (int64_t d = 0; d < 64; ++d) {
        const float expected = run.cpu_out.get(run.at(t, h, d));
        ASSERT_NEAR(run.gpu_out.get(run.at(t, h, d)), expected, tolerance(DType::kBFloat16) * (1 + std::abs(expected)))
            << "token " << t << " head " << h << " dim " << d;
      }
    }
  }
}

TEST(EmulatedPagedAttention, GroupsOfSixteenAndMoreQueryHeads) {
  // Decode layout: a group of 16 fills one 16-row tile; a group of 32 spans two.
  for (int64_t heads : {16, 32}) {
    expect_attention_matches({DType::kBFloat16, 64, heads, 1, 16, {1, 1, 1}, {5, 40, 77}});
    expect_attention_matches({DType::kFloat16, 128, heads, 1, 16, {1, 2}, {600, 33}});
  }
}

TEST(EmulatedPagedAttention, StridedRowsAndInterleavedCaches) {
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    AttentionCase c{dtype, 64, 8, 2, 16, {1, 23, 1, 5}, {50, 23, 9, 37}};
    c.strided = true;
    expect_attention_matches(c);
  }
}

TEST(EmulatedPagedAttention, LongContextsSplitTheKeys) {
  // One or two requests fill few thread blocks: their keys are split (flash-decoding) and merged.
  expect_attention_matches({DType::kBFloat16, 128, 8, 1, 16, {1}, {3001}});
  expect_attention_matches({DType::kFloat16, 64, 4, 2, 32, {3, 1}, {1500, 700}});
  AttentionCase windowed{DType::kBFloat16, 128, 8, 2, 16, {2, 1}, {1200, 2000}};
  windowed.sliding_window = 900;
  expect_attention_matches(windowed);
  // A prefill chunk over a long context (prefill layout), split too.
  expect_attention_matches({DType::kBFloat16, 128, 8, 2, 16, {40}, {1500}});
  // The most splits (64): the merge's lanes hold two splits' statistics each.
  expect_attention_matches({DType::kBFloat16, 64, 4, 1, 16, {1}, {9000}});
}

TEST(EmulatedPagedAttention, TheCallerMaySetTheSplits) {
  // num_splits overrides the launch's choice (the grid's z): none where the launch would split, a
  // few, more than the most (65, capped to 64) and than the keys' stages (a tile uses at most one
  // per stage); decode and prefill tiles, a batch the launch would not split.
  for (int64_t splits : {1, 3, 65}) {
    for (AttentionCase c : {AttentionCase{DType::kBFloat16, 128, 8, 2, 16, {1, 1}, {3001, 900}},
                            AttentionCase{DType::kFloat16, 64, 4, 2, 16, {1, 1, 1, 1}, {1, 16, 33, 70}},
                            AttentionCase{DType::kBFloat16, 128, 8, 2, 16, {40}, {1500}}}) {
      c.num_splits = splits;
      expect_attention_matches(c);
      EXPECT_EQ(kvserve::gpu::emulator::grid_dim().z, static_cast<unsigned>(std::min<int64_t>(splits, 64)))
          << describe(c);
    }
  }
  AttentionCase c{DType::kBFloat16, 128, 8, 2, 16, {1}, {100}};
  c.num_splits = -1;
  AttentionRun run(c);
  std::string why;
  EXPECT_EQ(kvserve::check_paged_attention_layout(run.params, &why), Status::kInvalidArgument);
  EXPECT_EQ(why, "num_splits: expected >= 1 (or 0: chosen), got -1");
  EXPECT_EQ(kvserve::paged_attention_cuda(run.params, nullptr), Status::kInvalidArgument);
}

TEST(EmulatedPagedAttention, SplitCallsRepeatExactly) {
  // The block that finishes a tile last merges its splits and sets the tile's arrival count back to
  // zero: the same call again (as a CUDA graph replays it) gives the same bits, whichever block
  // finishes last this time (the emulator shuffles the blocks' order per launch).
  AttentionCase c{DType::kBFloat16, 128, 8, 2, 16, {1, 1}, {3001, 900}};
  AttentionRun run(c);
  ASSERT_EQ(run.run_gpu(), Status::kOk);
  const std::vector<uint32_t> first = run.gpu_out.words;
  for (int call = 0; call < 3; ++call) {
    run.gpu_out = nan_buffer(c.dtype, static_cast<size_t>(run.num_tokens * run.row_stride));
    ASSERT_EQ(run.run_gpu(), Status::kOk);
    ASSERT_EQ(run.gpu_out.words, first) << "call " << call + 2;
  }
}

TEST(EmulatedPagedAttention, ShortContextsUseFewerSplitsThanTheLaunchAllows) {
  // A decode graph sizes its launch for the longest context the block table holds and replays it for
  // any: here a call over long contexts leaves every split's partials in the workspace, then the
  // same launch over short ones (as many stages as splits, fewer, one) must read none of them.
  AttentionCase c{DType::kBFloat16, 128, 8, 2, 16, {1, 1, 1}, {3001, 2900, 2800}};
  AttentionRun run(c);
  ASSERT_EQ(run.run_gpu(), Status::kOk);
  for (const std::vector<int32_t>& short_lens : {std::vector<int32_t>{700, 130, 64}, std::vector<int32_t>{65, 2, 1}}) {
    std::copy(short_lens.begin(), short_lens.end(), run.seq_lens.begin());
    run.gpu_out = nan_buffer(c.dtype, static_cast<size_t>(run.num_tokens * run.row_stride));
    ASSERT_EQ(run.run_cpu(), Status::kOk);
    ASSERT_EQ(run.run_gpu(), Status::kOk);
    for (int64_t t = 0; t < run.num_tokens; ++t) {
      for (int64_t h = 0; h < c.num_heads; ++h) {
        for (int64_t d = 0; d < c.head_dim; ++d) {
          const float expected = run.cpu_out.get(run.at(t, h, d));
          ASSERT_NEAR(run.gpu_out.get(run.at(t, h, d)), expected, tolerance(c.dtype) * (1 + std::abs(expected)))
              << describe(c) << ": token " << t << " head " << h << " dim " << d;
        }
      }
    }
  }
}

TEST(EmulatedPagedAttention, BadMetadataPoisonsSplitRowsToo) {
  // A long context split across blocks, with one of its block ids out of range: the split that meets
  // it writes NaN statistics, which the merge carries into every row of the request, and only its.
  AttentionCase c{DType::kBFloat16, 128, 8, 2, 16, {1, 1}, {3001, 900}};
  AttentionRun run(c);
  ASSERT_EQ(run.run_cpu(), Status::kOk);
  run.block_table[0 * run.width + 100] = static_cast<int32_t>(run.num_blocks + 5);
  ASSERT_EQ(run.run_gpu(), Status::kOk);
  for (int64_t h = 0; h < c.num_heads; ++h) {
    for (int64_t d = 0; d < c.head_dim; ++d) {
      ASSERT_TRUE(std::isnan(run.gpu_out.get(run.at(0, h, d)))) << "head " << h;
      const float expected = run.cpu_out.get(run.at(1, h, d));
      ASSERT_NEAR(run.gpu_out.get(run.at(1, h, d)), expected, tolerance(c.dtype) * (1 + std::abs(expected)));
    }
  }
}

TEST(EmulatedPagedAttention, ManyRequestsFillTheGpuUnsplit) {
  std::vector<int32_t> ones(300, 1), contexts(300);
  for (size_t i = 0; i < contexts.size(); ++i) contexts[i] = 1 + static_cast<int32_t>((i * 37) % 90);
  expect_attention_matches({DType::kBFloat16, 64, 4, 1, 16, ones, contexts});
}

TEST(EmulatedPagedAttention, BadMetadataPoisonsOnlyItsRequest) {
  for (DType dtype : {DType::kBFloat16, DType::kFloat32}) {
    for (const auto& [new_tokens, seq_lens] : kLayoutBatches) {
      AttentionCase c{dtype, 64, 8, 2, 16, new_tokens, seq_lens};
      AttentionRun run(c);
      ASSERT_EQ(run.run_cpu(), Status::kOk);
      run.block_table[1 * run.width + 0] = static_cast<int32_t>(run.num_blocks);  // request 1: a block out of range
      run.seq_lens[3] = static_cast<int32_t>(run.width * 16 + 1);                 // request 3: longer than its table
      kvserve::PagedAttentionParams layout = run.params;
      layout.out = run.gpu_out.data();
      std::string why;
      EXPECT_EQ(kvserve::check_paged_attention_layout(layout, &why), Status::kOk) << why;
      ASSERT_EQ(run.run_gpu(), Status::kOk);
      const auto& qsl = run.query_start_loc;
      for (int64_t t = 0; t < run.num_tokens; ++t) {
        const bool poisoned = (t >= qsl[1] && t < qsl[2]) || t >= qsl[3];  // requests 1 and 3
        for (int64_t h = 0; h < c.num_heads; ++h) {
          for (int64_t d = 0; d < c.head_dim; ++d) {
            const float got = run.gpu_out.get(run.at(t, h, d)), expected = run.cpu_out.get(run.at(t, h, d));
            if (poisoned) {
              ASSERT_TRUE(std::isnan(got)) << describe(c) << " token " << t;
            } else {
              ASSERT_NEAR(got, expected, tolerance(dtype) * (1 + std::abs(expected))) << describe(c) << " token " << t;
            }
          }
        }
      }
    }
  }
}

TEST(EmulatedPagedAttention, DisorderedQueryStartsAreSkippedSafely) {
  AttentionCase c{DType::kBFloat16, 64, 8, 2, 16, {1, 23, 1, 5}, {50, 23, 9, 37}};
  AttentionRun run(c);
  run.query_start_loc = {0, 30, 2, -5, 30};
  ASSERT_EQ(run.run_gpu(), Status::kOk);  // reads and writes stay inside the arrays; no crash
}

TEST(EmulatedPagedAttention, RowsPastThirtyTwoBitsAreUnsupported) {
  // The kernels split a request row (query, group head) in 32 bits: a step of num_tokens * group
  // rows past INT_MAX is refused before any launch (the arrays here hold one token's worth).
  AttentionRun run({DType::kBFloat16, 128, 128, 1, 16, {1}, {40}});
  kvserve::PagedAttentionParams p = run.params;
  p.out = run.gpu_out.data();
  p.num_tokens = (int64_t{1} << 31) / 128 + 1;
  EXPECT_EQ(kvserve::paged_attention_cuda(p, nullptr), Status::kUnsupported);
}

}  // namespace
