#include "kvserve/block_hash.h"

#include <cstring>

namespace kvserve {

namespace {

// Two 64-bit lanes, each a multiply-fold over 64-bit words with its own constants; a final
// cross-mix makes every output bit depend on both lanes and the length.
constexpr uint64_t kLaneLo = 0x9e3779b97f4a7c15ull;  // 2^64 / golden ratio
constexpr uint64_t kLaneHi = 0xc2b2ae3d27d4eb4full;
constexpr uint64_t kMulLo = 0xbf58476d1ce4e5b9ull;
constexpr uint64_t kMulHi = 0x94d049bb133111ebull;
constexpr uint64_t kFinal = 0xd6e8feb86659fd93ull;

// High and low halves of the 128-bit product, folded: every input bit reaches many output bits.
inline uint64_t mul_fold(uint64_t a, uint64_t b) {
  const unsigned __int128 product = static_cast<unsigned __int128>(a) * b;
  return static_cast<uint64_t>(product) ^ static_cast<uint64_t>(product >> 64);
}

struct Hasher {
  uint64_t lo;
  uint64_t hi;

  explicit Hasher(const BlockHash& seed) : lo(seed.lo ^ kLaneLo), hi(seed.hi ^ kLaneHi) {}

  void add(uint64_t word) {
    lo = mul_fold(lo ^ word, kMulLo);
    hi = mul_fold(hi ^ ((word << 29) | (word >> 35)), kMulHi) + word;
  }

  BlockHash finish(uint64_t length) const {
    const uint64_t a = lo ^ length;
    const uint64_t b = hi + length;
    return BlockHash{mul_fold(a ^ kFinal, b ^ kMulHi), mul_fold(b ^ kFinal, a ^ kMulLo)};
  }
};

}  // namespace

BlockHash root_block_hash(std::string_view extra_keys) {
  Hasher hasher(BlockHash{});
  size_t i = 0;
  for (; i + 8 <= extra_keys.size(); i += 8) {
    uint64_t word;
    std::memcpy(&word, extra_keys.data() + i, 8);
    hasher.add(word);
  }
  uint64_t tail = 0;
  if (i < extra_keys.size()) std::memcpy(&tail, extra_keys.data() + i, extra_keys.size() - i);
  hasher.add(tail);
  return hasher.finish(extra_keys.size());
}

BlockHash chain_block_hash(const BlockHash& parent, const int32_t* token_ids, int32_t num_tokens) {
  Hasher hasher(parent);
  int32_t i = 0;
  for (; i + 2 <= num_tokens; i += 2) {
    hasher.add(static_cast<uint32_t>(token_ids[i]) | (static_cast<uint64_t>(static_cast<uint32_t>(token_ids[i + 1])) << 32));
  }
  if (i < num_tokens) hasher.add(static_cast<uint32_t>(token_ids[i]));
  return hasher.finish(static_cast<uint64_t>(num_tokens));
}

}  // namespace kvserve
