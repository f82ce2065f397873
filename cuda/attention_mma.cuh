// The tensor-core paged-attention kernel (CUDA, sm_80+; float16/bfloat16; head_dim 64, 128, 256).
//
// A thread block owns one tile of request rows (attention_metadata.cuh: rows are (token, group head)
// pairs, so one kv head's query heads share every K/V load) of one kv head, and one split of its
// keys. Keys stream through shared memory kKeys at a time, double-buffered with cp.async. Tiles hold
// 64 rows (prefill) or 16 (decode: a token's group fits one; paged_attention_launch.cuh picks by the
// step's shape), and the block's warps (four; two in the smaller decode tile, which more blocks fit
// an SM at once) split the work one of two ways (WarpSplit):
//
//   by rows (1 key warp):  each warp 16 of the tile's rows against every key of a stage;
//   by keys (all warps):   every warp the tile's (at most) 16 rows against its share of each
//                          stage's keys (16 in a decode tile); the warps' softmax states are merged at
//                          the end through shared memory (the same arithmetic as the split merge,
//                          attention_split.cuh).
//
// Decode tiles always split by keys; a 64-row tile whose request has at most 16 rows in it (a
// decode token in a step that also prefills) does too, so that no warp idles.
//
//   shared: Q [kRows][D + 8] | K [2][kKeys][D + 8] | V [2][kKeys][D + 8]   (+8: rows land on
//           different banks for ldmatrix)
//
//   per stage, per warp:  S = Q K^T (16 x its keys, mma)  ->  mask, scale, online softmax (base 2)
//                         O += P V (16 x D, mma; P from S's registers, as the A fragment)
//
// Each thread reads the block-table entries of all its chunks of a stage before it issues their
// copies, so a stage costs one dependent trip to memory, not one per chunk; a stage whose keys every
// row of a warp sees (most of a long context) skips the per-score mask. Rows past the tile's
// end and keys past the split's end are zero-filled, and masked to -inf, so they weigh nothing and
// never read memory outside the arrays. A tile uses at most one split per stage of its keys; a split
// block's last act is to count itself in, and the tile's last block merges (attention_split.cuh).
// A block plans its tile from the step's metadata and asks its first stage's K/V into L2 before it
// waits for the kernel before (compat.cuh), which in a decode step writes this step's K/V and q.
//
// A narrower cache (fp8, cache_dtype) streams the same way, its 16-byte chunks (16 elements) into
// raw buffers of their own, double-buffered as K and V are otherwise:
//
//   shared: Q [kRows][D + 8] | K [kKeys][D + 8] | V [kKeys][D + 8] | raw K [2][kKeys][D] | raw V [2][kKeys][D]
//
// and once a stage has landed the block widens it into K and V (one stage of them: the barrier that
// ends a stage frees them) before the products, which are the same as over a 16-bit cache.
#pragma once

#include "attention_metadata.cuh"
#include "attention_split.cuh"
#include "tensor_core.cuh"

#if KVSERVE_GPU_MMA

