// rotary_embedding_cuda: on rotary.cuh's (token, chunk) grid, each thread turns kPack consecutive
// pairs (d, d + half) of one query or key head in place, with 16-byte loads of both halves, cos and
// sin where every row and head start is 16-byte aligned and the half width divides into packs (one
// element otherwise).
#include <climits>

#include "rotary.cuh"
#include "kvserve/layer_ops.h"

namespace kvserve {

namespace {

using namespace gpu;

template <class T, int kPack>
__global__ void __launch_bounds__(kRotaryThreads) rotary_embedding_kernel(const RotaryEmbeddingParams p) {
  using Packed = Pack<T, kPack>;
  const int64_t token = blockIdx.x;
  const int32_t half = static_cast<int32_t>(p.head_dim / 2), packs_per_head = half / kPack;
  const T* cos = static_cast<const T*>(p.cos) + token * p.cos_sin_stride_token;
  const T* sin = static_cast<const T*>(p.sin) + token * p.cos_sin_stride_token;
  const int32_t items = static_cast<int32_t>((p.num_heads + p.num_kv_heads) * packs_per_head);
  for (int32_t i = blockIdx.y * kRotaryThreads + threadIdx.x; i < items; i += gridDim.y * kRotaryThreads) {
    const int32_t head = i / packs_per_head, d = (i % packs_per_head) * kPack;
    T* x = head < p.num_heads
               ? static_cast<T*>(p.query) + token * p.query_stride_token + head * p.query_stride_head
               : static_cast<T*>(p.key) + token * p.key_stride_token + (head - p.num_heads) * p.key_stride_head;
    const Packed x1 = *reinterpret_cast<const Packed*>(x + d), x2 = *reinterpret_cast<const Packed*>(x + d + half);
    const Packed c = *reinterpret_cast<const Packed*>(cos + d), s = *reinterpret_cast<const Packed*>(sin + d);
    Packed y1, y2;
    rotate_pairs<T, kPack>(x1, x2, c, s, &y1, &y2);
    *reinterpret_cast<Packed*>(x + d) = y1;
    *reinterpret_cast<Packed*>(x + d + half) = y2;
  }
}

// Half a head in whole packs too: its byte length is among the lengths.
bool packs_of_16_bytes(const RotaryEmbeddingParams& p) {
  return all_16_byte_aligned({p.query, p.key, p.cos, p.sin},
                             {p.head_dim / 2, p.query_stride_token, p.query_stride_head, p.key_stride_token,
                              p.key_stride_head, p.cos_sin_stride_token},
                             dtype_bytes(p.dtype));
}

template <class T, int kPack>
Status launch(const RotaryEmbeddingParams& p, kvGpuStream_t stream) {
  const int64_t items = (p.num_heads + p.num_kv_heads) * (p.head_dim / 2 / kPack);
  launch_kernel(rotary_embedding_kernel<T, kPack>, rotary_grid(p.num_tokens, items), kRotaryThreads, 0, stream, p);
  return launch_status();
}

}  // namespace

Status rotary_embedding_cuda(const RotaryEmbeddingParams& p, void* stream) {
  if (check_rotary_embedding(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  if (p.num_tokens == 0) return Status::kOk;
  if (p.num_tokens > INT_MAX || (p.num_heads + p.num_kv_heads) * p.head_dim > INT_MAX) return Status::kUnsupported;
  const auto s = static_cast<kvGpuStream_t>(stream);
  return with_float_type(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    return packs_of_16_bytes(p) ? launch<T, 16 / sizeof(T)>(p, s) : launch<T, 1>(p, s);
  });
}

}  // namespace kvserve
