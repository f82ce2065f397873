// linear_tiles_cuda: out = input @ weight^T (+ bias) over quantized codes (uint4, int8, e4m3) for
// more rows than the few-rows kernel takes (linear.cu): a decode step of many sequences, or a
// prefill chunk, multiplied on tensor cores straight from the codes, where cuBLAS would need the
// weight widened to 16 bits first (for uint4, 2.4x a 16-bit weight's bytes moved before the GEMM
// reads the copy again).
//
// A block of 8 warps owns a tile of 64 input rows x 128 weight rows (16 a warp) and walks along
// in_features 32 columns a stage. Each stage's input rows (64 x 32 elements) and codes, with their
// scales, are copied into shared memory asynchronously, 4 stages in flight (the first 3 stages'
// codes and scales read before the wait for the kernel before, as linear.cu's are). A warp widens
// its 16 weight rows' codes of a stage once, in registers, into the mma's B fragments (each value
// rounded to the dtype as dequantize_weight rounds it; linear_weight.cuh's readings), so each code is
// widened once for 64 input rows; the input's A fragments come by ldmatrix: 2 k16 steps x 4 row
// tiles x 2 weight tiles of m16n8k16 mma a stage.
//
// With A from ldmatrix, lane (g, t) holds columns 2t, 2t + 1, 2t + 8, 2t + 9 of a k16 step, so its
// B fragment is the same columns of weight row g: for uint4 codes the bytes 2t, 2t + 1, 2t + 8,
// 2t + 9 of a group's 16, whose low nibbles are the first step's columns and high nibbles the
// second's (linear.h's byte order); for int8 and e4m3 codes the same bytes of each step's 16.
//
// Grids of fewer tiles than the device has places for blocks split in_features too: each split
// writes its float32 sums into the split workspace (device_resources.h) and counts itself in; the
// last block of a tile to arrive adds the splits in their order (the same bits whichever arrives
// last) and writes the output. A sum (times e4m3's row scale) plus the bias is rounded once to the
// dtype. With silu_and_mul_output a warp's two weight tiles are the gate and up rows of 8 features,
// so a thread holds both sums of its (row, feature) and writes silu(gate) * up, each rounded as the
// few-rows kernel rounds them.
#include "linear_tiles.cuh"

#include <climits>

#include "device_resources.h"
#include "linear_weight.cuh"
#include "numeric.cuh"
#include "silu.cuh"

#if KVSERVE_GPU_MMA