namespace kvserve::gpu {

// The shared-memory side of a tile of kWarpsArg warps: kRows rows of Q, two stages of kKeys keys of K
// and V (of a cache of element type C: T, or with kNarrow one stage of K and V widened from two
// stages of raw C).
template <class T, int kHeadDim, int kRowsArg, class C = T, int kWarpsArg = 4>
struct MmaTile {
  using Cache = C;
  static constexpr bool kNarrow = !std::is_same_v<C, T>;
  static_assert(!kNarrow || sizeof(C) == 1, "a narrower cache of 8-bit floats");
  static constexpr int kWarps = kWarpsArg;
  static constexpr int kThreads = kWarps * kWarpSize;
  static constexpr int kDim = kHeadDim;
  static constexpr int kRows = kRowsArg;
  static_assert(kRows == 16 * kWarps || (kRows == 16 && (kWarps == 4 || kWarps == 2)),
                "a prefill tile (a warp per 16 rows) or a decode tile of four or two warps");
  // Decode tiles: 16 keys a warp and stage. Prefill tiles: 64 keys a stage (32 at head_dim 256,
  // whose 64 rows of output fill the registers).
  static constexpr int kKeys = kRows == 16 ? 16 * kWarps : kHeadDim <= 128 ? 64 : 32;
  static constexpr int kStride = kHeadDim + 8;
  static constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte chunks of a row of Q (or of widened K, V)
  static constexpr int kChunkElements = 16 / sizeof(C);
  static constexpr int kCacheChunksPerRow = kHeadDim / kChunkElements;  // 16-byte chunks of a key's cache row
  static constexpr int kLoads = kKeys * kCacheChunksPerRow / kThreads;  // chunks of K (and of V) per thread and stage
  // Block-table reads in flight at once (fewer for head_dim 256, whose output fragments fill the registers).
  static constexpr int kGather = kLoads < 8 ? kLoads : (kHeadDim > 128 ? 4 : 8);
  static_assert(kLoads % kGather == 0, "whole gathers");
  static constexpr int kDimTiles = kHeadDim / 8;  // n8 tiles of O
  static constexpr int kBuffers = kNarrow ? 1 : 2;  // stages of K and V (as T)
  static constexpr size_t kRawBytes = kNarrow ? static_cast<size_t>(4 * kKeys) * kHeadDim * sizeof(C) : 0;
  static constexpr size_t kSharedBytes =
      static_cast<size_t>(kRows + 2 * kBuffers * kKeys) * kStride * sizeof(T) + kRawBytes;
  // Blocks per multiprocessor that the registers must allow: as many as the shared memory holds
  // (228 KB, 1 KB of it reserved a block: three four-warp tiles, five two-warp ones) for decode tiles
  // of head_dim 128 (decode reads K/V at memory speed only with enough blocks in flight); the
  // compiler's own choice otherwise.
  static constexpr int kMinBlocks =
      kRows == 16 && kHeadDim == 128 ? static_cast<int>(228 * 1024 / (kSharedBytes + 1024)) : 1;
  // The merge of a split by keys reuses the memory after Q: per warp, 16 rows of O (padded) and their {max, sum}.
  static constexpr int kMergeStride = kHeadDim + 8;
  static constexpr bool kCanSplitKeys =
      kKeys % (16 * kWarps) == 0 &&
      kWarps * 16 * (kMergeStride + 2) * sizeof(float) <= kSharedBytes - kRows * kStride * sizeof(T);
};

template <class T, int kHeadDim, class C = T>
using PrefillTile = MmaTile<T, kHeadDim, 64, C>;
template <class T, int kHeadDim, class C = T, int kWarps = 4>
using DecodeTile = MmaTile<T, kHeadDim, 16, C, kWarps>;
static_assert(DecodeTile<BFloat16, 256>::kCanSplitKeys && DecodeTile<BFloat16, 64, Float8E4M3>::kCanSplitKeys &&
                  DecodeTile<BFloat16, 128, BFloat16, 2>::kCanSplitKeys,
              "decode tiles split by keys at every head_dim");
static_assert(DecodeTile<BFloat16, 128>::kMinBlocks == 3 && DecodeTile<BFloat16, 128, Float8E4M3>::kMinBlocks == 3 &&
                  DecodeTile<BFloat16, 128, BFloat16, 2>::kMinBlocks == 5,
              "the decode tiles' blocks an SM");

// How a block's warps share a tile (see the top of this file): kKeyWarps = 1, by rows; = kWarps, by keys.
template <class Tile, int kKeyWarpsArg>
struct WarpSplit {
  static constexpr int kKeyWarps = kKeyWarpsArg;
  static_assert(kKeyWarps == 1 || (kKeyWarps == Tile::kWarps && Tile::kCanSplitKeys), "a split the tile allows");
  static constexpr int kWarpKeys = Tile::kKeys / kKeyWarps;  // keys of a stage per warp
  static constexpr int kKeyTiles = kWarpKeys / 8;            // n8 tiles of a warp's S
};

// The merge of the key warps' states (a split by keys): every warp leaves its 16 rows' output, max and
// sum in shared memory; then each warp takes back its share of the dims (kOwnTiles n8 tiles of O
// from warp * kOwnTiles) merged over the warps, and every warp the rows' merged max and sum. The
// warps merge and write their shares at once: a share of the code and of the time of one warp
// merging all of it (this runs once per decode block, its code fetched cold).
template <class Tile, int kOwnTiles>
__device__ inline void merge_key_warps(float* s_merge, int warp, int lane, const float (&o)[Tile::kDimTiles][4],
                                       float (&own)[kOwnTiles][4], float (&row_max)[2], float (&row_sum)[2]) {
  static_assert(kOwnTiles * Tile::kWarps == Tile::kDimTiles, "the warps share the dims evenly");
  constexpr int kStride = Tile::kMergeStride;
  float* s_stats = s_merge + Tile::kWarps * 16 * kStride;
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = warp * 16 + g + 8 * i;
#pragma unroll
    for (int d = 0; d < Tile::kDimTiles; ++d) {
      *reinterpret_cast<float2*>(s_merge + row * kStride + d * 8 + 2 * t) = make_float2(o[d][2 * i], o[d][2 * i + 1]);
    }
    if (t == 0) {
      s_stats[2 * row] = row_max[i];
      s_stats[2 * row + 1] = row_sum[i];
    }
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = g + 8 * i;
    float top = -INFINITY;
#pragma unroll
    for (int w = 0; w < Tile::kWarps; ++w) {
      if (s_stats[2 * (w * 16 + row) + 1] != 0.f) top = fmaxf(top, s_stats[2 * (w * 16 + row)]);
    }
    float weight[Tile::kWarps], total = 0.f;
#pragma unroll
    for (int w = 0; w < Tile::kWarps; ++w) {
      const float sum = s_stats[2 * (w * 16 + row) + 1];
      weight[w] = sum != 0.f ? exp2f(s_stats[2 * (w * 16 + row)] - top) : 0.f;
      total += weight[w] * sum;
    }
#pragma unroll
    for (int j = 0; j < kOwnTiles; ++j) {
      const int d = warp * kOwnTiles + j;
      float2 merged = make_float2(0.f, 0.f);
#pragma unroll
      for (int w = 0; w < Tile::kWarps; ++w) {
        const float2 part = *reinterpret_cast<const float2*>(s_merge + (w * 16 + row) * kStride + d * 8 + 2 * t);
        merged.x += weight[w] * part.x;
        merged.y += weight[w] * part.y;
      }
      own[j][2 * i] = merged.x;
      own[j][2 * i + 1] = merged.y;
    }
    row_max[i] = top;
    row_sum[i] = total;
  }
}

