// Exact state of the KV-cache manager: hits, allocation, tail-first frees, fork and copy-on-write.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "kvserve/kv_cache_manager.h"

namespace kvserve {
namespace {

using Ids = std::vector<int32_t>;
using Pairs = std::vector<int64_t>;

Sequence make_seq(int32_t num_tokens, int32_t first_token = 100, const char* salt = "") {
  Sequence seq;
  seq.token_ids.resize(static_cast<size_t>(num_tokens));
  std::iota(seq.token_ids.begin(), seq.token_ids.end(), first_token);
  seq.root_hash = root_block_hash(salt);
  return seq;
}

// Allocates `num_new` tokens for one sequence (with its hits) and advances it, as the scheduler does.
bool run(KVCacheManager& m, Sequence& seq, int32_t num_new, Ids hits = {}, Pairs* copies = nullptr) {
  std::vector<SlotPlan> plans{SlotPlan{&seq, num_new, std::move(hits)}};
  Pairs ignored;
  if (!m.allocate_slots(plans, copies ? *copies : ignored)) return false;
  seq.num_computed_tokens += num_new;
  return true;
}

TEST(KVCacheManager, AllocatesBlocksAndCachesOnlyFullOnes) {
  KVCacheManager m(8, 4, true);
  Sequence seq = make_seq(10);
  ASSERT_TRUE(run(m, seq, 10));
  EXPECT_EQ(seq.block_ids, (Ids{1, 2, 3}));
  EXPECT_TRUE(m.pool().is_cached(1));
  EXPECT_TRUE(m.pool().is_cached(2));
  EXPECT_FALSE(m.pool().is_cached(3));  // 2 of 4 slots used
  EXPECT_EQ(seq.cached_refs.size(), 2u);
  // Decoding two more tokens fills block 3; it is cached when allocated for them.
  seq.token_ids.push_back(1);
  seq.token_ids.push_back(2);
  ASSERT_TRUE(run(m, seq, 2));
  EXPECT_EQ(seq.block_ids, (Ids{1, 2, 3}));
  EXPECT_TRUE(m.pool().is_cached(3));
}

TEST(KVCacheManager, HitsStopBeforeTheLastTokenAndRespectTheSalt) {
  KVCacheManager m(10, 4, true);
  Sequence first = make_seq(12);
  ASSERT_TRUE(run(m, first, 12));

  Sequence same = make_seq(12);
  Ids hits;
  // 12 tokens = 3 full blocks, but the last token must be computed: 2 blocks.
  EXPECT_EQ(m.get_computed_blocks(same, hits), 8);
  EXPECT_EQ(hits, (Ids{1, 2}));

  Sequence longer = make_seq(13);
  hits.clear();
  EXPECT_EQ(m.get_computed_blocks(longer, hits), 12);
  EXPECT_EQ(hits, (Ids{1, 2, 3}));

  Sequence salted = make_seq(13, 100, "other tenant");
  hits.clear();
  EXPECT_EQ(m.get_computed_blocks(salted, hits), 0);

  Sequence diverging = make_seq(13);
  diverging.token_ids[5] = 7;  // block 1 differs, so block 2 cannot match either
  hits.clear();
  EXPECT_EQ(m.get_computed_blocks(diverging, hits), 4);
  EXPECT_EQ(hits, (Ids{1}));
}

TEST(KVCacheManager, HitsAreTakenAndSharedByReferenceCount) {
  KVCacheManager m(10, 4, true);
  Sequence first = make_seq(9);
  ASSERT_TRUE(run(m, first, 9));  // blocks 1 2 3
  Sequence second = make_seq(9);
  Ids hits;
  ASSERT_EQ(m.get_computed_blocks(second, hits), 8);
  ASSERT_TRUE(run(m, second, 1, hits));
  EXPECT_EQ(second.num_computed_tokens, 9);
  EXPECT_EQ(second.block_ids, (Ids{1, 2, 4}));
  EXPECT_EQ(m.pool().ref_count(1), 2);
  EXPECT_EQ(m.pool().ref_count(4), 1);
}

TEST(KVCacheManager, FreesTailFirstAndFreedBlocksStayHits) {
  KVCacheManager m(8, 4, true);
  Sequence seq = make_seq(10);
  ASSERT_TRUE(run(m, seq, 10));
  m.free(seq);
  EXPECT_TRUE(seq.block_ids.empty());
  EXPECT_EQ(seq.num_computed_tokens, 0);
  EXPECT_EQ(m.pool().free_block_ids(), (Ids{4, 5, 6, 7, 3, 2, 1}));

  // The freed prefix is still a hit; taking it pulls 1 and 2 out of the queue.
  Ids hits;
  EXPECT_EQ(m.get_computed_blocks(seq, hits), 8);
  ASSERT_TRUE(run(m, seq, 2, hits));
  EXPECT_EQ(seq.block_ids, (Ids{1, 2, 4}));
  EXPECT_EQ(m.pool().free_block_ids(), (Ids{5, 6, 7, 3}));
}

TEST(KVCacheManager, AllocationIsAllOrNothing) {
  KVCacheManager m(4, 4, true);  // 3 usable blocks
  Sequence a = make_seq(8);
  ASSERT_TRUE(run(m, a, 8));
  Sequence b = make_seq(8, 500);
  EXPECT_FALSE(run(m, b, 8));
  EXPECT_TRUE(b.block_ids.empty());
  EXPECT_EQ(m.pool().num_free_blocks(), 1);
}

TEST(KVCacheManager, ForkSharesBlocksAndCopiesThePartialBlockOnWrite) {
  KVCacheManager m(10, 4, true);
  Sequence parent = make_seq(6);
  ASSERT_TRUE(run(m, parent, 6));  // [1 full][2: 2 of 4]
  Sequence child;
  m.fork(parent, child);
  Sequence child2;
  m.fork(parent, child2);
  EXPECT_EQ(child.block_ids, (Ids{1, 2}));
  EXPECT_EQ(m.pool().ref_count(1), 3);
  EXPECT_EQ(m.pool().ref_count(2), 3);

  for (Sequence* s : {&parent, &child, &child2}) s->token_ids.push_back(40 + s->sample_index);
  std::vector<SlotPlan> plans{SlotPlan{&parent, 1, {}}, SlotPlan{&child, 1, {}}, SlotPlan{&child2, 1, {}}};
  Pairs copies;
  ASSERT_TRUE(m.allocate_slots(plans, copies));
  // Every writer but the last holder copies; the last writes block 2 in place.
  EXPECT_EQ(copies, (Pairs{2, 3, 2, 4}));
  EXPECT_EQ(parent.block_ids, (Ids{1, 3}));
  EXPECT_EQ(child.block_ids, (Ids{1, 4}));
  EXPECT_EQ(child2.block_ids, (Ids{1, 2}));
  EXPECT_EQ(m.pool().ref_count(1), 3);
  EXPECT_EQ(m.pool().ref_count(2), 1);
}

TEST(KVCacheManager, CopyOnWriteCountsAgainstTheFreeBlocks) {
  KVCacheManager m(4, 4, true);  // 3 usable
  Sequence parent = make_seq(6);
  ASSERT_TRUE(run(m, parent, 6));  // blocks 1, 2
  Sequence child;
  m.fork(parent, child);
  Sequence child2;
  m.fork(parent, child2);
  for (Sequence* s : {&parent, &child, &child2}) s->token_ids.push_back(1);
  // Three writers of block 2 need two copies, but one block is free.
  std::vector<SlotPlan> plans{SlotPlan{&parent, 1, {}}, SlotPlan{&child, 1, {}}, SlotPlan{&child2, 1, {}}};
  Pairs copies;
  EXPECT_FALSE(m.allocate_slots(plans, copies));
  EXPECT_TRUE(copies.empty());
  // Two writers while a third holder waits: both copy, and that still needs two.
  plans.pop_back();
  EXPECT_FALSE(m.allocate_slots(plans, copies));
  plans.pop_back();
  ASSERT_TRUE(m.allocate_slots(plans, copies));
  EXPECT_EQ(copies, (Pairs{2, 3}));
}

TEST(KVCacheManager, SharedHitsOfOneRequestCountOnce) {
  KVCacheManager m(5, 4, true);  // 4 usable
  Sequence first = make_seq(9);
  ASSERT_TRUE(run(m, first, 9));  // 1 2 3
  m.free(first);                  // all free, 1 and 2 cached
  Sequence a = make_seq(9);
  Sequence b = make_seq(9);
  std::vector<SlotPlan> plans(2);
  plans[0].seq = &a;
  plans[1].seq = &b;
  ASSERT_EQ(m.get_computed_blocks(a, plans[0].hit_blocks), 8);
  ASSERT_EQ(m.get_computed_blocks(b, plans[1].hit_blocks), 8);
  plans[0].num_new_tokens = plans[1].num_new_tokens = 1;
  // Hits 1, 2 once plus one fresh block each: 4 blocks.
  Pairs copies;
  ASSERT_TRUE(m.allocate_slots(plans, copies));
  EXPECT_EQ(a.block_ids, (Ids{1, 2, 4}));
  EXPECT_EQ(b.block_ids, (Ids{1, 2, 3}));
  EXPECT_EQ(m.pool().ref_count(2), 2);
  EXPECT_EQ(m.pool().num_free_blocks(), 0);
}

}  // namespace
}  // namespace kvserve
