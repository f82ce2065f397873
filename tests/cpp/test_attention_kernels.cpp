// The CPU attention kernels from C++, as an embedder calls them (no Python): small cases whose
// answer is known exactly, and bad params rejected before anything is written.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kvserve/paged_attention.h"
#include "kvserve/reshape_and_cache.h"

namespace {

constexpr int64_t kHeadDim = 16, kBlockSize = 4, kNumBlocks = 3;

// One request, one kv head, two query heads, its context in blocks {2, 0}.
struct OneRequest {
  std::vector<float> key_cache = std::vector<float>(kNumBlocks * kBlockSize * kHeadDim);
  std::vector<float> value_cache = std::vector<float>(kNumBlocks * kBlockSize * kHeadDim);
  std::vector<float> query = std::vector<float>(2 * kHeadDim);
  std::vector<float> out = std::vector<float>(2 * kHeadDim, NAN);
  int32_t block_table[2] = {2, 0};
  int32_t seq_lens[1] = {0};
  int32_t query_start_loc[2] = {0, 1};

  kvserve::PagedAttentionParams params(int32_t seq_len) {
    seq_lens[0] = seq_len;
    kvserve::PagedAttentionParams p;
    p.out = out.data();
    p.out_stride_token = 2 * kHeadDim;
    p.out_stride_head = kHeadDim;
    p.query = query.data();
    p.query_stride_token = 2 * kHeadDim;
    p.query_stride_head = kHeadDim;
    p.key_cache = key_cache.data();
    p.value_cache = value_cache.data();
    p.cache_stride_block = kBlockSize * kHeadDim;
    p.block_table = block_table;
    p.block_table_stride = 2;
    p.seq_lens = seq_lens;
    p.query_start_loc = query_start_loc;
    p.num_tokens = 1;
    p.num_heads = 2;
    p.num_kv_heads = 1;
    p.head_dim = kHeadDim;
    p.num_reqs = 1;
    p.max_blocks_per_req = 2;
    p.num_blocks = kNumBlocks;
    p.block_size = kBlockSize;
    p.scale = 0.25f;
    return p;
  }
  float* value_at(int64_t block, int64_t offset) { return &value_cache[(block * kBlockSize + offset) * kHeadDim]; }
};

TEST(PagedAttention, SingleKeyGivesItsValue) {
  OneRequest r;
  for (int64_t d = 0; d < kHeadDim; ++d) {
    r.value_at(2, 0)[d] = 0.5f + d;
    r.query[d] = r.query[kHeadDim + d] = 1.f - 0.1f * d;
  }
  ASSERT_EQ(kvserve::paged_attention_cpu(r.params(1)), kvserve::Status::kOk);
  for (int64_t d = 0; d < kHeadDim; ++d) {
    EXPECT_FLOAT_EQ(r.out[d], 0.5f + d);
    EXPECT_FLOAT_EQ(r.out[kHeadDim + d], 0.5f + d);
  }
}

TEST(PagedAttention, EqualScoresAverageTheValuesAcrossBlocks) {
  OneRequest r;  // keys all zero: every score equal, so the output is the mean of the values
  for (int64_t pos = 0; pos < 6; ++pos) {
    float* v = pos < kBlockSize ? r.value_at(2, pos) : r.value_at(0, pos - kBlockSize);
    for (int64_t d = 0; d < kHeadDim; ++d) v[d] = static_cast<float>(pos * 10 + d);
  }
  ASSERT_EQ(kvserve::paged_attention_cpu(r.params(6)), kvserve::Status::kOk);
  for (int64_t d = 0; d < kHeadDim; ++d) EXPECT_NEAR(r.out[d], 25.f + d, 1e-4f);
}

TEST(PagedAttention, RejectsBadMetadataBeforeWriting) {
  OneRequest r;
  r.block_table[1] = kNumBlocks;
  std::string why;
  EXPECT_EQ(kvserve::check_paged_attention(r.params(6), &why), kvserve::Status::kInvalidArgument);
  EXPECT_EQ(why, "block_table[0][1] = 3 is out of range [0, 3)");
  EXPECT_EQ(kvserve::paged_attention_cpu(r.params(6)), kvserve::Status::kInvalidArgument);
  r.block_table[1] = 0;
  EXPECT_EQ(kvserve::paged_attention_cpu(r.params(9)), kvserve::Status::kInvalidArgument);  // > 2 blocks
  kvserve::PagedAttentionParams p = r.params(6);
  p.num_kv_heads = 3;  // 2 query heads
  EXPECT_EQ(kvserve::check_paged_attention(p, &why), kvserve::Status::kInvalidArgument);
  EXPECT_EQ(why, "num_heads 2 is not a multiple of num_kv_heads 3");
  for (float x : r.out) EXPECT_TRUE(std::isnan(x));
}

TEST(PagedAttention, LayoutCheckReadsNoMetadata) {
  OneRequest r;
  r.block_table[1] = kNumBlocks;  // bad, but only the full check reads the block table
  kvserve::PagedAttentionParams p = r.params(6);
  p.block_table = reinterpret_cast<const int32_t*>(uintptr_t{8});  // device memory, as the host sees it
  p.seq_lens = p.query_start_loc = reinterpret_cast<const int32_t*>(uintptr_t{8});
  std::string why;
  EXPECT_EQ(kvserve::check_paged_attention_layout(p, &why), kvserve::Status::kOk) << why;
  p.num_reqs = 0;
  EXPECT_EQ(kvserve::check_paged_attention_layout(p, &why), kvserve::Status::kInvalidArgument);
  EXPECT_EQ(why, "num_reqs = 0 with num_tokens = 1: expected every query row to belong to a request");
  p = r.params(6);
  p.out_stride_head = kHeadDim - 1;
  EXPECT_EQ(kvserve::check_paged_attention_layout(p, &why), kvserve::Status::kInvalidArgument);
  EXPECT_EQ(why, "out: head stride 15 is less than the 16 elements of a head (heads would overlap)");
}

kvserve::ReshapeAndCacheParams reshape_params(const std::vector<float>& key, std::vector<float>& cache,
                                              const int64_t* slots, int64_t num_tokens) {
  kvserve::ReshapeAndCacheParams p;
  p.key = p.value = key.data();
  p.key_stride_token = p.value_stride_token = kHeadDim;
  p.key_stride_head = p.value_stride_head = kHeadDim;
  p.key_cache = p.value_cache = cache.data();
  p.cache_stride_block = kBlockSize * kHeadDim;
  p.slot_mapping = slots;
  p.num_tokens = num_tokens;
  p.num_kv_heads = 1;
  p.head_dim = kHeadDim;
  p.num_blocks = kNumBlocks;
  p.block_size = kBlockSize;
  return p;
}

TEST(ReshapeAndCache, WritesEachTokenToItsSlotAndSkipsMinusOne) {
  std::vector<float> key(3 * kHeadDim), cache(kNumBlocks * kBlockSize * kHeadDim, -7.f);
  for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<float>(i);
  const int64_t slots[] = {9, -1, 2};
  ASSERT_EQ(kvserve::reshape_and_cache_cpu(reshape_params(key, cache, slots, 3)), kvserve::Status::kOk);
  for (int64_t slot = 0; slot < kNumBlocks * kBlockSize; ++slot) {
    for (int64_t d = 0; d < kHeadDim; ++d) {
      const float expected = slot == 9 ? static_cast<float>(d) : slot == 2 ? static_cast<float>(2 * kHeadDim + d) : -7.f;
      EXPECT_EQ(cache[slot * kHeadDim + d], expected) << "slot " << slot;
    }
  }
}

TEST(ReshapeAndCache, RejectsAnOutOfRangeSlotWithoutWriting) {
  std::vector<float> key(2 * kHeadDim, 1.f), cache(kNumBlocks * kBlockSize * kHeadDim, -7.f);
  const int64_t slots[] = {0, kNumBlocks * kBlockSize};
  std::string why;
  EXPECT_EQ(kvserve::reshape_and_cache_cpu(reshape_params(key, cache, slots, 2)), kvserve::Status::kInvalidArgument);
  EXPECT_EQ(kvserve::check_reshape_and_cache(reshape_params(key, cache, slots, 2), &why),
            kvserve::Status::kInvalidArgument);
  EXPECT_EQ(why, "slot_mapping[1] = 12 is out of range: expected -1 or [0, num_blocks * block_size = 12)");
  for (float x : cache) EXPECT_EQ(x, -7.f);
}

TEST(ReshapeAndCache, LayoutCheckReadsNoSlot) {
  std::vector<float> key(2 * kHeadDim, 1.f), cache(kNumBlocks * kBlockSize * kHeadDim, -7.f);
  kvserve::ReshapeAndCacheParams p = reshape_params(key, cache, reinterpret_cast<const int64_t*>(uintptr_t{8}), 2);
  std::string why;
  EXPECT_EQ(kvserve::check_reshape_and_cache_layout(p, &why), kvserve::Status::kOk) << why;
  p.key_stride_token = kHeadDim - 2;
  EXPECT_EQ(kvserve::check_reshape_and_cache_layout(p, &why), kvserve::Status::kInvalidArgument);
  EXPECT_EQ(why, "key: row stride 14 is less than the 16 elements a row spans (rows would overlap)");
}

}  // namespace
