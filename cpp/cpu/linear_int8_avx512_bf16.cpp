// The bfloat16 linear over an int8 weight (LinearParams::weight_dtype kInt8) with AVX512-BF16 dot
// products (compiled with -mavx512bf16).
//
// A code q in [-64, 63] (llama.cpp's Q6_K blocks hold 6-bit codes less 32) becomes the bfloat16
// 192 + q by pairing u = q + 64 (7 bits) with the byte 0x43, as linear_uint4_avx512_bf16.cpp pairs
// its nibbles, so that vdpbf16ps multiplies 32 codes by 32 inputs in one instruction, exactly. The
// 192 comes back out through the input: each product's lanes start from -192 times the sum of the
// inputs they multiply (made once a call), so a group's lanes sum to dot(q, x), then take its scale.
// 64 bytes of codes hold four groups, one per 128-bit lane, which widen with two in-lane unpacks;
// the input is reordered to match once a call, zero-padded to whole 64-element chunks so that a last
// 1-3 groups take the same path with masked loads. A chunk with a code outside [-64, 63] (llama.cpp's
// Q8_0 blocks, 8-bit GPTQ) widens each group to float32 instead (grouped_linear.h's path), against
// the input in float32: one test a chunk picks the path.
//
// Up to kDirectRows input rows read the codes so; more take the lanes kernel
// (linear_lanes_avx512_bf16.cpp), its weight rows widened to bfloat16 once a call.
#include <vector>

#include "layer_kernels.h"
#include "vec_avx512.h"

