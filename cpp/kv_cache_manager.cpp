#include "kvserve/kv_cache_manager.h"

#include <algorithm>

namespace kvserve {

namespace {

int32_t ceil_div(int32_t a, int32_t b) { return (a + b - 1) / b; }

}  // namespace

KVCacheManager::KVCacheManager(int32_t num_blocks, int32_t block_size, bool enable_prefix_caching)
    : pool_(num_blocks, block_size, enable_prefix_caching), block_size_(block_size) {}

const BlockHash& KVCacheManager::block_hash(Sequence& seq, int32_t block_index) {
  while (static_cast<int32_t>(seq.block_hashes.size()) <= block_index) {
    const size_t k = seq.block_hashes.size();
    const BlockHash& parent = k == 0 ? seq.root_hash : seq.block_hashes[k - 1];
    seq.block_hashes.push_back(chain_block_hash(parent, seq.token_ids.data() + k * block_size_, block_size_));
  }
  return seq.block_hashes[static_cast<size_t>(block_index)];
}

int32_t KVCacheManager::get_computed_blocks(Sequence& seq, std::vector<int32_t>& hits) {
  if (!pool_.prefix_caching()) return 0;
  const int32_t max_blocks = (seq.num_tokens() - 1) / block_size_;
  BlockRef parent = kRootRef;
  int32_t num_hits = 0;
  for (; num_hits < max_blocks; ++num_hits) {
    const int32_t block_id = pool_.find_cached(block_hash(seq, num_hits),
                                               seq.token_ids.data() + num_hits * block_size_, parent);
    if (block_id < 0) break;
    hits.push_back(block_id);
    parent = pool_.ref_of(block_id);
  }
  return num_hits * block_size_;
}

int32_t KVCacheManager::num_blocks_needed(const std::vector<SlotPlan>& plans) {
  // Hit blocks sitting in the free queue, each counted once (samples of a request share hits).
  scratch_.clear();
  for (const SlotPlan& plan : plans) {
    for (int32_t block_id : plan.hit_blocks) {
      if (pool_.ref_count(block_id) == 0) scratch_.push_back(block_id);
    }
  }
  std::sort(scratch_.begin(), scratch_.end());
  int32_t needed = static_cast<int32_t>(std::unique(scratch_.begin(), scratch_.end()) - scratch_.begin());

  // Fresh blocks, and shared partial blocks about to be written.
  scratch_.clear();
  for (const SlotPlan& plan : plans) {
    const Sequence& seq = *plan.seq;
    const int32_t held = static_cast<int32_t>(plan.hit_blocks.empty() ? seq.block_ids.size() : plan.hit_blocks.size());
    const int32_t start = plan.hit_blocks.empty() ? seq.num_computed_tokens : held * block_size_;
    if (plan.num_new_tokens == 0) continue;
    needed += std::max(0, ceil_div(start + plan.num_new_tokens, block_size_) - held);
    if (start % block_size_ != 0 && pool_.ref_count(seq.block_ids.back()) > 1) {
      scratch_.push_back(seq.block_ids.back());
    }
  }
  // allocate_slots copies for each writer of a shared block except the last holder, which writes
  // in place; when the writers are all of its holders, that last one is among them.
  std::sort(scratch_.begin(), scratch_.end());
  for (size_t i = 0; i < scratch_.size();) {
    size_t j = i;
    while (j < scratch_.size() && scratch_[j] == scratch_[i]) ++j;
    const int32_t writers = static_cast<int32_t>(j - i);
    needed += writers - (writers == pool_.ref_count(scratch_[i]) ? 1 : 0);
    i = j;
  }
  return needed;
}

bool KVCacheManager::allocate_slots(std::vector<SlotPlan>& plans, std::vector<int64_t>& copy_pairs) {
  if (num_blocks_needed(plans) > pool_.num_free_blocks()) return false;

  // All hits first: a fresh allocation must not evict a block another plan is about to reuse.
  for (SlotPlan& plan : plans) {
    if (plan.hit_blocks.empty()) continue;
    Sequence& seq = *plan.seq;
    seq.block_ids_epoch = ++num_epochs_;
    for (int32_t block_id : plan.hit_blocks) {
      pool_.acquire(block_id);
      seq.block_ids.push_back(block_id);
      seq.cached_refs.push_back(pool_.ref_of(block_id));
    }
    seq.num_computed_tokens = static_cast<int32_t>(plan.hit_blocks.size()) * block_size_;
  }

  for (SlotPlan& plan : plans) {
    if (plan.num_new_tokens == 0) continue;
    Sequence& seq = *plan.seq;
    const int32_t start = seq.num_computed_tokens;
    const int32_t end = start + plan.num_new_tokens;
    if (seq.block_ids.empty()) seq.block_ids_epoch = ++num_epochs_;
    if (start % block_size_ != 0 && pool_.ref_count(seq.block_ids.back()) > 1) {
      const int32_t shared = seq.block_ids.back();
      const int32_t copy = pool_.allocate_one();
      copy_pairs.push_back(shared);
      copy_pairs.push_back(copy);
      pool_.release(shared);
      seq.block_ids.back() = copy;
      seq.block_ids_epoch = ++num_epochs_;
    }
    const size_t num_blocks = static_cast<size_t>(ceil_div(end, block_size_));
    while (seq.block_ids.size() < num_blocks) seq.block_ids.push_back(pool_.allocate_one());

    if (!pool_.prefix_caching()) continue;
    // Blocks whose tokens are all known: a placeholder's block is registered by a later call.
    const int32_t num_full = std::min(end, seq.num_tokens()) / block_size_;
    for (int32_t j = static_cast<int32_t>(seq.cached_refs.size()); j < num_full; ++j) {
      const BlockRef parent = j == 0 ? kRootRef : seq.cached_refs[static_cast<size_t>(j - 1)];
      seq.cached_refs.push_back(pool_.cache_full_block(seq.block_ids[static_cast<size_t>(j)], block_hash(seq, j),
                                                       seq.token_ids.data() + j * block_size_, parent));
    }
  }
  return true;
}

void KVCacheManager::free(Sequence& seq) {
  for (auto it = seq.block_ids.rbegin(); it != seq.block_ids.rend(); ++it) pool_.release(*it);
  seq.block_ids.clear();
  seq.cached_refs.clear();
  seq.num_computed_tokens = 0;
}

void KVCacheManager::truncate(Sequence& seq, int32_t num_computed_tokens) {
  seq.num_computed_tokens = num_computed_tokens;
  const size_t keep = static_cast<size_t>(ceil_div(num_computed_tokens, block_size_));
  if (seq.block_ids.size() <= keep) return;
  for (size_t i = seq.block_ids.size(); i-- > keep;) pool_.release(seq.block_ids[i]);
  seq.block_ids.resize(keep);
  seq.block_ids_epoch = ++num_epochs_;
}

void KVCacheManager::fork(const Sequence& parent, Sequence& child) {
  child = parent;
  child.block_ids_epoch = ++num_epochs_;
  for (int32_t block_id : child.block_ids) pool_.acquire(block_id);
}

}  // namespace kvserve
