// The KV-cache manager: which physical blocks each sequence's tokens live in.
//
// Three verbs (vLLM v1): get_computed_blocks (the longest cached prefix), allocate_slots (blocks for
// the tokens of this step, all or nothing) and free (tail blocks first). It edits the block fields of
// a Sequence and never sees a tensor; the scheduler decides what to schedule.
//
// Parallel sampling: fork() makes a child share every block of its parent by reference count. Full
// blocks are never written again, so sharing them is free; the partially filled last block is copied
// on write: the first sample that writes into a block other samples still hold gets a fresh block and
// a (src, dst) pair that the model runner copies before the forward pass.
#pragma once

#include <cstdint>
#include <vector>

#include "kvserve/block_pool.h"
#include "kvserve/export.h"
#include "kvserve/sequence.h"

namespace kvserve {

// What one sequence of a request computes this step.
struct SlotPlan {
  Sequence* seq = nullptr;
  int32_t num_new_tokens = 0;        // tokens computed this step, after the cache hits
  std::vector<int32_t> hit_blocks;   // from get_computed_blocks; only for a sequence holding no blocks
};

class KVSERVE_EXPORT KVCacheManager {
 public:
  // Throws std::invalid_argument for a bad pool shape (see BlockPool).
  KVCacheManager(int32_t num_blocks, int32_t block_size, bool enable_prefix_caching);

  const BlockPool& pool() const { return pool_; }
  int32_t block_size() const { return block_size_; }

  // Appends to `hits` the cached blocks holding the longest prefix of `seq` in whole blocks, but never
  // its last token (a sequence computes at least one token, to produce logits), and returns the number
  // of tokens they hold. Nothing is taken yet: pass the hits to allocate_slots. Computes and keeps the
  // hashes of the blocks it looks at in seq.block_hashes.
  int32_t get_computed_blocks(Sequence& seq, std::vector<int32_t>& hits);

  // Gives the sequences of one request the blocks for their num_new_tokens, all or nothing: takes the
  // hit blocks (a sequence with hits then has num_computed_tokens = their tokens), copies a shared
  // partially filled last block before it is written (appending {src, dst} to `copy_pairs`), appends
  // fresh blocks, and registers in the prefix cache every full block of known tokens not registered
  // yet (a block a placeholder fills waits for the call after its token is known). Returns false and
  // changes nothing when the free queue is too short. num_computed_tokens is the caller's to advance.
  bool allocate_slots(std::vector<SlotPlan>& plans, std::vector<int64_t>& copy_pairs);

  // Releases the sequence's blocks, last block first, so that its tail is evicted before its prefix;
  // cached blocks keep their content. The sequence then holds nothing: num_computed_tokens = 0.
  void free(Sequence& seq);

  // The sequence's tokens past num_computed_tokens are no longer computed (speculative decoding: the
  // drafts the model rejected): its blocks past them return to the free queue.
  void truncate(Sequence& seq, int32_t num_computed_tokens);

  // The prefix cache forgets block_id's content (a step that was to write it failed).
  void forget_cached(int32_t block_id) { pool_.forget(block_id); }
  // BlockPool::reset_prefix_cache.
  bool reset_prefix_cache() { return pool_.reset_prefix_cache(); }

  // `child` becomes a copy of `parent` sharing all its blocks.
  void fork(const Sequence& parent, Sequence& child);

 private:
  const BlockHash& block_hash(Sequence& seq, int32_t block_index);
  int32_t num_blocks_needed(const std::vector<SlotPlan>& plans);

  BlockPool pool_;
  int32_t block_size_;
  uint64_t num_epochs_ = 0;       // Sequence::block_ids_epoch values handed out
  std::vector<int32_t> scratch_;  // reused by num_blocks_needed
};

}  // namespace kvserve
