// copy_blocks: duplicates whole KV-cache blocks inside one cache tensor.
//
// The scheduler reports (src, dst) block pairs when a forked request (parallel sampling, n > 1) must
// stop sharing a partially filled block (copy on write). The model runner then copies those blocks in
// every layer's K and V cache before the forward pass.
//
//   cache:        [num_blocks, block_bytes]   any dtype, viewed as bytes, contiguous
//   block_pairs:  [num_pairs, 2] int64 on the host: {src, dst}, both in [0, num_blocks)
#pragma once

#include <cstdint>

#include "kvserve/config.h"
#include "kvserve/export.h"
#include "kvserve/status.h"

namespace kvserve {

KVSERVE_EXPORT Status copy_blocks_cpu(void* cache, int64_t num_blocks, int64_t block_bytes,
                                      const int64_t* block_pairs, int64_t num_pairs);

#if KVSERVE_HAS_CUDA
// Same contract for a cache in CUDA (or HIP) device memory; the copies are enqueued on `stream`
// (a cudaStream_t, nullptr = the default stream).
KVSERVE_EXPORT Status copy_blocks_cuda(void* cache, int64_t num_blocks, int64_t block_bytes,
                                       const int64_t* block_pairs, int64_t num_pairs, void* stream);
#endif

}  // namespace kvserve