namespace kvserve::cpu {
namespace {

constexpr int64_t kDirectRows = 8;
constexpr int64_t kChunkGroups = 4;  // groups a 64-byte load of codes holds
constexpr int64_t kChunk = kChunkGroups * kInt8GroupSize;
constexpr float kBias = 192.f;  // a narrow code q reads as the bfloat16 kBias + q

// The input prepared once a call, each row zero-padded to whole chunks:
//   pairs  bfloat16 [chunks][64]: of each chunk's four groups, elements 0-7 (a 128-bit lane each),
//          then elements 8-15, the lanes of the unpacked codes
//   bias   float32 [chunks][16]: -kBias times the sum of the four inputs each product lane multiplies
//   wide   float32 [chunks * 64]: the row in element order, for the chunks of wider codes
struct Prepared {
  int64_t padded = 0;
  std::vector<BFloat16> pairs;  // [num_rows][padded]
  std::vector<float> bias;      // [num_rows][padded / 4]
  std::vector<float> wide;      // [num_rows][padded]
};

void prepare(const LinearParams& p, Prepared& prepared) {
  const int64_t k_total = p.in_features, groups = k_total / kInt8GroupSize;
  prepared.padded = (k_total + kChunk - 1) / kChunk * kChunk;
  const auto size = static_cast<size_t>(p.num_rows * prepared.padded);
  prepared.pairs.assign(size, BFloat16{0});
  prepared.bias.assign(size / 4, 0.f);
  prepared.wide.assign(size, 0.f);
  for (int64_t m = 0; m < p.num_rows; ++m) {
    const BFloat16* x = static_cast<const BFloat16*>(p.input) + m * p.input_stride;
    BFloat16* pairs = prepared.pairs.data() + m * prepared.padded;
    float* bias = prepared.bias.data() + m * prepared.padded / 4;
    float* wide = prepared.wide.data() + m * prepared.padded;
    for (int64_t k = 0; k < k_total; ++k) wide[k] = to_float(x[k]);
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t chunk = g / kChunkGroups, lane = g % kChunkGroups;
      for (int half = 0; half < 2; ++half) {
        for (int i = 0; i < 8; ++i) {
          pairs[chunk * kChunk + half * 32 + lane * 8 + i] = x[g * kInt8GroupSize + half * 8 + i];
        }
      }
      // Product lane j of this group's 128-bit lane multiplies elements 2j, 2j + 1, 8 + 2j, 9 + 2j.
      for (int j = 0; j < 4; ++j) {
        const float* e = wide + g * kInt8GroupSize;
        bias[chunk * 16 + lane * 4 + j] = -kBias * (e[2 * j] + e[2 * j + 1] + e[8 + 2 * j] + e[9 + 2 * j]);
      }
    }
  }
}

// The prepared arrays' starts, read once a call: GCC looks the thread_local itself up again (a call)
// for every weight row that reads it.
struct Inputs {
  const BFloat16* pairs;
  const float *bias, *wide;
  int64_t padded;
};

// M input rows from m0 against weight row n.
template <int M>
void tile(const LinearParams& p, const Inputs& in, int64_t m0, int64_t n) {
  const int64_t groups = p.in_features / kInt8GroupSize, padded = in.padded;
  const uint8_t* codes = static_cast<const uint8_t*>(p.weight) + n * p.weight_stride;
  const float* scale = p.weight_scale + n * groups;
  const BFloat16* pairs[M];
  const float *bias[M], *wide[M];
  for (int m = 0; m < M; ++m) {
    pairs[m] = in.pairs + (m0 + m) * padded;
    bias[m] = in.bias + (m0 + m) * padded / 4;
    wide[m] = in.wide + (m0 + m) * padded;
  }
  __m512 total[M];
  for (int m = 0; m < M; ++m) total[m] = _mm512_setzero_ps();
  prefetch_ahead(codes, scale, nullptr, p.weight_stride, groups);
  const __m512i to_narrow = _mm512_set1_epi8(64), top_bit = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i exponent_of_128 = _mm512_set1_epi8(0x43);
  const __m512i lanes_by_group = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  for (int64_t g = 0; g < groups; g += kChunkGroups) {
    const int64_t chunk = g / kChunkGroups, left = groups - g < kChunkGroups ? groups - g : kChunkGroups;
    const __mmask64 bytes_kept = left == kChunkGroups ? ~__mmask64{0} : (__mmask64{1} << (16 * left)) - 1;
    const __m512i q = _mm512_maskz_loadu_epi8(bytes_kept, codes + g * kInt8GroupSize);
    const __m512i u = _mm512_add_epi8(q, to_narrow);
    if (_mm512_test_epi8_mask(u, top_bit) == 0) {  // every code in [-64, 63]: u in [0, 127]
      const __m512bh low = (__m512bh)_mm512_unpacklo_epi8(u, exponent_of_128);
      const __m512bh high = (__m512bh)_mm512_unpackhi_epi8(u, exponent_of_128);
      const __mmask8 groups_kept = static_cast<__mmask8>((1u << left) - 1);
      const __m512 scales =
          _mm512_permutexvar_ps(lanes_by_group, _mm512_castps128_ps512(_mm_maskz_loadu_ps(groups_kept, scale + g)));
      for (int m = 0; m < M; ++m) {
        __m512 sums = _mm512_loadu_ps(bias[m] + chunk * 16);
        sums = _mm512_dpbf16_ps(sums, low, (__m512bh)_mm512_loadu_si512(pairs[m] + chunk * kChunk));
        sums = _mm512_dpbf16_ps(sums, high, (__m512bh)_mm512_loadu_si512(pairs[m] + chunk * kChunk + 32));
        total[m] = _mm512_fmadd_ps(sums, scales, total[m]);
      }
    } else {  // each group's codes from their 128-bit lane of q, times the group's scale, as float32
      const __m128i lanes[kChunkGroups] = {_mm512_extracti32x4_epi32(q, 0), _mm512_extracti32x4_epi32(q, 1),
                                           _mm512_extracti32x4_epi32(q, 2), _mm512_extracti32x4_epi32(q, 3)};
      for (int64_t i = 0; i < left; ++i) {
        const __m512 values = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lanes[i]));
        const __m512 w = _mm512_mul_ps(values, _mm512_set1_ps(scale[g + i]));
        for (int m = 0; m < M; ++m) {
          total[m] = _mm512_fmadd_ps(_mm512_loadu_ps(wide[m] + (g + i) * kInt8GroupSize), w, total[m]);
        }
      }
    }
  }
  for (int m = 0; m < M; ++m) store_sum<BFloat16>(p, m0 + m, n, _mm512_reduce_add_ps(total[m]));
}

}  // namespace

void linear_avx512_bf16_int8(const LinearParams& p, int64_t n_begin, int64_t n_end) {
  if (p.num_rows > kDirectRows) return linear_avx512_bf16_int8_rows(p, n_begin, n_end);
  thread_local Prepared prepared;
  prepare(p, prepared);
  const Inputs in{prepared.pairs.data(), prepared.bias.data(), prepared.wide.data(), prepared.padded};
  for (int64_t n = n_begin; n < n_end; ++n) {
    each_row_chunk(0, p.num_rows, [&](int64_t m0, auto m) { tile<decltype(m)::value>(p, in, m0, n); });
  }
}

}  // namespace kvserve::cpu
