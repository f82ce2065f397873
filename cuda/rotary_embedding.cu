// rotary_embedding_cuda: one thread block per token rotates every (head, pair) of its query and key
// heads in place; consecutive threads take consecutive pairs, so each head's halves are read and
// written in coalesced runs. Computed in float32, rounded once per element.
#include <climits>

#include "numeric.cuh"
#include "kvserve/layer_ops.h"

namespace kvserve {

namespace {

using namespace gpu;

constexpr int kThreads = 128;

template <class T>
__global__ void __launch_bounds__(kThreads) rotary_embedding_kernel(const RotaryEmbeddingParams p) {
  const int64_t token = blockIdx.x;
  const int32_t half = static_cast<int32_t>(p.head_dim / 2);
  const T* cos = static_cast<const T*>(p.cos) + token * p.cos_sin_stride_token;
  const T* sin = static_cast<const T*>(p.sin) + token * p.cos_sin_stride_token;
  const int32_t pairs = static_cast<int32_t>((p.num_heads + p.num_kv_heads) * half);
  for (int32_t i = threadIdx.x; i < pairs; i += kThreads) {
    const int32_t head = i / half, d = i % half;
    T* x = head < p.num_heads
               ? static_cast<T*>(p.query) + token * p.query_stride_token + head * p.query_stride_head
               : static_cast<T*>(p.key) + token * p.key_stride_token + (head - p.num_heads) * p.key_stride_head;
    const float x1 = to_float(x[d]), x2 = to_float(x[d + half]);
    const float c = to_float(cos[d]), s = to_float(sin[d]);
    // Hugging Face's `q * cos + rotate_half(q) * sin` stores each product in T, then their sum.
    x[d] = from_float<T>(product_in<T>(x1, c) - product_in<T>(x2, s));
    x[d + half] = from_float<T>(product_in<T>(x2, c) + product_in<T>(x1, s));
  }
}

}  // namespace

Status rotary_embedding_cuda(const RotaryEmbeddingParams& p, void* stream) {
  if (check_rotary_embedding(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  if (p.num_tokens == 0) return Status::kOk;
  if (p.num_tokens > INT_MAX || (p.num_heads + p.num_kv_heads) * p.head_dim > INT_MAX) return Status::kUnsupported;
  const auto s = static_cast<kvGpuStream_t>(stream);
  return with_float_type(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_kernel(rotary_embedding_kernel<T>, static_cast<unsigned>(p.num_tokens), kThreads, 0, s, p);
    return launch_status();
  });
}

}  // namespace kvserve
