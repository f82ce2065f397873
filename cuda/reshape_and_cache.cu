// reshape_and_cache_cuda: one thread block per token; each thread copies units of up to 16 bytes of
// the token's K and V heads into its slot. The unit is the widest that every row, head and block
// start is aligned to, so the copy is dtype-agnostic and vectorized where the layout allows. Into a
// narrower cache (cache_dtype) each thread rounds elements one at a time instead.
#include <climits>

#include "cache_slot.cuh"
#include "numeric.cuh"

namespace kvserve {

namespace {

using namespace gpu;

constexpr int kThreads = 128;

template <class Unit>
__global__ void __launch_bounds__(kThreads) reshape_and_cache_kernel(const ReshapeAndCacheParams p) {
  wait_for_prior_grid();
  const int64_t token = blockIdx.x;
  const int64_t at = cache_slot(p, token);
  if (at < 0) return;  // -1: padding; or out of range
  const int64_t elem = dtype_bytes(p.dtype);
  const int64_t units_per_head = p.head_dim * elem / static_cast<int64_t>(sizeof(Unit));
  const int64_t slot_at = at * elem;
  const auto* key = static_cast<const char*>(p.key) + token * p.key_stride_token * elem;
  const auto* value = static_cast<const char*>(p.value) + token * p.value_stride_token * elem;
  auto* key_cache = static_cast<char*>(p.key_cache) + slot_at;
  auto* value_cache = static_cast<char*>(p.value_cache) + slot_at;
  for (int64_t i = threadIdx.x; i < p.num_kv_heads * units_per_head; i += kThreads) {
    const int64_t head = i / units_per_head, unit = i % units_per_head;
    reinterpret_cast<Unit*>(key_cache)[i] =
        reinterpret_cast<const Unit*>(key + head * p.key_stride_head * elem)[unit];
    reinterpret_cast<Unit*>(value_cache)[i] =
        reinterpret_cast<const Unit*>(value + head * p.value_stride_head * elem)[unit];
  }
}

// Into a cache of the narrower element type C: the same slots, element by element.
template <class T, class C>
__global__ void __launch_bounds__(kThreads) reshape_and_round_kernel(const ReshapeAndCacheParams p) {
  wait_for_prior_grid();
  const int64_t token = blockIdx.x;
  const int64_t at = cache_slot(p, token);
  if (at < 0) return;
  const T* key = static_cast<const T*>(p.key) + token * p.key_stride_token;
  const T* value = static_cast<const T*>(p.value) + token * p.value_stride_token;
  C* key_cache = static_cast<C*>(p.key_cache) + at;
  C* value_cache = static_cast<C*>(p.value_cache) + at;
  for (int64_t i = threadIdx.x; i < p.num_kv_heads * p.head_dim; i += kThreads) {
    const int64_t head = i / p.head_dim, d = i % p.head_dim;
    key_cache[i] = cache_element<C>(key[head * p.key_stride_head + d]);
    value_cache[i] = cache_element<C>(value[head * p.value_stride_head + d]);
  }
}

// The largest of 16, 8, 4 and 2 bytes that divides every address and stride the copy starts from.
int64_t unit_bytes(const ReshapeAndCacheParams& p) {
  const int64_t elem = dtype_bytes(p.dtype);
  const uint64_t offsets[] = {
      reinterpret_cast<uintptr_t>(p.key),          reinterpret_cast<uintptr_t>(p.value),
      reinterpret_cast<uintptr_t>(p.key_cache),    reinterpret_cast<uintptr_t>(p.value_cache),
      static_cast<uint64_t>(p.head_dim * elem),    static_cast<uint64_t>(p.key_stride_token * elem),
      static_cast<uint64_t>(p.key_stride_head * elem), static_cast<uint64_t>(p.value_stride_token * elem),
      static_cast<uint64_t>(p.value_stride_head * elem), static_cast<uint64_t>(p.cache_stride_block * elem)};
  int64_t unit = 16;
  for (uint64_t offset : offsets) {
    while (offset % static_cast<uint64_t>(unit) != 0) unit /= 2;
  }
  return unit;
}

template <class Unit>
Status launch(const ReshapeAndCacheParams& p, kvGpuStream_t stream) {
  launch_kernel(reshape_and_cache_kernel<Unit>, static_cast<unsigned>(p.num_tokens), kThreads, 0, stream, p);
  return launch_status();
}

Status copy(const ReshapeAndCacheParams& p, kvGpuStream_t stream) {
  switch (unit_bytes(p)) {
    case 16: return launch<uint4>(p, stream);
    case 8: return launch<uint2>(p, stream);
    case 4: return launch<uint32_t>(p, stream);
    default: return launch<uint16_t>(p, stream);
  }
}

}  // namespace

Status reshape_and_cache_cuda(const ReshapeAndCacheParams& p, void* stream) {
  if (check_reshape_and_cache_layout(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  if (p.num_tokens == 0) return Status::kOk;
  if (p.num_tokens > INT_MAX) return Status::kUnsupported;
  const auto s = static_cast<kvGpuStream_t>(stream);
  return with_float_type(p.dtype, [&](auto rows) {
    using T = decltype(rows);
    return with_cache_type<T>(p.cache_dtype.value_or(p.dtype), [&](auto element) {
      using C = decltype(element);
      if constexpr (std::is_same_v<C, T>) {
        return copy(p, s);
      } else {
        launch_kernel(reshape_and_round_kernel<T, C>, static_cast<unsigned>(p.num_tokens), kThreads, 0, s, p);
        return launch_status();
      }
    });
  });
}

}  // namespace kvserve
