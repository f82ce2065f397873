// Content hash of one full KV-cache block, chained over the blocks before it:
//
//   root          = H(extra keys)                      e.g. the request's cache salt ("" for none)
//   hash(block 0) = H(root,          token ids of block 0)
//   hash(block i) = H(hash(block i-1), token ids of block i)
//
// so equal hashes mean (up to a 2^-128 chance) equal token prefixes under equal extra keys. The block
// pool never trusts the hash alone: a hit is confirmed against the block's stored token ids and its
// parent link (see block_pool.h), so a collision costs a cache miss, never wrong KV.
#pragma once

#include <cstdint>
#include <string_view>

#include "kvserve/export.h"

namespace kvserve {

struct BlockHash {
  uint64_t lo = 0;
  uint64_t hi = 0;

  friend bool operator==(const BlockHash& a, const BlockHash& b) { return a.lo == b.lo && a.hi == b.hi; }
  friend bool operator!=(const BlockHash& a, const BlockHash& b) { return !(a == b); }
};

// The parent hash of a request's first block: mixes in keys that must separate otherwise equal
// prefixes (a cache salt: the Python engine gives a LoRA adapter's requests its id). Requests with
// different keys never share blocks.
KVSERVE_EXPORT BlockHash root_block_hash(std::string_view extra_keys);

// The hash of a full block holding `token_ids[0, num_tokens)` after the block hashed `parent`.
KVSERVE_EXPORT BlockHash chain_block_hash(const BlockHash& parent, const int32_t* token_ids, int32_t num_tokens);

}  // namespace kvserve
