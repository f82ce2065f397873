#include "compat.cuh"
#include "kvserve/copy_blocks.h"

#include "block_pairs.h"

namespace kvserve {

// Block copies happen only on copy-on-write after a fork: a handful of pairs per step, so one
// asynchronous device-to-device copy per pair is as fast as a kernel and needs no device-side pairs.
Status copy_blocks_cuda(void* cache, int64_t num_blocks, int64_t block_bytes,
                        const int64_t* block_pairs, int64_t num_pairs, void* stream) {
  if (!block_pairs_valid(cache, num_blocks, block_bytes, block_pairs, num_pairs)) {
    return Status::kInvalidArgument;
  }
  auto* bytes = static_cast<char*>(cache);
  auto s = static_cast<kvGpuStream_t>(stream);
  for (int64_t p = 0; p < num_pairs; ++p) {
    const int64_t src = block_pairs[2 * p], dst = block_pairs[2 * p + 1];
    if (src == dst) continue;
    if (kvGpuMemcpyAsync(bytes + dst * block_bytes, bytes + src * block_bytes, block_bytes,
                         kvGpuMemcpyDeviceToDevice, s) != kvGpuSuccess) {
      return Status::kDeviceError;
    }
  }
  return Status::kOk;
}

}  // namespace kvserve
