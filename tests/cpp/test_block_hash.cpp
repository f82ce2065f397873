#include <gtest/gtest.h>

#include <bitset>
#include <random>
#include <unordered_set>
#include <vector>

#include "kvserve/block_hash.h"

namespace kvserve {
namespace {

int popcount(uint64_t x) { return static_cast<int>(std::bitset<64>(x).count()); }

TEST(BlockHash, IsDeterministicAndChained) {
  const std::vector<int32_t> tokens = {11, 12, 13, 14};
  const BlockHash root = root_block_hash("");
  EXPECT_EQ(root, root_block_hash(""));
  const BlockHash first = chain_block_hash(root, tokens.data(), 4);
  EXPECT_EQ(first, chain_block_hash(root, tokens.data(), 4));
  // The same tokens after a different parent, or under another salt, hash differently.
  EXPECT_NE(chain_block_hash(first, tokens.data(), 4), first);
  EXPECT_NE(chain_block_hash(root_block_hash("tenant-a"), tokens.data(), 4), first);
  EXPECT_NE(root_block_hash("tenant-a"), root_block_hash("tenant-b"));
  EXPECT_NE(root_block_hash("a"), root_block_hash(std::string("a\0", 2)));
}

TEST(BlockHash, SeesEveryTokenAndTheLength) {
  const BlockHash root = root_block_hash("");
  std::vector<int32_t> tokens(16, 7);
  const BlockHash base = chain_block_hash(root, tokens.data(), 16);
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::vector<int32_t> changed = tokens;
    changed[i] = 8;
    EXPECT_NE(chain_block_hash(root, changed.data(), 16), base) << "token " << i;
  }
  std::vector<int32_t> padded = {1, 2, 0};
  EXPECT_NE(chain_block_hash(root, padded.data(), 2), chain_block_hash(root, padded.data(), 3));
}

TEST(BlockHash, HasNoCollisionsOnRandomBlocksInEitherHalf) {
  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> token(0, 32000);
  std::unordered_set<uint64_t> lows, highs;
  std::vector<int32_t> tokens(16);
  BlockHash parent = root_block_hash("");
  constexpr int kBlocks = 100000;
  for (int i = 0; i < kBlocks; ++i) {
    for (int32_t& t : tokens) t = token(rng);
    const BlockHash h = chain_block_hash(parent, tokens.data(), 16);
    lows.insert(h.lo);
    highs.insert(h.hi);
    if (i % 3 == 0) parent = h;
  }
  EXPECT_EQ(lows.size(), size_t{kBlocks});
  EXPECT_EQ(highs.size(), size_t{kBlocks});
}

TEST(BlockHash, OneFlippedInputBitFlipsAboutHalfTheOutputBits) {
  std::mt19937 rng(2);
  std::uniform_int_distribution<int32_t> token(0, 32000);
  std::vector<int32_t> tokens(16);
  const BlockHash root = root_block_hash("");
  int64_t flipped = 0;
  int trials = 0;
  for (int trial = 0; trial < 200; ++trial) {
    for (int32_t& t : tokens) t = token(rng);
    const BlockHash a = chain_block_hash(root, tokens.data(), 16);
    tokens[trial % 16] ^= 1 << (trial % 15);
    const BlockHash b = chain_block_hash(root, tokens.data(), 16);
    flipped += popcount(a.lo ^ b.lo) + popcount(a.hi ^ b.hi);
    ++trials;
  }
  const double mean = static_cast<double>(flipped) / trials;
  EXPECT_GT(mean, 56.0);
  EXPECT_LT(mean, 72.0);
}

}  // namespace
}  // namespace kvserve
