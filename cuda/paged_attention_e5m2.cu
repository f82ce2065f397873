// paged_attention_cuda over e5m2 KV caches (paged_attention_launch.cuh), compiled on its own.
#include "paged_attention_launch.cuh"

namespace kvserve::gpu {

KVSERVE_FP8_ATTENTION(, Float8E5M2)

}  // namespace kvserve::gpu
