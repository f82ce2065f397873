// rotary_embedding_cuda: rotary.cuh's kernel without the cache write.
#include <climits>

#include "rotary.cuh"

namespace kvserve {

Status rotary_embedding_cuda(const RotaryEmbeddingParams& p, void* stream) {
  if (check_rotary_embedding(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  if (p.num_tokens == 0) return Status::kOk;
  if (p.num_tokens > INT_MAX || (p.num_heads + p.num_kv_heads) * p.head_dim > INT_MAX) return Status::kUnsupported;
  RotaryAndCacheParams rotary_only;
  rotary_only.rotary = p;
  return gpu::launch_rotary<false>(rotary_only, gpu::rotary_packs_of_16_bytes(p), static_cast<kvGpuStream_t>(stream));
}

}  // namespace kvserve
