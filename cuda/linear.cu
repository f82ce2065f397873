// linear_cuda: out = input @ weight^T (+ bias) for up to 8 input rows (decode; 32 over quantized
// codes), on tensor cores. More rows over codes take the tiled kernel (linear_tiles.cu).
//
// A block of 8 warps owns 16 output features (weight rows) and every input row; its warps take
// turns along in_features, 32 columns at a time (warp w: chunks w, w + 8, ...), 4 chunks'
// loads in flight per warp, so a layer's weight streams from memory once at close to its
// bandwidth. In a chunk, lane (g, t) = (lane / 4, lane % 4) loads 16 bytes of weight rows g and
// g + 8 and of input row g, columns 8t..8t+7: two m16n8k16 mma (A = the weight rows, B = the
// input rows, k in the order the lanes hold it; a product's sum over k does not care which k is
// which, as long as A and B agree). Input rows past num_rows and weight rows past out_features are
// zero-filled. The warps' float32 sums meet in shared memory; the bias is added before the one
// rounding, as on the CPU. Needs 16-bit dtypes, in_features in 16-byte packs and 16-byte aligned
// rows (kUnsupported otherwise, and on devices before sm_80).
//
// A weight of quantized codes (uint4, int8, e4m3; linear_weight.cuh) streams its codes and scales in
// place of those 16 bytes, 4 to 8 bytes a lane, and each lane widens them in registers into the
// same A fragments before its mma: a decode step reads three eighths (uint4, with its scales) to five
// eighths (int8) of a 16-bit weight's bytes. Widening costs instructions where a 16-bit weight costs
// none, so a block over codes takes up to 4 groups of 8 input rows (kGroups), each chunk widened once
// for all of them: a group's rows g + 8 j, its own accumulators and sums. The epilogues do not change
// (each of their threads takes its sums of every group).
//
// With silu_and_mul_output (an MLP's gate_up projection, weight [gate; up]) a block owns 8 features
// f: its mma rows g and g + 8 are weight rows f (gate) and half + f (up), so one thread ends with
// both sums of (row, f) and writes silu(gate) * up, each rounded as the plain product and the
// silu_and_mul kernel round them: the same bits, without that kernel or the [gate | up] rows.
// linear_rotary_and_cache_cuda (a layer's qkv projection) pairs the same way rows d and
// d + head_dim / 2 of a q or k head (8 pairs a block), rotates each pair as rotary_kernel does, and
// writes it in place and (k) into its cache slot; v's blocks write their 16 features into the value
// cache too (each rounded to the cache's element type C where the cache is narrower): the bits of
// linear_cuda, then rotary_and_cache_cuda.
//
// A layer's weights pass through L2 once a step, far more of them than it holds: they are read with
// an evict-first policy, so that they do not push out what the step's other kernels find there
// (attention's and the norms' code, the activations, the block table), which they would otherwise
// fetch again from memory after every projection.
//
// Launched programmatically (sm_90), a block's warps read their first batch of weight chunks into
// registers before they wait for the kernel before (compat.cuh: no kernel writes the weights), and
// only then the input rows. That kernel (a norm, attention, the product before) leaves the memory bus
// mostly idle at decode sizes, and the blocks resident during it (three per SM: on an H100 all of
// qkv's, o's and down's for Llama-3.1-8B) have a quarter of their weights (qkv, o, gate_up; a
// fourteenth of down's) on their way when it ends, instead of one trip to memory after it. Unlike
// the L2 prefetches tried before (bench/README.md: they made the step slower), these are the
// kernel's own loads, asked once, into the registers that take them anyway.
#include <climits>
#include <type_traits>

#include "device_resources.h"
#include "linear_tiles.cuh"
#include "linear_weight.cuh"
#include "numeric.cuh"
#include "silu.cuh"
#include "rotary.cuh"
#include "kvserve/linear.h"
#include "kvserve/linear_rotary_and_cache.h"

