#include "kvserve/block_pool.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "block_hash_table.h"

namespace kvserve {

BlockPool::BlockPool(int32_t num_blocks, int32_t block_size, bool enable_prefix_caching)
    : block_size_(block_size) {
  if (num_blocks < 2) {
    throw std::invalid_argument("num_blocks must be >= 2 (block 0 is the null block), got " +
                                std::to_string(num_blocks));
  }
  if (block_size < 1 || block_size > 256 || (block_size & (block_size - 1)) != 0) {
    throw std::invalid_argument("block_size must be a power of two in [1, 256], got " +
                                std::to_string(block_size));
  }
  const size_t n = static_cast<size_t>(num_blocks);
  ref_counts_.assign(n, 0);
  next_free_.assign(n + 1, 0);
  prev_free_.assign(n + 1, 0);
  const int32_t sentinel = num_blocks;
  next_free_[sentinel] = prev_free_[sentinel] = sentinel;
  for (int32_t b = 1; b < num_blocks; ++b) push_free_tail(b);

  cached_.assign(n, 0);
  generations_.assign(n, 0);
  if (enable_prefix_caching) {
    hashes_.assign(n, BlockHash{});
    parents_.assign(n, kNoRef);
    cached_tokens_.assign(n * static_cast<size_t>(block_size), 0);
    table_ = std::make_unique<BlockHashTable>(num_blocks);
  }
}

BlockPool::~BlockPool() = default;

void BlockPool::throw_bad_id(int32_t block_id, int32_t first, const char* fn) const {
  std::string message = std::string(fn) + ": block_id must be in [" + std::to_string(first) + ", num_blocks = " +
                        std::to_string(num_blocks()) + "), got " + std::to_string(block_id);
  if (block_id == 0) message += " (block 0 is the null block: never handed out, acquired or released)";
  throw std::invalid_argument(message);
}

void BlockPool::push_free_tail(int32_t block_id) {
  const int32_t sentinel = num_blocks();
  const int32_t tail = prev_free_[sentinel];
  next_free_[tail] = block_id;
  prev_free_[block_id] = tail;
  next_free_[block_id] = sentinel;
  prev_free_[sentinel] = block_id;
  ++num_free_;
}

void BlockPool::unlink_free(int32_t block_id) {
  next_free_[prev_free_[block_id]] = next_free_[block_id];
  prev_free_[next_free_[block_id]] = prev_free_[block_id];
  --num_free_;
}

std::vector<int32_t> BlockPool::free_block_ids() const {
  std::vector<int32_t> ids;
  ids.reserve(static_cast<size_t>(num_free_));
  for (int32_t b = next_free_[num_blocks()]; b != num_blocks(); b = next_free_[b]) ids.push_back(b);
  return ids;
}

int32_t BlockPool::allocate_one() {
  // An empty queue would hand out the sentinel, an index past every per-block array.
  if (num_free_ == 0) throw std::logic_error("allocate_one: no free block (check num_free_blocks() first)");
  const int32_t block_id = next_free_[num_blocks()];
  unlink_free(block_id);
  if (cached_[block_id]) {
    uncache(block_id);
    ++num_evictions_;
  }
  ref_counts_[block_id] = 1;
  return block_id;
}

bool BlockPool::allocate(int32_t count, std::vector<int32_t>& out) {
  if (count < 0) throw std::invalid_argument("allocate: count must be >= 0, got " + std::to_string(count));
  if (count > num_free_) return false;
  for (int32_t i = 0; i < count; ++i) out.push_back(allocate_one());
  return true;
}

void BlockPool::acquire(int32_t block_id) {
  check_id(block_id, 1, "acquire");
  if (ref_counts_[block_id]++ == 0) unlink_free(block_id);
}

void BlockPool::release(int32_t block_id) {
  check_id(block_id, 1, "release");
  if (ref_counts_[block_id] == 0) {
    throw std::logic_error("release: block " + std::to_string(block_id) +
                           " has no references (released more often than allocated and acquired)");
  }
  if (--ref_counts_[block_id] == 0) push_free_tail(block_id);
}

bool BlockPool::is_live(BlockRef ref) const {
  if (ref == kRootRef) return true;
  // A caller's ref naming no block is not live rather than an index past the arrays.
  return ref.block_id >= 0 && ref.block_id < num_blocks() && cached_[ref.block_id] &&
         generations_[ref.block_id] == ref.generation;
}

bool BlockPool::reset_prefix_cache() {
  if (num_free_ != num_blocks() - 1) return false;
  for (int32_t block_id = 1; block_id < num_blocks(); ++block_id) forget(block_id);
  return true;
}

void BlockPool::uncache(int32_t block_id) {
  table_->erase(block_id, hashes_.data());
  cached_[block_id] = 0;
  ++generations_[block_id];
}

int32_t BlockPool::find_cached(const BlockHash& hash, const int32_t* token_ids, BlockRef parent) const {
  if (!table_) return -1;
  const int32_t block_id = table_->find(hash, hashes_.data());
  if (block_id < 0 || !(parents_[block_id] == parent)) return -1;
  const int32_t* stored = cached_tokens_.data() + static_cast<size_t>(block_id) * block_size_;
  return std::equal(token_ids, token_ids + block_size_, stored) ? block_id : -1;
}

BlockRef BlockPool::cache_full_block(int32_t block_id, const BlockHash& hash, const int32_t* token_ids,
                                     BlockRef parent) {
  check_id(block_id, 1, "cache_full_block");
  if (!table_ || !is_live(parent)) return kNoRef;
  const int32_t existing = table_->find(hash, hashes_.data());
  if (existing >= 0) {
    const int32_t* stored = cached_tokens_.data() + static_cast<size_t>(existing) * block_size_;
    if (parents_[existing] == parent && std::equal(token_ids, token_ids + block_size_, stored)) {
      return ref_of(existing);  // this very block (a prefix hit), or an equal one cached before
    }
    // A different content under the same hash. An entry whose parent is gone can never be found
    // again and only blocks the key: replace it. A live one keeps the key; this block stays unnamed.
    if (is_live(parents_[existing])) return kNoRef;
    uncache(existing);
  }
  hashes_[block_id] = hash;
  parents_[block_id] = parent;
  std::copy(token_ids, token_ids + block_size_, cached_tokens_.data() + static_cast<size_t>(block_id) * block_size_);
  cached_[block_id] = 1;
  table_->insert(block_id, hashes_.data());
  return ref_of(block_id);
}

}  // namespace kvserve
