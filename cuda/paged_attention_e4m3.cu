// paged_attention_cuda over e4m3 KV caches (paged_attention_launch.cuh), compiled on its own.
#include "paged_attention_launch.cuh"

namespace kvserve::gpu {

KVSERVE_FP8_ATTENTION(, Float8E4M3)

}  // namespace kvserve::gpu