namespace kvserve {

#if KVSERVE_GPU_MMA

namespace {

using namespace gpu;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kFeatures = 16;  // weight rows per block (the mma's M)
static_assert(kLinearCudaMaxRows == 8, "input rows fill the mma's N of 8");
constexpr int kChunk = kLinearChunk;
// Chunks in flight per warp: 4, or 2 for blocks of 4 groups of rows, whose accumulators would
// otherwise not fit 128 registers (and whose chunks each take 4 groups' mma, time for the next
// chunks' loads). (8 groups spilled even so, nvcc 13: 32 rows a call at most.)
constexpr int chunks_in_flight(int groups) { return groups >= 4 ? 2 : 4; }
// Groups of 8 input rows a block takes at most (quantized weights, kLinearCudaMaxCodeRows): each
// chunk's weights widened once for all of them.
constexpr int kMaxGroups = 4;
static_assert(kLinearCudaMaxCodeRows == 8 * kMaxGroups, "a group of input rows fills the mma's N of 8");
// Blocks resident on an SM at once on sm_90+, the registers capped to fit them. Without the cap the
// compiler takes 68-72 registers, which fit three blocks too, but schedules the loop otherwise:
// graphed decode steps on an H200 took 4.94 / 5.72 ms at batch 1 / 8 against 4.72 / 5.13 with the
// cap (80 registers; bench/README.md, two calls of one session). Earlier devices launch no kernel
// before the one before it ends: no cap.
// Blocks of more than one group of rows hold a group's accumulators more: two an SM (128 registers).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
constexpr int kBlocksPerSm = 1, kGroupsBlocksPerSm = 1;
#else
constexpr int kBlocksPerSm = 3, kGroupsBlocksPerSm = 2;
#endif

// What a block does with its 16 weight rows' sums (see the top of this file).
enum class Epilogue {
  kPlain,           // 16 output features
  kSiluAndMul,      // rows f (gate) and half + f (up) of 8 features f: silu(gate) * up
  kRotaryAndCache,  // 8 pairs (d, d + head_dim / 2) of a q or k head, rotated (k also cached); or 16 of v, cached
};

// The weight rows a block's mma rows g and g + 8 take.
struct BlockRows {
  int64_t low, high;
};

// Rotary blocks: head_dim / 16 per q or k head (8 pairs each), the v blocks after them.
__device__ inline int64_t rotary_blocks(const RotaryEmbeddingParams& r) {
  return (r.num_heads + r.num_kv_heads) * (r.head_dim / 16);
}

template <Epilogue kEpilogue>
__device__ inline BlockRows block_rows(const LinearParams& p, const RotaryEmbeddingParams& r, int g) {
  const int64_t block = blockIdx.x;
  if constexpr (kEpilogue == Epilogue::kSiluAndMul) {
    return {block * 8 + g, p.out_features / 2 + block * 8 + g};
  } else if constexpr (kEpilogue == Epilogue::kRotaryAndCache) {
    const int64_t per_head = r.head_dim / 16;
    if (block < rotary_blocks(r)) {
      const int64_t first = (block / per_head) * r.head_dim + (block % per_head) * 8 + g;
      return {first, first + r.head_dim / 2};
    }
  }
  return {block * kFeatures + g, block * kFeatures + g + 8};
}

template <class T, class W, Epilogue kEpilogue, int kGroups, class C = T>
__global__ void __launch_bounds__(kThreads, kGroups == 1 ? kBlocksPerSm : kGroupsBlocksPerSm)
    linear_kernel(const LinearParams p, const RotaryAndCacheParams rc) {
  constexpr int kUnroll = chunks_in_flight(kGroups);
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize, lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const RotaryEmbeddingParams& r = rc.rotary;
  const BlockRows rows = block_rows<kEpilogue>(p, r, g);
  // kSiluAndMul: a pair is inside when its gate is (out_features is even).
  const int64_t row_end = kEpilogue == Epilogue::kSiluAndMul ? p.out_features / 2 : p.out_features;
  const bool low_row = rows.low < row_end;
  const bool high_row = kEpilogue == Epilogue::kSiluAndMul ? low_row : rows.high < p.out_features;
  const WeightRow low = W::row(p, low_row ? rows.low : 0), high = W::row(p, high_row ? rows.high : 0);
  // Input row g + 8 j of group j, if there is one.
  auto input_row = [&](int j) { return g + 8 * j < p.num_rows; };
  auto input = [&](int j) { return static_cast<const T*>(p.input) + (input_row(j) ? g + 8 * j : 0) * p.input_stride; };
  // Columns in 32 bits (launch_linear refuses in_features past INT_MAX): the loop's bounds checks stay
  // one compare each.
  const auto in_features = static_cast<int32_t>(p.in_features);
  const int32_t chunks = (in_features + kChunk - 1) / kChunk;
  // Lane t's 8 columns of chunk c lie wholly inside or outside in_features (a multiple of 8).
  auto inside = [&](int32_t chunk) { return chunk < chunks && chunk * kChunk + 8 * t < in_features; };

  // The warp's batch of kUnroll chunks from `first`, as read (zero where outside; linear_weight.cuh),
  // through L2 or not.
  const uint64_t once = evict_first_policy();
  typename W::Raw w_low[kUnroll], w_high[kUnroll];
  auto load_weights = [&](int32_t first, auto through_l2) {
    constexpr bool kThroughL2 = decltype(through_l2)::value;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int32_t chunk = first + u * kWarps;
      const int32_t at = inside(chunk) ? chunk : 0;
      w_low[u] = inside(chunk) && low_row ? W::template load<kThroughL2>(low, at, t, once) : typename W::Raw{};
      w_high[u] = inside(chunk) && high_row ? W::template load<kThroughL2>(high, at, t, once) : typename W::Raw{};
    }
  };
  // The first batch's weights before the wait (see the top of this file).
  load_weights(warp, std::true_type{});
  wait_for_prior_grid();