namespace kvserve::gpu {

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kTileRows = 64;                 // input rows a block: 4 of the mma's M tiles
constexpr int kRowTiles = kTileRows / 16;
constexpr int kTileFeatures = 16 * kWarps;    // weight rows a block: 2 of the mma's N tiles a warp
constexpr int kStages = 4;
constexpr int kColumns = kLinearChunk;        // in_features a stage: a uint4 group, two int8 groups
constexpr int kInputPitch = kColumns + 8;     // 80-byte rows: ldmatrix's 8 rows fall in distinct banks
constexpr int kSums = kRowTiles * 2 * 4;      // a thread's float32 sums
// A split walks at least this many stages (256 columns): enough for the pipeline to fill.
constexpr int kMinSplitStages = 8;
// Blocks resident on an SM (registers capped at 128 to fit them; shared memory: 2 x at most 43 KB).
constexpr int kBlocksPerSm = 2;
static_assert(kThreads == kTileRows * kColumns / 8, "a thread copies one 16-byte piece of a stage's input");
static_assert(kThreads == 2 * kTileFeatures, "a thread copies at most one piece of codes and one scale a stage");

// Bytes 2t, 2t + 1, 2t + 8, 2t + 9 of 16 (a k16 step's columns that lane t holds), in that order.
__device__ inline uint32_t lane_bytes(const uint4& v, int t) {
  const uint32_t low = t < 2 ? v.x : v.y, high = t < 2 ? v.z : v.w;
  return __byte_perm(low, high, t % 2 == 0 ? 0x5410u : 0x7632u);
}

// A stage's codes and scales for weight reading W, and how a lane widens a weight row's into its B
// fragments of the stage's two k16 steps: {b0, b1} of the first, then {b0, b1} of the second.
template <class W>
struct TileCodes;

template <class T>
struct TileCodes<Uint4Weight<T>> {
  static constexpr int kBytes = 16, kScales = 1, kOffsets = 1;  // a row's group of 32
  __device__ static uint4 fragments(const unsigned char* codes, const float* scale, const float* offset, int t) {
    return widen<Uint4Weight<T>, T>({lane_bytes(*reinterpret_cast<const uint4*>(codes), t), *scale, *offset});
  }
};

template <class T>
struct TileCodes<Int8Weight<T>> {
  static constexpr int kBytes = 32, kScales = 2, kOffsets = 0;  // a row's two groups of 16, a step each
  __device__ static uint4 fragments(const unsigned char* codes, const float* scale, const float*, int t) {
    auto step = [&](int s) {
      const uint32_t bytes = lane_bytes(reinterpret_cast<const uint4*>(codes)[s], t);
      const typename Int8Weight<T>::Raw raw{{bytes, bytes}, scale[s]};
      return uint2{pack_pair<T>(Int8Weight<T>::value(raw, 0), Int8Weight<T>::value(raw, 1)),
                   pack_pair<T>(Int8Weight<T>::value(raw, 2), Int8Weight<T>::value(raw, 3))};
    };
    const uint2 first = step(0), second = step(1);
    return {first.x, first.y, second.x, second.y};
  }
};

template <class T>
struct TileCodes<E4m3Weight<T>> {
  static constexpr int kBytes = 32, kScales = 0, kOffsets = 0;  // the row's scale multiplies the sum
  __device__ static uint4 fragments(const unsigned char* codes, const float*, const float*, int t) {
    const auto* steps = reinterpret_cast<const uint4*>(codes);
    return E4m3Weight<T>::fragment(uint2{lane_bytes(steps[0], t), lane_bytes(steps[1], t)});
  }
};

template <class T, class C>
struct Stage {
  T input[kTileRows][kInputPitch];
  alignas(16) unsigned char codes[kTileFeatures][C::kBytes];
  float scale[kTileFeatures][C::kScales > 0 ? C::kScales : 1];
  float offset[kTileFeatures][C::kOffsets > 0 ? C::kOffsets : 1];
};

struct TileSplits {
  float* partials = nullptr;    // [split][tile][kSums / 4][kThreads] float4
  int32_t* arrivals = nullptr;  // a counter a tile, zero between launches (the last block resets it)
  int32_t splits = 1;
  int32_t stages_per_split = 0;
};

// Weight row of the block's tile row r (0 .. 127), and whether it is one: plain, rows in order; with
// silu_and_mul_output, warp w's rows 16w .. 16w + 7 are the gate rows of its 8 features, 16w + 8 ..
// 16w + 15 their up rows.
template <bool kSilu>
__device__ inline int64_t tile_weight_row(const LinearParams& p, int r, bool* inside) {
  if constexpr (kSilu) {
    const int64_t half = p.out_features / 2;
    const int64_t feature = static_cast<int64_t>(blockIdx.y) * (kTileFeatures / 2) + r / 16 * 8 + r % 8;
    *inside = feature < half;
    return r / 8 % 2 == 0 ? feature : half + feature;
  } else {
    const int64_t row = static_cast<int64_t>(blockIdx.y) * kTileFeatures + r;
    *inside = row < p.out_features;
    return row;
  }
}

template <class T, class W, bool kSilu>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) linear_tiles_kernel(const LinearParams p,
                                                                             const TileSplits split) {
  using C = TileCodes<W>;
  __shared__ Stage<T, C> stages[kStages];
  const int tid = static_cast<int>(threadIdx.x), warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const int64_t first_row = static_cast<int64_t>(blockIdx.x) * kTileRows;

  // This thread's share of each stage's copies: one 16-byte piece of the input rows, at most one of
  // the codes, and at most one scale or offset (a stage has 256 or fewer of each).
  // The sources advance a stage at a time from the split's first (pointers, not products of the stage's
  // index: the loop's addresses then cost few instructions).
  const int32_t chunks = static_cast<int32_t>(p.in_features / kColumns);
  const int32_t first = static_cast<int32_t>(blockIdx.z) * split.stages_per_split;
  const auto count = static_cast<int32_t>(min_i64(split.stages_per_split, chunks - first));
  const int input_row = tid / 4, input_piece = tid % 4;
  const bool input_inside = first_row + input_row < p.num_rows;
  const T* input_from = static_cast<const T*>(p.input) + (input_inside ? first_row + input_row : 0) * p.input_stride +
                        8 * input_piece + int64_t{first} * kColumns;
  constexpr int kCodePieces = C::kBytes / 16;
  const int code_row = tid / kCodePieces, code_piece = tid % kCodePieces;
  const bool copies_codes = code_row < kTileFeatures;
  bool code_inside = false;
  const int64_t code_weight_row = tile_weight_row<kSilu>(p, copies_codes ? code_row : 0, &code_inside);
  code_inside = code_inside && copies_codes;
  const unsigned char* codes_from = static_cast<const unsigned char*>(p.weight) +
                                    (code_inside ? code_weight_row : 0) * p.weight_stride + 16 * code_piece +
                                    int64_t{first} * C::kBytes;
  // Scales: uint4's threads 0 .. 127 copy a row's scale, 128 .. 255 its offset; int8's, one of a row's two.
  constexpr int kScaleItems = C::kScales + C::kOffsets;
  const int scale_row = kScaleItems == 0 ? 0 : tid % kTileFeatures;
  const int scale_item = kScaleItems == 0 ? 0 : tid / kTileFeatures;
  bool scale_inside = false;
  const int64_t scale_weight_row = tile_weight_row<kSilu>(p, scale_row, &scale_inside);
  scale_inside = scale_inside && kScaleItems > 0;
  const int64_t groups = p.in_features / kColumns * C::kScales;  // a row's scales
  const bool copies_offset = C::kOffsets > 0 && scale_item >= C::kScales;
  const float* scale_from = (copies_offset ? p.weight_offset : p.weight_scale) +
                            (scale_inside ? scale_weight_row * groups : 0) + (copies_offset ? 0 : scale_item) +
                            int64_t{first} * C::kScales;

  // Where this thread's piece of codes and its scale or offset go in a stage.
  auto codes_to = [&](Stage<T, C>& s) { return &s.codes[code_row][16 * code_piece]; };
  auto scale_to = [&](Stage<T, C>& s) {
    return copies_offset ? &s.offset[scale_row][0] : &s.scale[scale_row][scale_item];
  };
  // The next stage's copies into slot s, and the sources a stage on.
  auto copy_stage = [&](Stage<T, C>& s) {
    copy_async_16(&s.input[input_row][8 * input_piece], input_from, input_inside);
    input_from += kColumns;
    if (copies_codes) copy_async_16(codes_to(s), codes_from, code_inside);
    codes_from += C::kBytes;
    if constexpr (kScaleItems > 0) {
      copy_async_4(scale_to(s), scale_from, scale_inside);
      scale_from += C::kScales;
    }
  };
  auto next_slot = [](int slot) { return slot == kStages - 1 ? 0 : slot + 1; };

  // The first stages' codes and scales are read before the wait for the kernel before (compat.cuh: no
  // kernel writes the weights), through L2 into registers, so that they are on their way while that
  // kernel ends; after the wait they go into shared memory beside their input rows' copies.
  uint4 early_codes[kStages - 1];
  float early_scale[kStages - 1];
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    early_codes[s] = s < count && code_inside ? load_through_l2(reinterpret_cast<const uint4*>(codes_from) + s *
                                                                (C::kBytes / 16))
                                              : uint4{};
    early_scale[s] = kScaleItems > 0 && s < count && scale_inside ? load_through_l2(scale_from + s * C::kScales) : 0.f;
  }
  wait_for_prior_grid();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < count) {
      copy_async_16(&stages[s].input[input_row][8 * input_piece], input_from, input_inside);
      input_from += kColumns;
      if (copies_codes) *reinterpret_cast<uint4*>(codes_to(stages[s])) = early_codes[s];
      if constexpr (kScaleItems > 0) *scale_to(stages[s]) = early_scale[s];
    }
    copy_async_commit();
  }
  codes_from += (kStages - 1) * C::kBytes;
  if constexpr (kScaleItems > 0) scale_from += (kStages - 1) * C::kScales;
  // Row tiles m that hold input rows: the rest of a tile is padding (zeros), multiplied (a branch a
  // row tile in the loop cost sm_90a 41 instructions of 170 a stage) but not stored.
  auto live = [&](int m) { return first_row + 16 * m < p.num_rows; };
  float c[kRowTiles][2][4] = {};
  // Stage i is read from slot `read`; stage i + kStages - 1 is copied into `write` (stage i - 1's).
  int read = 0, write = kStages - 1;
  for (int32_t i = 0; i < count; ++i) {
    copy_async_wait<kStages - 2>();
    __syncthreads();  // stage i landed for every thread, and stage i - 1's slot is free
    if (i + kStages - 1 < count) copy_stage(stages[write]);
    copy_async_commit();
    write = next_slot(write);
    const Stage<T, C>& s = stages[read];
    read = next_slot(read);
    uint4 b[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int r = 16 * warp + 8 * j + g;
      b[j] = C::fragments(s.codes[r], s.scale[r], s.offset[r], t);
    }
#pragma unroll
    for (int step = 0; step < 2; ++step) {
#pragma unroll
      for (int m = 0; m < kRowTiles; ++m) {
        uint32_t a[4];
        load_matrix_x4(a, &s.input[16 * m + lane % 16][16 * step + 8 * (lane / 16)]);
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          mma_16x8x16<T>(c[m][j], a, step == 0 ? b[j].x : b[j].z, step == 0 ? b[j].y : b[j].w);
        }
      }
    }
  }
  copy_async_wait<0>();

  if (split.splits > 1) {
    // Into the workspace; the tile's last block to arrive sums every split's, in split order.
    const int64_t tile = static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
    const int64_t tiles = static_cast<int64_t>(gridDim.x) * gridDim.y;
    auto at = [&](int64_t s, int m, int j) {
      const int64_t slot = (s * tiles + tile) * (kSums / 4) + m * 2 + j;
      return reinterpret_cast<float4*>(split.partials) + slot * kThreads + tid;
    };
#pragma unroll
    for (int m = 0; m < kRowTiles; ++m) {
      if (!live(m)) continue;
#pragma unroll
      for (int j = 0; j < 2; ++j) *at(blockIdx.z, m, j) = make_float4(c[m][j][0], c[m][j][1], c[m][j][2], c[m][j][3]);
    }
    __threadfence();
    __shared__ bool s_last;
    __syncthreads();
    if (tid == 0) s_last = atomicAdd(split.arrivals + tile, 1) == split.splits - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
#pragma unroll
    for (int m = 0; m < kRowTiles; ++m) {
      if (!live(m)) continue;
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int s = 0; s < split.splits; ++s) {
          const float4 part = s == static_cast<int>(blockIdx.z)
                                  ? make_float4(c[m][j][0], c[m][j][1], c[m][j][2], c[m][j][3])
                                  : load_through_l2(at(s, m, j));
          sum = make_float4(sum.x + part.x, sum.y + part.y, sum.z + part.z, sum.w + part.w);
        }
        c[m][j][0] = sum.x;
        c[m][j][1] = sum.y;
        c[m][j][2] = sum.z;
        c[m][j][3] = sum.w;
      }
    }
    if (tid == 0) split.arrivals[tile] = 0;
  }

  // c[m][j][i]: input row 16m + g + 8 (i / 2) of the tile against its weight row 16 warp + 8j + 2t + i % 2.
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int m = 0; m < kRowTiles; ++m) {
    if (!live(m)) continue;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = first_row + 16 * m + g + 8 * (i / 2);
      if (row >= p.num_rows) continue;
      if constexpr (kSilu) {
        bool inside = false;
        const int64_t gate = tile_weight_row<true>(p, 16 * warp + 2 * t + i % 2, &inside);
        if (!inside) continue;
        const T first_value = rounded_sum<T, W>(p, c[m][0][i], gate);
        const T second_value = rounded_sum<T, W>(p, c[m][1][i], gate + p.out_features / 2);
        out[row * p.out_stride + gate] = silu_and_mul_value(first_value, second_value);
      } else {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          bool inside = false;
          const int64_t feature = tile_weight_row<false>(p, 16 * warp + 8 * j + 2 * t + i % 2, &inside);
          if (inside) out[row * p.out_stride + feature] = rounded_sum<T, W>(p, c[m][j][i], feature);
        }
      }
    }
  }
}

