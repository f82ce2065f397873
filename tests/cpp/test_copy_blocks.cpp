#include "kvserve/copy_blocks.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

namespace {

TEST(CopyBlocks, CopiesEachPairAndLeavesOtherBlocksAlone) {
  const int64_t num_blocks = 6, block_elems = 40;
  std::vector<float> cache(num_blocks * block_elems);
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  for (auto& x : cache) x = dist(rng);
  const std::vector<float> before = cache;

  const int64_t pairs[] = {1, 4, 2, 5, 3, 3};
  ASSERT_EQ(kvserve::copy_blocks_cpu(cache.data(), num_blocks, block_elems * sizeof(float), pairs, 3),
            kvserve::Status::kOk);

  auto block = [&](const std::vector<float>& c, int64_t b) {
    return std::vector<float>(c.begin() + b * block_elems, c.begin() + (b + 1) * block_elems);
  };
  EXPECT_EQ(block(cache, 4), block(before, 1));
  EXPECT_EQ(block(cache, 5), block(before, 2));
  for (int64_t b : {0, 1, 2, 3}) EXPECT_EQ(block(cache, b), block(before, b)) << "block " << b;
}

TEST(CopyBlocks, RejectsOutOfRangeIdsWithoutWriting) {
  std::vector<float> cache(4 * 8, 1.5f);
  const auto before = cache;
  const int64_t pairs[] = {0, 1, 2, 4};  // 4 is past the last block
  EXPECT_EQ(kvserve::copy_blocks_cpu(cache.data(), 4, 8 * sizeof(float), pairs, 2),
            kvserve::Status::kInvalidArgument);
  const int64_t negative[] = {-1, 0};
  EXPECT_EQ(kvserve::copy_blocks_cpu(cache.data(), 4, 8 * sizeof(float), negative, 1),
            kvserve::Status::kInvalidArgument);
  EXPECT_EQ(cache, before);
}

TEST(Status, NamesEveryCode) {
  EXPECT_STREQ(kvserve::status_string(kvserve::Status::kOk), "ok");
  EXPECT_STREQ(kvserve::status_string(kvserve::Status::kUnsupported), "unsupported");
}

}  // namespace