  float c[kGroups][4] = {};
  for (int32_t first = warp; first < chunks; first += kWarps * kUnroll) {
    if (first != warp) load_weights(first, std::false_type{});
    uint4 a_low[kUnroll], a_high[kUnroll];  // each chunk's weights widened once for every group
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      a_low[u] = W::fragment(w_low[u]);
      a_high[u] = W::fragment(w_high[u]);
    }
#pragma unroll
    for (int j = 0; j < kGroups; ++j) {
      uint4 x[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int32_t chunk = first + u * kWarps;
        x[u] = inside(chunk) && input_row(j) ? W::input(input(j), chunk, t) : uint4{};
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const uint32_t a0[4] = {a_low[u].x, a_high[u].x, a_low[u].y, a_high[u].y};
        mma_16x8x16<T>(c[j], a0, x[u].x, x[u].y);
        const uint32_t a1[4] = {a_low[u].z, a_high[u].z, a_low[u].w, a_high[u].w};
        mma_16x8x16<T>(c[j], a1, x[u].z, x[u].w);
      }
    }
  }

  // Group j's c0, c1 = input rows 8j + 2t, 8j + 2t + 1 against the block's weight row g, c2, c3
  // against row g + 8: summed over warps.
  __shared__ float s_sums[kGroups][kWarps][kWarpSize][4];
#pragma unroll
  for (int j = 0; j < kGroups; ++j) {
#pragma unroll
    for (int i = 0; i < 4; ++i) s_sums[j][warp][lane][i] = c[j][i];
  }
  __syncthreads();
  // Sum i of group j's lane `from` over the warps, as written for weight row `weight_row`.
  auto output = [&](int j, int from, int i, int64_t weight_row) {
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += s_sums[j][w][from][i];
    return rounded_sum<T, W>(p, sum, weight_row);
  };
  T* out = static_cast<T*>(p.out);
  // The paired epilogues: 64 threads, each lane `from`'s sum i < 2 (input row 8j + 2t + i against its
  // weight row g) with its partner, sum i + 2 (row g + 8): the rows block_rows gave lane g = from / 4.
  const bool paired = kEpilogue == Epilogue::kSiluAndMul ||
                      (kEpilogue == Epilogue::kRotaryAndCache && blockIdx.x < rotary_blocks(r));
  if (paired) {
    if (threadIdx.x >= kWarpSize * 2) return;
    const int from = static_cast<int>(threadIdx.x) / 2, i = static_cast<int>(threadIdx.x) % 2;
    const BlockRows pair = block_rows<kEpilogue>(p, r, from / 4);
    if (pair.low >= row_end) return;
#pragma unroll 1
    for (int j = 0; j < kGroups; ++j) {
      const int64_t row = 8 * j + 2 * (from % 4) + i;
      if (row >= p.num_rows) return;
      const T first = output(j, from, i, pair.low), second = output(j, from, i + 2, pair.high);
      if constexpr (kEpilogue == Epilogue::kSiluAndMul) {
        out[row * p.out_stride + pair.low] = silu_and_mul_value(first, second);
      } else {
        // Pair (d, d + half) of q or k head `head`.
        const int64_t head = pair.low / r.head_dim, d = pair.low % r.head_dim, half = r.head_dim / 2;
        const T cos = static_cast<const T*>(r.cos)[row * r.cos_sin_stride_token + d];
        const T sin = static_cast<const T*>(r.sin)[row * r.cos_sin_stride_token + d];
        T y1, y2;
        rotate_pair(to_float(first), to_float(second), to_float(cos), to_float(sin), &y1, &y2);
        const bool is_key = head >= r.num_heads;
        T* x = rotated_head<T>(r, row, head);
        x[d] = y1;
        x[d + half] = y2;
        const int64_t slot = is_key ? cache_slot(rc.cache, row) : -1;
        if (slot >= 0) {
          C* cached = static_cast<C*>(rc.cache.key_cache) + slot + (head - r.num_heads) * r.head_dim;
          cached[d] = cache_element<C>(y1);
          cached[d + half] = cache_element<C>(y2);
        }
      }
    }
    return;
  }
  if (threadIdx.x >= kWarpSize * 4) return;
  const int item = static_cast<int>(threadIdx.x);  // (lane, i): 128 sums of each group
  const int from = item / 4, i = item % 4;
  const int64_t feature = blockIdx.x * kFeatures + from / 4 + (i >= 2 ? 8 : 0);
  if (feature >= p.out_features) return;
#pragma unroll 1
  for (int j = 0; j < kGroups; ++j) {
    const int64_t row = 8 * j + 2 * (from % 4) + i % 2;
    if (row >= p.num_rows) return;
    const T value = output(j, from, i, feature);
    out[row * p.out_stride + feature] = value;
    if constexpr (kEpilogue == Epilogue::kRotaryAndCache) {  // a v feature: into the value cache too
      const int64_t slot = cache_slot(rc.cache, row);
      if (slot >= 0) {
        static_cast<C*>(rc.cache.value_cache)[slot + feature - rotary_blocks(r) * kFeatures] = cache_element<C>(value);
      }
    }
  }
}

