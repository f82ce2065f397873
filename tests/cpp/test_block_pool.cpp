// Exact state of the block pool: ids handed out, reference counts, free-queue order, cache entries.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "kvserve/block_pool.h"

namespace kvserve {
namespace {

using Ids = std::vector<int32_t>;

std::vector<int32_t> block_tokens(int32_t first, int32_t block_size) {
  std::vector<int32_t> tokens(static_cast<size_t>(block_size));
  for (int32_t i = 0; i < block_size; ++i) tokens[static_cast<size_t>(i)] = first + i;
  return tokens;
}

// The ids allocate() hands out (none when it refuses).
Ids take(BlockPool& pool, int32_t count) {
  Ids got;
  pool.allocate(count, got);
  return got;
}

TEST(BlockPool, RejectsBadShapes) {
  EXPECT_THROW(BlockPool(1, 16, true), std::invalid_argument);
  for (int32_t block_size : {0, 3, 24, 512, -16}) {
    try {
      BlockPool pool(8, block_size, true);
      FAIL() << "block_size " << block_size << " accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("power of two in [1, 256], got " + std::to_string(block_size)),
                std::string::npos);
    }
  }
}

TEST(BlockPool, HandsOutBlocksInFreeQueueOrderAndNeverTheNullBlock) {
  BlockPool pool(6, 4, true);
  EXPECT_EQ(pool.free_block_ids(), (Ids{1, 2, 3, 4, 5}));
  EXPECT_EQ(take(pool, 3), (Ids{1, 2, 3}));
  EXPECT_EQ(pool.ref_count(2), 1);
  EXPECT_EQ(pool.num_free_blocks(), 2);
  Ids got = {9};
  EXPECT_FALSE(pool.allocate(3, got));  // all or nothing
  EXPECT_EQ(got, (Ids{9}));
  EXPECT_EQ(pool.free_block_ids(), (Ids{4, 5}));
}

TEST(BlockPool, ReleasedBlocksJoinTheTailInReleaseOrder) {
  BlockPool pool(6, 4, false);
  ASSERT_EQ(take(pool, 5).size(), 5u);
  pool.release(3);
  pool.release(1);
  pool.acquire(5);  // two references: one release keeps it out of the queue
  pool.release(5);
  EXPECT_EQ(pool.free_block_ids(), (Ids{3, 1}));
  pool.release(5);
  EXPECT_EQ(pool.free_block_ids(), (Ids{3, 1, 5}));
  EXPECT_EQ(pool.ref_count(5), 0);
  EXPECT_EQ(take(pool, 1), (Ids{3}));
}

TEST(BlockPool, CachedBlockIsFoundOnlyWithItsHashTokensAndParent) {
  BlockPool pool(6, 4, true);
  ASSERT_EQ(take(pool, 2).size(), 2u);
  const auto tokens = block_tokens(100, 4);
  const BlockHash h{1, 2};
  const BlockRef ref = pool.cache_full_block(1, h, tokens.data(), kRootRef);
  EXPECT_EQ(ref, pool.ref_of(1));
  EXPECT_TRUE(pool.is_cached(1));
  EXPECT_EQ(pool.find_cached(h, tokens.data(), kRootRef), 1);
  EXPECT_EQ(pool.find_cached(BlockHash{1, 3}, tokens.data(), kRootRef), -1);
  EXPECT_EQ(pool.find_cached(h, block_tokens(101, 4).data(), kRootRef), -1);
  EXPECT_EQ(pool.find_cached(h, tokens.data(), pool.ref_of(2)), -1);
  // A child names block 1 as its parent.
  const auto child_tokens = block_tokens(200, 4);
  EXPECT_EQ(pool.cache_full_block(2, BlockHash{5, 6}, child_tokens.data(), ref), pool.ref_of(2));
  EXPECT_EQ(pool.find_cached(BlockHash{5, 6}, child_tokens.data(), ref), 2);
}

TEST(BlockPool, ResetPrefixCacheDropsEveryEntryOnlyWhenNoBlockIsHeld) {
  BlockPool pool(6, 4, true);
  ASSERT_EQ(take(pool, 2).size(), 2u);
  const auto tokens = block_tokens(100, 4), child_tokens = block_tokens(200, 4);
  const BlockRef ref = pool.cache_full_block(1, BlockHash{1, 2}, tokens.data(), kRootRef);
  pool.cache_full_block(2, BlockHash{5, 6}, child_tokens.data(), ref);
  pool.release(1);
  EXPECT_FALSE(pool.reset_prefix_cache());  // block 2 is still held: nothing changes
  EXPECT_EQ(pool.find_cached(BlockHash{1, 2}, tokens.data(), kRootRef), 1);
  pool.release(2);
  const Ids free_order = pool.free_block_ids();
  EXPECT_TRUE(pool.reset_prefix_cache());
  EXPECT_FALSE(pool.is_cached(1) || pool.is_cached(2));
  EXPECT_EQ(pool.find_cached(BlockHash{1, 2}, tokens.data(), kRootRef), -1);
  EXPECT_EQ(pool.find_cached(BlockHash{5, 6}, child_tokens.data(), ref), -1);
  EXPECT_EQ(pool.free_block_ids(), free_order);  // the queue as it was, every block free
  EXPECT_EQ(pool.num_free_blocks(), 5);
  EXPECT_EQ(pool.num_evictions(), 0);
  BlockPool uncached(4, 4, false);
  EXPECT_TRUE(uncached.reset_prefix_cache());
}

TEST(BlockPool, EqualContentElsewhereIsNamedByTheFirstCopy) {
  BlockPool pool(6, 4, true);
  ASSERT_EQ(take(pool, 2).size(), 2u);
  const auto tokens = block_tokens(100, 4);
  pool.cache_full_block(1, BlockHash{1, 2}, tokens.data(), kRootRef);
  EXPECT_EQ(pool.cache_full_block(2, BlockHash{1, 2}, tokens.data(), kRootRef), pool.ref_of(1));
  EXPECT_FALSE(pool.is_cached(2));
}

TEST(BlockPool, HashCollisionNeverServesTheOtherContent) {
  BlockPool pool(6, 4, true);
  ASSERT_EQ(take(pool, 3).size(), 3u);
  const BlockHash same{9, 9};
  const auto a = block_tokens(100, 4);
  const auto b = block_tokens(300, 4);
  pool.cache_full_block(1, same, a.data(), kRootRef);
  EXPECT_EQ(pool.cache_full_block(2, same, b.data(), kRootRef), kNoRef);
  EXPECT_FALSE(pool.is_cached(2));
  EXPECT_EQ(pool.find_cached(same, b.data(), kRootRef), -1);
  // Same tokens and hash under another parent: a collision of the prefix, also refused.
  const BlockRef other_parent = pool.ref_of(1);
  EXPECT_EQ(pool.find_cached(same, a.data(), other_parent), -1);
  EXPECT_EQ(pool.cache_full_block(3, same, a.data(), other_parent), kNoRef);
}

// Blocks 1, 2 and 3 in use; 1 and 2 cached as a two-block prefix (block 2's parent is block 1).
struct CachedChain {
  explicit CachedChain(int32_t num_blocks) : pool(num_blocks, 4, true) {
    take(pool, 3);
    parent = pool.cache_full_block(1, BlockHash{1, 1}, t1.data(), kRootRef);
    child = pool.cache_full_block(2, BlockHash{2, 2}, t2.data(), parent);
  }
  BlockPool pool;
  std::vector<int32_t> t1 = block_tokens(10, 4);
  std::vector<int32_t> t2 = block_tokens(20, 4);
  BlockRef parent;
  BlockRef child;
};

TEST(BlockPool, AllocationEvictsFromTheHeadAndStaleLinksNeverMatch) {
  CachedChain chain(4);
  auto& [pool, t1, t2, parent, child] = chain;
  ASSERT_EQ(child, pool.ref_of(2));
  pool.release(2);
  pool.release(1);
  pool.release(3);
  EXPECT_EQ(pool.free_block_ids(), (Ids{2, 1, 3}));
  // Freed blocks keep their content: a hit takes block 1 out of the middle of the queue.
  EXPECT_EQ(pool.find_cached(BlockHash{1, 1}, t1.data(), kRootRef), 1);
  pool.acquire(1);
  EXPECT_EQ(pool.free_block_ids(), (Ids{2, 3}));
  pool.release(1);

  EXPECT_EQ(take(pool, 2), (Ids{2, 3}));  // evicts 2, then 3 (uncached)
  EXPECT_EQ(pool.num_evictions(), 1);
  EXPECT_FALSE(pool.is_cached(2));
  EXPECT_EQ(pool.find_cached(BlockHash{2, 2}, t2.data(), parent), -1);
  EXPECT_EQ(take(pool, 1), (Ids{1}));  // evicts the parent: its old reference goes stale
  EXPECT_EQ(pool.num_evictions(), 2);
  EXPECT_NE(pool.ref_of(1), parent);
  EXPECT_EQ(pool.cache_full_block(2, BlockHash{2, 2}, t2.data(), parent), kNoRef);
}

TEST(BlockPool, EntryWithAnEvictedParentGivesWayToLiveContent) {
  CachedChain chain(5);
  auto& [pool, t1, t2, parent, child] = chain;
  pool.release(1);
  EXPECT_EQ(take(pool, 2), (Ids{4, 1}));  // 4 (never cached), then 1: evicted
  // Block 3 now holds the same prefix, cached afresh: block 2's entry is stale and is replaced.
  const BlockRef new_parent = pool.cache_full_block(3, BlockHash{1, 1}, t1.data(), kRootRef);
  EXPECT_EQ(pool.cache_full_block(4, BlockHash{2, 2}, t2.data(), new_parent), pool.ref_of(4));
  EXPECT_FALSE(pool.is_cached(2));
  EXPECT_EQ(pool.find_cached(BlockHash{2, 2}, t2.data(), new_parent), 4);
}

TEST(BlockPool, WithoutPrefixCachingNothingIsCached) {
  BlockPool pool(4, 4, false);
  ASSERT_EQ(take(pool, 1).size(), 1u);
  const auto tokens = block_tokens(1, 4);
  EXPECT_EQ(pool.cache_full_block(1, BlockHash{1, 1}, tokens.data(), kRootRef), kNoRef);
  EXPECT_EQ(pool.find_cached(BlockHash{1, 1}, tokens.data(), kRootRef), -1);
  EXPECT_FALSE(pool.is_cached(1));
}

// `call` throws E, with `message` in its what().
template <typename E, typename Call>
void expect_throw(Call call, const std::string& message) {
  try {
    call();
    ADD_FAILURE() << "no exception; expected: " << message;
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << "got: " << e.what();
  }
}

// A misused pool throws before it changes anything: ids out of range used to index past the
// per-block arrays, and acquire(0) unlinked the never-queued null block, miscounting the queue.
TEST(BlockPool, IdsOutOfRangeAndTheNullBlockAreRejected) {
  BlockPool pool(4, 4, true);
  ASSERT_EQ(take(pool, 1), (Ids{1}));
  const auto tokens = block_tokens(0, 4);
  for (int32_t id : {100, 4, -1}) {
    const std::string got = ", got " + std::to_string(id);
    expect_throw<std::invalid_argument>([&] { pool.acquire(id); }, "acquire: block_id must be in [1, num_blocks = 4)" + got);
    expect_throw<std::invalid_argument>([&] { pool.release(id); }, "release: block_id must be in [1, num_blocks = 4)" + got);
    expect_throw<std::invalid_argument>([&] { pool.cache_full_block(id, BlockHash{1, 1}, tokens.data(), kRootRef); },
                                        "cache_full_block: block_id must be in [1, num_blocks = 4)" + got);
    expect_throw<std::invalid_argument>([&] { pool.ref_count(id); }, "ref_count: block_id must be in [0, num_blocks = 4)" + got);
    expect_throw<std::invalid_argument>([&] { pool.is_cached(id); }, "is_cached: block_id must be in [0, num_blocks = 4)" + got);
    expect_throw<std::invalid_argument>([&] { pool.ref_of(id); }, "ref_of: block_id must be in [0, num_blocks = 4)" + got);
    expect_throw<std::invalid_argument>([&] { pool.forget(id); }, "got " + std::to_string(id));
  }
  expect_throw<std::invalid_argument>([&] { pool.acquire(0); }, "got 0 (block 0 is the null block");
  expect_throw<std::invalid_argument>([&] { pool.release(0); }, "got 0 (block 0 is the null block");
  EXPECT_EQ(pool.ref_count(0), 0);  // the null block may be looked at
  EXPECT_FALSE(pool.is_cached(0));
  // A parent naming no block is not live: nothing registered, nothing read past the arrays.
  EXPECT_EQ(pool.cache_full_block(1, BlockHash{1, 1}, tokens.data(), BlockRef{100, 0}), kNoRef);
  Ids out;
  expect_throw<std::invalid_argument>([&] { pool.allocate(-1, out); }, "allocate: count must be >= 0, got -1");
  EXPECT_EQ(pool.num_free_blocks(), 2);
  EXPECT_EQ(pool.free_block_ids(), (Ids{2, 3}));
  EXPECT_EQ(pool.ref_count(1), 1);
}

// A second release used to drive the count to -1 and queue the block twice, so that two later
// allocations got the same block.
TEST(BlockPool, ReleasingABlockWithoutReferencesIsRejected) {
  BlockPool pool(4, 4, false);
  ASSERT_EQ(take(pool, 1), (Ids{1}));
  pool.release(1);
  expect_throw<std::logic_error>([&] { pool.release(1); }, "release: block 1 has no references");
  expect_throw<std::logic_error>([&] { pool.release(2); }, "release: block 2 has no references");  // never handed out
  EXPECT_EQ(pool.ref_count(1), 0);
  EXPECT_EQ(pool.free_block_ids(), (Ids{2, 3, 1}));
  EXPECT_EQ(take(pool, 3), (Ids{2, 3, 1}));  // each block once
}

// allocate_one on an empty queue used to hand out the sentinel (index num_blocks).
TEST(BlockPool, AllocateOneOnAnEmptyQueueIsRejected) {
  BlockPool pool(3, 4, true);
  EXPECT_EQ(pool.allocate_one(), 1);
  EXPECT_EQ(pool.allocate_one(), 2);
  expect_throw<std::logic_error>([&] { pool.allocate_one(); }, "allocate_one: no free block");
  EXPECT_EQ(pool.num_free_blocks(), 0);
  pool.release(2);
  EXPECT_EQ(pool.allocate_one(), 2);
}

}  // namespace
}  // namespace kvserve
