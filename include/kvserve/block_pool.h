// A fixed pool of KV-cache blocks: reference counts, an LRU free queue and the prefix-cache index.
//
// Block 0 is the null block: never handed out, so padding in block tables and slot mappings may point
// at it harmlessly. Blocks 1..num_blocks-1 start in the free queue in id order.
//
//   free queue: an intrusive doubly linked list over block ids, O(1) push, pop and remove
//     head -> [freed longest ago] <-> ... <-> [freed last] <- tail
//   allocate()  pops from the head; a popped block that still holds cached content is evicted
//   release()   of the last reference appends to the tail; the block keeps its cached content and
//               stays a prefix-cache hit until it is evicted
//   acquire()   of a cached block with no references takes it out of the queue (a cache hit)
//
// Prefix cache: a full block is registered under its chained content hash (block_hash.h) together
// with its token ids and a link to the cached block of the positions before it (its parent). A lookup
// must match all three, so a hit is exact even if two prefixes ever shared a 128-bit hash.
// A BlockRef names one cached content of a block: the generation changes whenever the block loses
// its content (eviction), so a stale link can never match a block that was reused since.
//
// Misuse throws, as the scheduler does: a block id out of range std::invalid_argument (ValueError in
// Python), a call the pool's state does not allow (a release without a reference, allocate_one on
// an empty queue) std::logic_error. Each check is a compare and a branch to an out-of-line throw.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kvserve/block_hash.h"
#include "kvserve/export.h"

namespace kvserve {

class BlockHashTable;

struct BlockRef {
  int32_t block_id = -1;
  uint32_t generation = 0;

  friend bool operator==(const BlockRef& a, const BlockRef& b) {
    return a.block_id == b.block_id && a.generation == b.generation;
  }
  friend bool operator!=(const BlockRef& a, const BlockRef& b) { return !(a == b); }
};

// The parent of a request's first block.
inline constexpr BlockRef kRootRef{-1, 0};
// A prefix that cannot be named in the cache (an ancestor was evicted, or a hash collision): blocks
// after it are not registered.
inline constexpr BlockRef kNoRef{-2, 0};

class KVSERVE_EXPORT BlockPool {
 public:
  // Throws std::invalid_argument unless num_blocks >= 2 and block_size is a power of two in [1, 256].
  BlockPool(int32_t num_blocks, int32_t block_size, bool enable_prefix_caching);
  ~BlockPool();
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  int32_t num_blocks() const { return static_cast<int32_t>(ref_counts_.size()); }
  int32_t block_size() const { return block_size_; }
  bool prefix_caching() const { return !cached_tokens_.empty(); }
  int32_t num_free_blocks() const { return num_free_; }
  // ref_count, is_cached, forget and ref_of take any block id in [0, num_blocks), the null block too.
  int32_t ref_count(int32_t block_id) const {
    check_id(block_id, 0, "ref_count");
    return ref_counts_[block_id];
  }
  // Free-queue order, head first (for tests and debugging: O(num_free_blocks)).
  std::vector<int32_t> free_block_ids() const;
  int64_t num_evictions() const { return num_evictions_; }

  // Appends `count` (>= 0) blocks from the head of the free queue to `out`, each with one reference.
  // Returns false and changes nothing when fewer than `count` are free.
  bool allocate(int32_t count, std::vector<int32_t>& out);
  // One block from the head of the free queue. The caller checks num_free_blocks() > 0 first (the
  // hot path allocates after one check for all its blocks); std::logic_error when none is free.
  int32_t allocate_one();
  // acquire, release and cache_full_block take a block in [1, num_blocks): never the null block.
  // One more reference; a free block leaves the queue (a prefix-cache hit).
  void acquire(int32_t block_id);
  // One reference less; std::logic_error for a block that has none (a double release would
  // otherwise queue the block twice and hand it to two owners).
  void release(int32_t block_id);

  // The cached block holding `block_size` `token_ids` under `hash` after the cached content `parent`
  // (kRootRef for a first block), or -1.
  int32_t find_cached(const BlockHash& hash, const int32_t* token_ids, BlockRef parent) const;
  // Registers full block `block_id`, whose content is described as for find_cached, and returns the
  // reference a following block names as its parent: this block's, or that of an equal block cached
  // before (this one then stays unregistered), or kNoRef when the content cannot be named.
  BlockRef cache_full_block(int32_t block_id, const BlockHash& hash, const int32_t* token_ids, BlockRef parent);
  bool is_cached(int32_t block_id) const {
    check_id(block_id, 0, "is_cached");
    return cached_[block_id] != 0;
  }
  // Drops block_id's prefix-cache entry, if it has one: its content is not what was registered.
  void forget(int32_t block_id) {
    if (is_cached(block_id)) uncache(block_id);
  }
  // Drops every prefix-cache entry (vLLM's reset_prefix_cache: a benchmark's next run starts cold,
  // or new weights make the cached K/V stale) when no block is held; false, changing nothing,
  // while one is.
  bool reset_prefix_cache();
  BlockRef ref_of(int32_t block_id) const {
    check_id(block_id, 0, "ref_of");
    return BlockRef{block_id, generations_[block_id]};
  }

 private:
  // Throws std::invalid_argument naming `fn` unless first <= block_id < num_blocks().
  void check_id(int32_t block_id, int32_t first, const char* fn) const {
    if (block_id < first || block_id >= num_blocks()) throw_bad_id(block_id, first, fn);
  }
  [[noreturn]] void throw_bad_id(int32_t block_id, int32_t first, const char* fn) const;
  bool is_live(BlockRef ref) const;
  void uncache(int32_t block_id);
  void push_free_tail(int32_t block_id);
  void unlink_free(int32_t block_id);

  int32_t block_size_;
  int32_t num_free_ = 0;
  int64_t num_evictions_ = 0;
  std::vector<int32_t> ref_counts_;
  // Free queue links; index num_blocks is the sentinel whose next is the head and prev the tail.
  std::vector<int32_t> next_free_;
  std::vector<int32_t> prev_free_;
  // Prefix cache, per block (empty token store when caching is off).
  std::vector<uint8_t> cached_;
  std::vector<uint32_t> generations_;
  std::vector<BlockHash> hashes_;
  std::vector<BlockRef> parents_;
  std::vector<int32_t> cached_tokens_;  // [num_blocks, block_size]
  std::unique_ptr<BlockHashTable> table_;
};

}  // namespace kvserve