// Calls f(std::integral_constant<int, G>) with G the groups of 8 rows a block of weight reading W
// takes for `rows` rows: 1, 2 or 4 (codes), or 1 (a 16-bit weight, at most 8 rows).
template <class W, class F>
Status with_row_groups(int64_t rows, F&& f) {
  if constexpr (W::kWidens) {
    if (rows > 16) return f(std::integral_constant<int, 4>{});
    if (rows > 8) return f(std::integral_constant<int, 2>{});
  }
  return f(std::integral_constant<int, 1>{});
}

// Launches linear_kernel<T, W, kEpilogue, G, C> over `blocks` blocks (T from p.dtype, 16-bit only; W
// from p.weight_dtype; G from p.num_rows; C from the cache's dtype with the cache write, else T).
template <Epilogue kEpilogue>
Status launch_linear(const LinearParams& p, const RotaryAndCacheParams& rc, int64_t blocks, kvGpuStream_t stream) {
  DeviceInfo device;
  if (!linear_cuda_takes(p) || p.num_rows > linear_cuda_few_rows_max(p) || blocks > INT_MAX || p.in_features > INT_MAX - kChunk ||
      !current_device_info(&device) || device.compute_capability < 80) {
    return Status::kUnsupported;
  }
  return with_float_type(p.dtype, [&](auto tag) -> Status {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, float>) {
      return Status::kUnsupported;
    } else {
      return with_weight_reading<T>(p, [&](auto reading) {
        using W = decltype(reading);
        return with_row_groups<W>(p.num_rows, [&](auto groups) {
          auto launch = [&](auto element) {
            launch_kernel(linear_kernel<T, W, kEpilogue, decltype(groups)::value, decltype(element)>,
                          dim3(static_cast<unsigned>(blocks)), kThreads, 0, stream, p, rc);
            return launch_status();
          };
          if constexpr (kEpilogue == Epilogue::kRotaryAndCache) {
            return with_cache_type<T>(rc.cache.cache_dtype.value_or(p.dtype), launch);
          } else {
            return launch(T{});
          }
        });
      });
    }
  });
}

}  // namespace

Status linear_cuda(const LinearParams& p, void* stream) {
  if (check_linear(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  if (p.num_rows == 0) return Status::kOk;
  const auto s = static_cast<kvGpuStream_t>(stream);
  if (p.weight_dtype && p.num_rows > kLinearCudaMaxCodeRows) {
    return linear_cuda_takes(p) ? linear_tiles_cuda(p, s) : Status::kUnsupported;
  }
  const RotaryAndCacheParams unused;
  // 16 weight rows a block either way (with silu_and_mul_output: 8 of gate, 8 of up).
  if (p.silu_and_mul_output) return launch_linear<Epilogue::kSiluAndMul>(p, unused, (p.out_features / 2 + 7) / 8, s);
  return launch_linear<Epilogue::kPlain>(p, unused, (p.out_features + kFeatures - 1) / kFeatures, s);
}

Status linear_rotary_and_cache_cuda(const LinearParams& p, const RotaryAndCacheParams& rc, void* stream) {
  if (check_linear_rotary_and_cache(p, rc, nullptr) != Status::kOk) return Status::kInvalidArgument;
  if (p.num_rows == 0) return Status::kOk;
  if (rc.rotary.head_dim % 16 != 0 || rc.query_norm_weight != nullptr) return Status::kUnsupported;
  // out_features is a whole number of heads: of 16 rows each.
  const auto s = static_cast<kvGpuStream_t>(stream);
  return launch_linear<Epilogue::kRotaryAndCache>(p, rc, p.out_features / kFeatures, s);
}

#else  // no tensor-core instructions (the HIP build)

Status linear_cuda(const LinearParams& p, void*) {
  return check_linear(p, nullptr) != Status::kOk ? Status::kInvalidArgument : Status::kUnsupported;
}

Status linear_rotary_and_cache_cuda(const LinearParams& p, const RotaryAndCacheParams& rc, void*) {
  return check_linear_rotary_and_cache(p, rc, nullptr) != Status::kOk ? Status::kInvalidArgument
                                                                      : Status::kUnsupported;
}

#endif  // KVSERVE_GPU_MMA

}  // namespace kvserve
