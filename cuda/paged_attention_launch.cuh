// How paged_attention_cuda launches rows of T over a cache of C: picks the kernel (tensor cores where
// the dtype, head_dim, alignment and device allow; the portable kernel otherwise), sizes the grid
// from host-known sizes only, and decides how many ways to split the keys. Nothing here reads device
// memory, so a call can be captured in a CUDA graph and replayed with new metadata.
//
// paged_attention.cu instantiates launch_paged_attention for caches of the rows' own dtype (and the
// 16-bit caches of float32 rows); paged_attention_e4m3.cu and paged_attention_e5m2.cu for the fp8
// caches, so that the three compile side by side.
#pragma once

#include <atomic>
#include <climits>
#include <type_traits>

#include "attention_mma.cuh"
#include "attention_portable.cuh"
#include "device_resources.h"
#include "kvserve/paged_attention.h"

namespace kvserve::gpu {

template <class T, class C>
Status launch_portable(const PagedAttentionParams& p, kvGpuStream_t stream) {
  if (p.head_dim > kPortableMaxHeadDim) return Status::kUnsupported;
  const dim3 grid(static_cast<unsigned>(p.num_tokens), static_cast<unsigned>(p.num_heads));
  launch_kernel(attention_portable_kernel<T, C>, grid, kPortableThreads, 0, stream, p);
  return launch_status();
}

#if KVSERVE_GPU_MMA

// 16-byte rows for cp.async and ldmatrix (16-bit dtypes): aligned pointers, strides in whole 16-byte
// chunks (of the rows' elements or the cache's); a cache block's bytes counted in 32 bits (the
// kernel's address arithmetic).
inline bool fits_tensor_cores(const PagedAttentionParams& p, const DeviceInfo& device) {
  const int64_t cache_bytes = dtype_bytes(p.cache_dtype.value_or(p.dtype));
  return device.compute_capability >= 80 && (p.head_dim == 64 || p.head_dim == 128 || p.head_dim == 256) &&
         p.cache_stride_block <= UINT32_MAX / 2 &&
         all_16_byte_aligned({p.query, p.out},
                             {p.query_stride_token, p.query_stride_head, p.out_stride_token, p.out_stride_head}, 2) &&
         all_16_byte_aligned({p.key_cache, p.value_cache}, {p.cache_stride_block}, cache_bytes);
}

// Splits of each tile's keys the launch allows (a tile uses at most one per stage of its keys, so
// the count may exceed what a short context needs: a decode graph replays one launch for any
// context): p.num_splits when the caller sets it; else enough blocks for two per multiprocessor,
// counting the tiles that hold rows (`work_tiles`; the grid may have more), while each split keeps
// at least two stages of keys of the longest context the block table can hold. Either way the
// partials and the tiles' arrival counters must fit the workspace. (Filling the block slots in
// whole waves instead split batch 64 in two on an H100 and made its attention 13% slower in a
// graph, where back-to-back calls find their code and metadata in L2; the engine's calls find them
// evicted: bench/README.md. gpu_bench.py attention --splits times the counts both ways.)
inline int32_t choose_splits(const PagedAttentionParams& p, int64_t tiles, int64_t work_tiles, int64_t keys_per_stage,
                      const DeviceInfo& device) {
  if (tiles * p.num_kv_heads > kMaxSplitTiles) return 1;
  const int64_t split_bytes = p.num_tokens * p.num_heads * (p.head_dim + 2) * static_cast<int64_t>(sizeof(float));
  const int64_t by_memory = static_cast<int64_t>(kSplitPartialBytes) / split_bytes;
  if (p.num_splits > 0) return static_cast<int32_t>(max_i64(1, min_i64(min_i64(p.num_splits, kMaxSplits), by_memory)));
  const int64_t blocks = work_tiles * p.num_kv_heads;
  const int64_t wanted = (2 * device.multiprocessors + blocks - 1) / blocks;
  const int64_t by_length = p.max_blocks_per_req * p.block_size / (2 * keys_per_stage);
  return static_cast<int32_t>(max_i64(1, min_i64(min_i64(wanted, kMaxSplits), min_i64(by_length, by_memory))));
}

// Blocks of the kernel for Tile that a multiprocessor of the device holds at once (the runtime's
// occupancy), asked once per device after raising the kernel's shared-memory limit (over 48 KB needs
// it; the first call, eager, before any graph capture, does both); 0 when either fails.
template <class T, class Tile>
int blocks_per_multiprocessor(const DeviceInfo& device) {
  static std::atomic<int> known[kMaxDevices];
  int blocks = known[device.index].load(std::memory_order_acquire);
  if (blocks == 0) {
    const auto kernel = attention_mma_kernel<T, Tile>;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(Tile::kSharedBytes)) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, Tile::kThreads, Tile::kSharedBytes) !=
            cudaSuccess) {
      return 0;
    }
    known[device.index].store(blocks, std::memory_order_release);
  }
  return blocks;
}