// Splits of in_features for a grid of `tiles` blocks: enough to give every place for a block on the
// device one, each split at least kMinSplitStages stages, their partials within the workspace.
int32_t choose_splits(int64_t tiles, int32_t chunks, const DeviceInfo& device) {
  const int64_t places = int64_t{kBlocksPerSm} * device.multiprocessors;
  if (tiles >= places || tiles > kMaxSplitTiles) return 1;
  const int64_t room = static_cast<int64_t>(kSplitPartialBytes / (sizeof(float) * kSums * kThreads)) / tiles;
  const int64_t splits = min_i64(min_i64((places + tiles - 1) / tiles, chunks / kMinSplitStages), room);
  return static_cast<int32_t>(max_i64(splits, 1));
}

}  // namespace

Status linear_tiles_cuda(const LinearParams& p, kvGpuStream_t stream) {
  DeviceInfo device;
  if (!current_device_info(&device) || device.compute_capability < 80 || p.in_features > INT_MAX) {
    return Status::kUnsupported;
  }
  const int64_t row_tiles = (p.num_rows + kTileRows - 1) / kTileRows;
  const int64_t features = p.silu_and_mul_output ? p.out_features / 2 : p.out_features;
  const int64_t per_tile = p.silu_and_mul_output ? kTileFeatures / 2 : kTileFeatures;
  const int64_t feature_tiles = (features + per_tile - 1) / per_tile;
  if (row_tiles > INT_MAX || feature_tiles > 65535) return Status::kUnsupported;
  const auto chunks = static_cast<int32_t>(p.in_features / kColumns);
  TileSplits split;
  split.splits = choose_splits(row_tiles * feature_tiles, chunks, device);
  if (split.splits > 1) {
    SplitWorkspace workspace;
    if (split_workspace(stream, &workspace)) {
      split.partials = workspace.partials;
      split.arrivals = workspace.arrivals;
    } else {
      split.splits = 1;
    }
  }
  split.stages_per_split = (chunks + split.splits - 1) / split.splits;
  split.splits = (chunks + split.stages_per_split - 1) / split.stages_per_split;  // none empty
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(feature_tiles),
                  static_cast<unsigned>(split.splits));
  return with_float_type(p.dtype, [&](auto tag) -> Status {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, float>) {
      return Status::kUnsupported;
    } else {
      return with_weight_reading<T>(p, [&](auto reading) -> Status {
        using W = decltype(reading);
        if constexpr (!W::kWidens) {
          return Status::kUnsupported;
        } else {
          if (p.silu_and_mul_output) {
            launch_kernel(linear_tiles_kernel<T, W, true>, grid, kThreads, 0, stream, p, split);
          } else {
            launch_kernel(linear_tiles_kernel<T, W, false>, grid, kThreads, 0, stream, p, split);
          }
          return launch_status();
        }
      });
    }
  });
}

}  // namespace kvserve::gpu

#endif  // KVSERVE_GPU_MMA
