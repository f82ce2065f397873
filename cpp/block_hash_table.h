// The prefix-cache index of the block pool: which block holds the content with a given hash.
//
// Open addressing with linear probing over a power-of-two array of block ids (-1 = empty). The keys
// stay in the pool (one BlockHash per block, passed in as `hashes`), so an entry is 4 bytes and the
// table never allocates after construction: at most one entry per block, and a capacity of at least
// twice the number of blocks keeps probe runs short. Erasing shifts the rest of the run back, so no
// tombstones pile up over millions of evictions.
#pragma once

#include <cstdint>
#include <vector>

#include "kvserve/block_hash.h"

namespace kvserve {

class BlockHashTable {
 public:
  explicit BlockHashTable(int32_t num_blocks) {
    size_t capacity = 16;
    while (capacity < 2 * static_cast<size_t>(num_blocks)) capacity *= 2;
    slots_.assign(capacity, kEmpty);
    mask_ = capacity - 1;
  }

  // The block whose hash is `hash`, or -1.
  int32_t find(const BlockHash& hash, const BlockHash* hashes) const {
    for (size_t i = home(hash);; i = (i + 1) & mask_) {
      const int32_t block_id = slots_[i];
      if (block_id == kEmpty) return -1;
      if (hashes[block_id] == hash) return block_id;
    }
  }

  // Adds `block_id` under hashes[block_id]; no entry with that hash may exist.
  void insert(int32_t block_id, const BlockHash* hashes) {
    size_t i = home(hashes[block_id]);
    while (slots_[i] != kEmpty) i = (i + 1) & mask_;
    slots_[i] = block_id;
  }

  // Removes `block_id`, which must be in the table under hashes[block_id].
  void erase(int32_t block_id, const BlockHash* hashes) {
    size_t hole = home(hashes[block_id]);
    while (slots_[hole] != block_id) hole = (hole + 1) & mask_;
    // Walk the rest of the run; an entry moves into the hole unless its home lies (cyclically)
    // after the hole, where a lookup starting at its home would no longer pass the hole.
    for (size_t i = (hole + 1) & mask_; slots_[i] != kEmpty; i = (i + 1) & mask_) {
      const size_t entry_home = home(hashes[slots_[i]]);
      if (((i - entry_home) & mask_) >= ((i - hole) & mask_)) {
        slots_[hole] = slots_[i];
        hole = i;
      }
    }
    slots_[hole] = kEmpty;
  }

 private:
  static constexpr int32_t kEmpty = -1;

  size_t home(const BlockHash& hash) const { return static_cast<size_t>(hash.lo) & mask_; }

  std::vector<int32_t> slots_;
  size_t mask_ = 0;
};

}  // namespace kvserve