// Tiles of a step that hold rows: every request has one, and no tile more than kRows rows, so at
// least max(num_reqs, rows / kRows); at most one per request more than that.
inline int64_t work_tiles(const PagedAttentionParams& p, int64_t rows_per_tile) {
  const int64_t group = p.num_heads / p.num_kv_heads;
  return max_i64(p.num_reqs, (p.num_tokens * group + rows_per_tile - 1) / rows_per_tile);
}

template <class T, class Tile>
Status launch_tile(const PagedAttentionParams& p, const DeviceInfo& device, kvGpuStream_t stream) {
  const int64_t group = p.num_heads / p.num_kv_heads;
  const int64_t tiles = p.num_reqs + p.num_tokens * group / Tile::kRows;  // the grid's (work_tiles)
  if (tiles > INT_MAX) return Status::kUnsupported;
  SplitPartials partials;
  partials.num_splits = choose_splits(p, tiles, work_tiles(p, Tile::kRows), Tile::kKeys, device);
  if (partials.num_splits > 1) {
    SplitWorkspace workspace;
    if (split_workspace(stream, &workspace)) {
      partials.out = workspace.partials;
      partials.stats = workspace.partials + partials.num_splits * p.num_tokens * p.num_heads * p.head_dim;
      partials.arrivals = workspace.arrivals;
    } else {
      partials.num_splits = 1;
    }
  }
  if (blocks_per_multiprocessor<T, Tile>(device) == 0) return Status::kDeviceError;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(p.num_kv_heads),
                  static_cast<unsigned>(partials.num_splits));
  launch_kernel(attention_mma_kernel<T, Tile>, grid, Tile::kThreads, Tile::kSharedBytes, stream, p, partials);
  return launch_status();
}

// Whether a decode step at head_dim 128 takes the two-warp tile (half the shared memory: five blocks
// an H100 SM where the four-warp tile has three), as KVSERVE_DECODE_WARPS says (device_resources.h):
// "auto" takes it where the step's blocks (a tile per request and kv head, unsplit) outnumber the
// four-warp tile's places on the device, which would leave a second wave (batch 64 of Llama 3.1 8B on
// an H100: 512 blocks for 396 places). The launch splits the keys of fewer blocks, to twice the SMs.
template <class T, class FourWarps>
bool two_warp_decode(const PagedAttentionParams& p, const DeviceInfo& device) {
  switch (decode_warps()) {
    case DecodeWarps::kTwo: return true;
    case DecodeWarps::kAuto:
      return work_tiles(p, FourWarps::kRows) * p.num_kv_heads >
             int64_t{blocks_per_multiprocessor<T, FourWarps>(device)} * device.multiprocessors;
    default: return false;
  }
}

// Steps of one 16-row tile per request on average (decode: a token's group of query heads) take
// 16-row decode tiles (less shared memory: more blocks per SM); longer queries take 64-row prefill
// tiles, which load each key once for four times the rows (their blocks that hold a decode token
// still split its keys across the warps, attention_mma.cuh).
template <class T, class C, int kHeadDim>
Status launch_tensor_cores(const PagedAttentionParams& p, const DeviceInfo& device, kvGpuStream_t stream) {
  using FourWarps = DecodeTile<T, kHeadDim, C>;
  if (p.num_tokens * (p.num_heads / p.num_kv_heads) > FourWarps::kRows * p.num_reqs) {
    return launch_tile<T, PrefillTile<T, kHeadDim, C>>(p, device, stream);
  }
  if constexpr (kHeadDim == 128) {
    using TwoWarps = DecodeTile<T, kHeadDim, C, 2>;
    if (two_warp_decode<T, FourWarps>(p, device)) return launch_tile<T, TwoWarps>(p, device, stream);
  }
  return launch_tile<T, FourWarps>(p, device, stream);
}

#endif  // KVSERVE_GPU_MMA

// paged_attention_cuda's launch once p is checked, with T and C the storage types of p.dtype and
// p.cache_dtype.
template <class T, class C>
Status launch_paged_attention(const PagedAttentionParams& p, kvGpuStream_t stream) {
#if KVSERVE_GPU_MMA
  if constexpr (!std::is_same_v<T, float>) {  // C: T or an 8-bit float
    DeviceInfo device;
    if (current_device_info(&device) && fits_tensor_cores(p, device)) {
      switch (p.head_dim) {
        case 64: return launch_tensor_cores<T, C, 64>(p, device, stream);
        case 128: return launch_tensor_cores<T, C, 128>(p, device, stream);
        default: return launch_tensor_cores<T, C, 256>(p, device, stream);
      }
    }
  }
#endif
  return launch_portable<T, C>(p, stream);
}

// The fp8 instances (MODE extern: declared; empty: defined), each format's in a file of its own.
#define KVSERVE_FP8_ATTENTION(MODE, C)                                                                 \
  MODE template Status launch_paged_attention<float, C>(const PagedAttentionParams&, kvGpuStream_t);    \
  MODE template Status launch_paged_attention<__half, C>(const PagedAttentionParams&, kvGpuStream_t);   \
  MODE template Status launch_paged_attention<BFloat16, C>(const PagedAttentionParams&, kvGpuStream_t);

}  // namespace kvserve::gpu