// What a block will attend to, worked out from the step's metadata alone, so that a block knows it
// before it waits for the kernel before (compat.cuh): its request and rows, and its keys: this
// split's share, in whole stages, of the union of its rows' windows. The launch fixes the number of
// splits without knowing the contexts (a graph replays it for any): a tile uses as many as have a
// stage each, and the blocks of the others have no work and are not counted. Every block of the
// tile computes the same `splits` from the same metadata; a tile of one split (or bad metadata)
// writes its output directly. Keys and positions lie below seq_len, an int32.
struct TilePlan {
  bool work = false;
  int64_t req = 0, row_begin = 0, row_end = 0;
  RequestRows r;
  int32_t split_begin = 0, split_end = 0;
  int splits = 1;
};

template <class Tile>
__device__ inline TilePlan plan_tile(const PagedAttentionParams& p, const SplitPartials& partials, int64_t group) {
  TilePlan plan;
  int64_t tile = 0;
  if (!locate_tile(p, group, Tile::kRows, blockIdx.x, &plan.req, &tile)) return plan;
  const RequestRows r = read_request(p, plan.req);
  plan.r = r;
  plan.row_begin = tile * Tile::kRows;
  plan.row_end = min_i64(plan.row_begin + Tile::kRows, r.num_queries * group);
  if (!r.rows_ok || plan.row_begin >= plan.row_end) return plan;
  if (r.context_ok) {
    const int64_t first_position = r.seq_len - r.num_queries;
    const RowSplit rows(group);
    const int64_t key_lo = first_visible_key(p, first_position + rows.query(plan.row_begin));
    const int64_t key_hi = visible_key_end(p, first_position + rows.query(plan.row_end - 1), r.seq_len);
    const int64_t stages = (key_hi - key_lo + Tile::kKeys - 1) / Tile::kKeys;
    const int64_t stages_per_split = max_i64(1, (stages + partials.num_splits - 1) / partials.num_splits);
    plan.splits = static_cast<int>(max_i64(1, (stages + stages_per_split - 1) / stages_per_split));
    const int64_t begin = min_i64(key_hi, key_lo + blockIdx.z * stages_per_split * Tile::kKeys);
    plan.split_begin = static_cast<int32_t>(begin);
    plan.split_end = static_cast<int32_t>(min_i64(key_hi, begin + stages_per_split * Tile::kKeys));
  }
  plan.work = blockIdx.z < plan.splits;
  return plan;
}

// The plan's first stage of keys and values (its kv head's part of each), asked into L2 before the
// wait: a thread per key and cache, its block-table entry read through L2 (an id out of range: no
// hint; attend_tile reports it).
template <class Tile>
__device__ inline void prefetch_first_stage(const PagedAttentionParams& p, const TilePlan& plan) {
  using C = typename Tile::Cache;
  constexpr int kLineElements = 128 / sizeof(C);
  const auto block_size = static_cast<int32_t>(p.block_size);
  for (int i = threadIdx.x; i < 2 * Tile::kKeys; i += Tile::kThreads) {
    const int32_t key = plan.split_begin + i / 2;
    if (key >= plan.split_end) continue;
    const int32_t id = load_through_l2(p.block_table + plan.req * p.block_table_stride + key / block_size);
    if (id < 0 || id >= p.num_blocks) continue;
    const C* cache = static_cast<const C*>(i % 2 == 0 ? p.key_cache : p.value_cache);
    const C* part = cache + cache_offset(p, id, key, blockIdx.y);
#pragma unroll
    for (int e = 0; e < Tile::kDim; e += kLineElements) prefetch_l2(part + e);
  }
}

// A landed stage of a narrower cache's keys and values (raw rows of kDim fp8 elements) widened to T
// into the tile's K and V rows (of kStride), 16 elements a chunk: exact, each value of an 8-bit float
// being one of both 16-bit types'. By way of float16 pairs (half_pair: one instruction for two on
// sm_89+), then (bfloat16) two floats rounded as one pair.
template <class T, class Tile>
__device__ inline void widen_stage(T* s_k, T* s_v, const typename Tile::Cache* raw_k,
                                   const typename Tile::Cache* raw_v) {
  using C = typename Tile::Cache;
  constexpr int kElements = Tile::kChunkElements, kChunks = Tile::kCacheChunksPerRow;
  static_assert(kElements == 16, "16 one-byte elements a chunk");
  auto widen = [](T* to, const C* from) {
    const uint4 chunk = *reinterpret_cast<const uint4*>(from);
    const uint32_t words[4] = {chunk.x, chunk.y, chunk.z, chunk.w};
    uint32_t wide[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t halves = half_pair<C>(words[i / 2], i % 2);
      if constexpr (std::is_same_v<T, __half>) {
        wide[i] = halves;
      } else {
        wide[i] = pack_pair<T>(__half2float(half_from_bits(static_cast<uint16_t>(halves))),
                               __half2float(half_from_bits(static_cast<uint16_t>(halves >> 16))));
      }
    }
    *reinterpret_cast<uint4*>(to) = uint4{wide[0], wide[1], wide[2], wide[3]};
    *reinterpret_cast<uint4*>(to + 8) = uint4{wide[4], wide[5], wide[6], wide[7]};
  };
#pragma unroll
  for (int i = 0; i < Tile::kLoads; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * Tile::kThreads;
    const int key = c / kChunks, column = (c % kChunks) * kElements;
    widen(s_k + key * Tile::kStride + column, raw_k + key * Tile::kDim + column);
    widen(s_v + key * Tile::kStride + column, raw_v + key * Tile::kDim + column);
  }
}

// One block's tile, its warps split as Split says, as planned. Called by every thread of the block.
template <class T, class Tile, class Split, bool kRawScores>
__device__ inline void attend_tile(const PagedAttentionParams& p, const SplitPartials& partials, const TilePlan& plan,
                                   int& s_bad_block) {
  constexpr int kHeadDim = Tile::kDim, kRows = Tile::kRows, kKeys = Tile::kKeys, kStride = Tile::kStride;
  constexpr int kChunks = Tile::kChunksPerRow, kCacheChunks = Tile::kCacheChunksPerRow, kWarpKeys = Split::kWarpKeys;
  constexpr float kLog2e = 1.4426950408889634f;
  using C = typename Tile::Cache;
  T* s_q = reinterpret_cast<T*>(dynamic_shared_memory());
  T* s_k = s_q + kRows * kStride;
  T* s_v = s_k + Tile::kBuffers * kKeys * kStride;
  // Tile::kNarrow: the stages as they land, before widening (see the top of this file).
  C* s_raw_k = reinterpret_cast<C*>(s_v + Tile::kBuffers * kKeys * kStride);
  C* s_raw_v = s_raw_k + 2 * kKeys * kHeadDim;

  const int tid = threadIdx.x, warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int row_warp = warp / Split::kKeyWarps, key_warp = warp % Split::kKeyWarps;
  const int64_t kv_head = blockIdx.y, split = blockIdx.z;
  const RowSplit rows(p.num_heads / p.num_kv_heads);
  const RequestRows& r = plan.r;
  const int64_t req = plan.req, row_begin = plan.row_begin, row_end = plan.row_end;
  // 32-bit in the loop, where registers are short.
  const int32_t split_begin = plan.split_begin, split_end = plan.split_end;
  const int splits = plan.splits;
  const int64_t first_position = r.seq_len - r.num_queries;
  const int num_stages = split_begin < split_end ? static_cast<int>((split_end - split_begin + kKeys - 1) / kKeys) : 0;

  const C* key_cache = static_cast<const C*>(p.key_cache);
  const C* value_cache = static_cast<const C*>(p.value_cache);
  const int32_t* block_row = p.block_table + req * p.block_table_stride;
  // Chunk c = tid + i * kThreads of a stage: key c / kCacheChunks, 16 bytes at column
  // (c % kCacheChunks) * kChunkElements. A thread's chunks are kKeyStep keys apart; their places in
  // the cache are stepped, not divided.
  constexpr int kKeyStep = Tile::kThreads / kCacheChunks;
  const auto block_size = static_cast<int32_t>(p.block_size);
  const KeyPlace step(kKeyStep, block_size);
  const int32_t last_entry = split_begin < split_end ? (split_end - 1) / block_size : 0;
  // Byte offset of chunk (block, slot, this thread's column) in either cache: block * block_bytes +
  // slot * slot_bytes + column_bytes, unsigned 32-bit factors (fits_tensor_cores checks that a
  // block's bytes fit) and one widening multiply-add. Block ids below num_blocks are valid (one
  // unsigned compare: negative ids wrap above it).
  const auto block_bytes = static_cast<uint32_t>(p.cache_stride_block * sizeof(C));
  const auto slot_bytes = static_cast<uint32_t>(p.num_kv_heads * kHeadDim * sizeof(C));
  const auto column_bytes =
      static_cast<uint32_t>((kv_head * kHeadDim + (tid % kCacheChunks) * Tile::kChunkElements) * sizeof(C));
  const auto num_blocks = static_cast<uint32_t>(min_i64(p.num_blocks, INT32_MAX));
  const auto* key_bytes = reinterpret_cast<const char*>(key_cache);
  const auto* value_bytes = reinterpret_cast<const char*>(value_cache);
  // A block reads its keys and values once: they leave L2 first (see evict_first_policy).
  const uint64_t read_once = evict_first_policy();
  auto load_stage = [&](int buffer, int32_t first_key) {
    const int32_t thread_key = first_key + tid / kCacheChunks;
    KeyPlace place(thread_key, block_size);
#pragma unroll
    for (int first = 0; first < Tile::kLoads; first += Tile::kGather) {
      // The chunks' cache blocks first (-1: nothing to copy), one 32-bit register each.
      // Every read is made (clamped to the split's last entry), so none waits behind a branch.
      int32_t block[Tile::kGather];
      KeyPlace at = place;
      bool bad = false;
#pragma unroll
      for (int i = 0; i < Tile::kGather; ++i) {
        const bool needed = thread_key + (first + i) * kKeyStep < split_end;
        const int32_t id = block_row[static_cast<uint32_t>(at.entry < last_entry ? at.entry : last_entry)];
        const bool valid = static_cast<uint32_t>(id) < num_blocks;
        block[i] = needed && valid ? id : -1;
        bad |= needed && !valid;
        at.advance(step, block_size);
      }
      if (bad) s_bad_block = 1;
#pragma unroll
      for (int i = 0; i < Tile::kGather; ++i) {
        const bool fill = block[i] >= 0;
        const uint64_t from = fill ? static_cast<uint64_t>(static_cast<uint32_t>(block[i])) * block_bytes +
                                         (static_cast<uint32_t>(place.offset) * slot_bytes + column_bytes)
                                   : 0;
        const int key = buffer * kKeys + (tid + (first + i) * Tile::kThreads) / kCacheChunks;
        const int column = (tid % kCacheChunks) * Tile::kChunkElements;
        if constexpr (Tile::kNarrow) {
          copy_async_16(s_raw_k + key * kHeadDim + column, key_bytes + from, fill, read_once);
          copy_async_16(s_raw_v + key * kHeadDim + column, value_bytes + from, fill, read_once);
        } else {
          copy_async_16(s_k + key * kStride + column, key_bytes + from, fill, read_once);
          copy_async_16(s_v + key * kStride + column, value_bytes + from, fill, read_once);
        }
        place.advance(step, block_size);
      }
    }
  };

  if (tid == 0) s_bad_block = 0;
  __syncthreads();
  if (num_stages > 0) {
    const T* query = static_cast<const T*>(p.query);
    for (int c = tid; c < kRows * kChunks; c += Tile::kThreads) {
      const int row = c / kChunks, col = (c % kChunks) * 8;
      const int64_t rr = row_begin + row;
      const bool fill = rr < row_end;
      const T* src = fill ? query + (r.token_begin + rows.query(rr)) * p.query_stride_token +
                                (kv_head * rows.group + rows.head(rr)) * p.query_stride_head + col
                          : query;
      copy_async_16(s_q + row * kStride + col, src, fill);
    }
    load_stage(0, split_begin);
    copy_async_commit();
  }

  // This lane's two rows (g and g + 8 of its warp's 16) and their positions; rows past the tile's
  // end borrow its last row's position so that no row is fully masked (their output is dropped).
  const int g = lane / 4, t = lane % 4;
  const int64_t warp_rows = row_begin + row_warp * 16;
  const bool warp_active = warp_rows < row_end;
  int32_t position[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t rr = min_i64(warp_rows + g + 8 * i, row_end - 1);
    position[i] = static_cast<int32_t>(first_position + rows.query(rr));
  }
  // The positions of the warp's first and last rows: a stage whose keys all lie in both rows'
  // windows (and before the split's end) is visible to every row and skips the per-score mask.
  // (Divided in 64 bits: in 32, or shuffled from the lanes above, the 256-dim prefill tile spills.)
  const auto warp_first_position = static_cast<int32_t>(first_position + min_i64(warp_rows, row_end - 1) / rows.group);
  const auto warp_last_position =
      static_cast<int32_t>(first_position + min_i64(warp_rows + 15, row_end - 1) / rows.group);
  // Scores in base 2. kRawScores (no softcap, and a positive scale, which keeps the order of the
  // dot products): they stay raw dot products until the exponent, whose argument is then one fused
  // multiply-add, score * score_scale - max. Otherwise they are transformed first (score_scale 1).
  const float score_scale = kRawScores ? p.scale * kLog2e : 1.f;
  // The window in 32 bits, as keys and positions (a window past every position is no window).
  const auto window = static_cast<int32_t>(min_i64(p.sliding_window, INT32_MAX));
  float o[Tile::kDimTiles][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};

  for (int stage = 0; stage < num_stages; ++stage) {
    if (stage + 1 < num_stages) {
      load_stage((stage + 1) & 1, split_begin + (stage + 1) * kKeys);
      copy_async_commit();
      copy_async_wait<1>();
    } else {
      copy_async_wait<0>();
    }
    __syncthreads();
    if constexpr (Tile::kNarrow) {
      const int raw = (stage & 1) * kKeys * kHeadDim;
      widen_stage<T, Tile>(s_k, s_v, s_raw_k + raw, s_raw_v + raw);
      __syncthreads();
    }
    if (warp_active) {
      // This warp's keys of the stage: rows key_warp * kWarpKeys... of the K and V buffers.
      const int buffer = Tile::kNarrow ? 0 : stage & 1;
      const T* k_tile = s_k + (buffer * kKeys + key_warp * kWarpKeys) * kStride;
      const T* v_tile = s_v + (buffer * kKeys + key_warp * kWarpKeys) * kStride;
      float s[Split::kKeyTiles][4] = {};
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        uint32_t a[4];
        load_matrix_x4(a, s_q + (row_warp * 16 + lane % 16) * kStride + kk * 16 + (lane / 16) * 8);
#pragma unroll
        for (int n = 0; n < Split::kKeyTiles / 2; ++n) {
          uint32_t b[4];
          load_matrix_x4(b, k_tile + (n * 16 + (lane / 16) * 8 + lane % 8) * kStride + kk * 16 + ((lane / 8) % 2) * 8);
          mma_16x8x16<T>(s[2 * n], a, b[0], b[1]);
          mma_16x8x16<T>(s[2 * n + 1], a, b[2], b[3]);
        }
      }

      const int32_t first_key = split_begin + stage * kKeys + key_warp * kWarpKeys;
      const int32_t last_key = first_key + kWarpKeys - 1;
      const bool all_visible = last_key < split_end && (!p.causal || last_key <= warp_first_position) &&
                               (window == 0 || first_key > warp_last_position - window);
      // Masked scores to -inf (and transformed ones scaled and capped). Every branch here is uniform
      // across the warp and taken once per stage, around whole loops (a branch per score would cost
      // as much as the math).
      auto prepare_scores = [&](auto visible) {
        if constexpr (kRawScores) {
#pragma unroll
          for (int n = 0; n < Split::kKeyTiles; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[n][e] = visible(n, e) ? s[n][e] : -INFINITY;
          }
        } else {
#pragma unroll
          for (int n = 0; n < Split::kKeyTiles; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[n][e] = visible(n, e) ? attention_score(p, s[n][e]) * kLog2e : -INFINITY;
          }
        }
      };
      if (!all_visible) {
        prepare_scores([&](int n, int e) {
          const int32_t key = first_key + n * 8 + 2 * t + (e & 1), pos = position[e / 2];
          return key < split_end && (!p.causal || key <= pos) && (window == 0 || key > pos - window);
        });
      } else if constexpr (!kRawScores) {
        prepare_scores([](int, int) { return true; });
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float top = -INFINITY;
#pragma unroll
        for (int n = 0; n < Split::kKeyTiles; ++n) top = fmaxf(top, fmaxf(s[n][2 * i], s[n][2 * i + 1]));
        top = fmaxf(top, shfl_xor(top, 1));
        top = fmaxf(top, shfl_xor(top, 2));
        top = fmaxf(row_max[i], top * score_scale);  // base-2 exponents, as row_max
        const float base = top == -INFINITY ? 0.f : top;
        const float rescale = fast_exp2(row_max[i] - base);
        row_max[i] = top;
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < Split::kKeyTiles; ++n) {
          s[n][2 * i] = fast_exp2(fmaf(s[n][2 * i], score_scale, -base));
          s[n][2 * i + 1] = fast_exp2(fmaf(s[n][2 * i + 1], score_scale, -base));
          sum += s[n][2 * i] + s[n][2 * i + 1];
        }
        row_sum[i] = row_sum[i] * rescale + sum;
#pragma unroll
        for (int d = 0; d < Tile::kDimTiles; ++d) {
          o[d][2 * i] *= rescale;
          o[d][2 * i + 1] *= rescale;
        }
      }

#pragma unroll
      for (int kc = 0; kc < kWarpKeys / 16; ++kc) {
        const uint32_t a[4] = {pack_pair<T>(s[2 * kc][0], s[2 * kc][1]), pack_pair<T>(s[2 * kc][2], s[2 * kc][3]),
                               pack_pair<T>(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                               pack_pair<T>(s[2 * kc + 1][2], s[2 * kc + 1][3])};
#pragma unroll
        for (int d = 0; d < Tile::kDimTiles / 2; ++d) {
          uint32_t b[4];
          load_matrix_x4_transposed(b, v_tile + (kc * 16 + lane % 16) * kStride + d * 16 + (lane / 16) * 8);
          mma_16x8x16<T>(o[2 * d], a, b[0], b[1]);
          mma_16x8x16<T>(o[2 * d + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();
  }

  // Each row's sum over the four lanes of its quad, then (a split by keys) over the warps. No thread
  // leaves before the end: a split block's last step is a barrier over all of them.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    row_sum[i] += shfl_xor(row_sum[i], 1);
    row_sum[i] += shfl_xor(row_sum[i], 2);
  }
  // The n8 tiles of O this warp writes, from d_first: all of its rows' (by rows); its share of the
  // merged dims (by keys).
  constexpr int kOwnTiles = Tile::kDimTiles / Split::kKeyWarps;
  const int d_first = Split::kKeyWarps > 1 ? warp * kOwnTiles : 0;
  float own[kOwnTiles][4];
  if constexpr (Split::kKeyWarps > 1) {
    merge_key_warps<Tile>(reinterpret_cast<float*>(s_k), warp, lane, o, own, row_max, row_sum);
  } else {
#pragma unroll
    for (int d = 0; d < kOwnTiles; ++d) {
#pragma unroll
      for (int e = 0; e < 4; ++e) own[d][e] = o[d][e];
    }
  }

  const bool bad = !r.context_ok || s_bad_block != 0;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t rr = warp_rows + g + 8 * i;
    if (!warp_active || rr >= row_end) continue;
    const int64_t token = r.token_begin + rows.query(rr), head = kv_head * rows.group + rows.head(rr);
    if (splits == 1) {
      const float inverse = bad ? NAN : 1.f / row_sum[i];
      T* out = static_cast<T*>(p.out) + token * p.out_stride_token + head * p.out_stride_head + d_first * 8 + 2 * t;
#pragma unroll
      for (int d = 0; d < kOwnTiles; ++d) {
        Pack<T, 2> pair;
        pair.values[0] = from_float<T>(own[d][2 * i] * inverse);
        pair.values[1] = from_float<T>(own[d][2 * i + 1] * inverse);
        *reinterpret_cast<Pack<T, 2>*>(out + d * 8) = pair;
      }
    } else {
      const int64_t row = partial_row(p, split, token, head);
      float* out = partials.out + row * kHeadDim + d_first * 8 + 2 * t;
#pragma unroll
      for (int d = 0; d < kOwnTiles; ++d) {
        *reinterpret_cast<float2*>(out + d * 8) = bad ? make_float2(NAN, NAN) : make_float2(own[d][2 * i], own[d][2 * i + 1]);
      }
      if (t == 0 && d_first == 0) {
        partials.stats[2 * row] = bad ? NAN : row_max[i];
        partials.stats[2 * row + 1] = bad ? NAN : row_sum[i];
      }
    }
  }
  if (splits > 1) {
    merge_if_last_split<T, kHeadDim, Tile::kWarps>(
        p, partials, splits, static_cast<int64_t>(blockIdx.x) * gridDim.y + blockIdx.y, row_end - row_begin,
        [=](int64_t i, int64_t* token, int64_t* head) {
          *token = r.token_begin + rows.query(row_begin + i);
          *head = kv_head * rows.group + rows.head(row_begin + i);
        });
  }
}

template <class T, class Tile>
__global__ void __launch_bounds__(Tile::kThreads, Tile::kMinBlocks)
    attention_mma_kernel(const PagedAttentionParams p, const SplitPartials partials) {
// Device code for sm_80+ only (the instructions do not exist before); the emulator runs it on the host.
#if defined(KVSERVE_GPU_EMULATOR) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800)
  __shared__ int s_bad_block;
  // Before the wait for the kernel before (compat.cuh): the plan, and its first stage into L2.
  const TilePlan plan = plan_tile<Tile>(p, partials, p.num_heads / p.num_kv_heads);
  if (plan.work) prefetch_first_stage<Tile>(p, plan);
  wait_for_prior_grid();
  if (!plan.work) return;
  // Each way of sharing the tile, with raw or transformed scores (see attend_tile).
  auto attend = [&](auto split) {
    using Split = decltype(split);
    if (p.softcap == 0.f && p.scale > 0.f) {
      attend_tile<T, Tile, Split, true>(p, partials, plan, s_bad_block);
    } else {
      attend_tile<T, Tile, Split, false>(p, partials, plan, s_bad_block);
    }
  };
  if constexpr (Tile::kCanSplitKeys) {
    if (plan.row_end - plan.row_begin <= 16) {
      attend(WarpSplit<Tile, Tile::kWarps>{});
      return;
    }
  }
  if constexpr (Tile::kRows > 16) attend(WarpSplit<Tile, 1>{});
#endif  // sm_80+
}

}  // namespace kvserve::gpu

#endif  // KVSERVE_GPU_MMA
