// The bfloat16 linear over a uint4 weight (LinearParams::weight_dtype kUInt4) with AVX512-BF16 dot
// products (compiled with -mavx512bf16).
//
// A code q becomes the bfloat16 128 + q by pairing it, as the low byte of a 16-bit word, with 0x43
// (q in the low mantissa bits of 128's pattern, 0x4300), so that vdpbf16ps multiplies 32 codes by 32
// inputs in one instruction, exactly. Each group g of an output row then holds
// s_g * dot(128 + q, x) + o_g * sum(x), and the row's output is
//
//     sum_g s_g * dot_g(128 + q, x)  +  sum_g (o_g - 128 s_g) * xsum_g
//
// with xsum_g the group's input sum, computed once a call. Four groups (64 bytes, a group in each
// 128-bit lane) widen at a time without crossing lanes: their low and high nibbles masked out, then
// each interleaved with 0x43 bytes (vpunpck[lh]bw), four registers of 32 bfloat16 in which every
// 128-bit lane holds 8 elements of its own group. The input's elements are reordered to match once
// a call, so the 16 lanes of a product hold 4 partial sums of each group, scaled by that group's
// scale; a last 1-3 groups widen one at a time, in element order.
//
// Up to kDirectRows input rows read the codes so; more take the lanes kernel
// (linear_lanes_avx512_bf16.cpp), its weight rows widened to bfloat16 once a call.
#include <vector>

#include "layer_kernels.h"
#include "vec_avx512.h"

namespace kvserve::cpu {
namespace {

// Rows up to which the codes are read directly (9728 x 896, GFLOP/s: at 5-8 rows 248-304 against the
// lanes kernel's 112-179; at 9 rows 230 against 203, at 12 rows 248-254 against 266-274).
constexpr int64_t kDirectRows = 8;
constexpr int64_t kQuadGroups = 4;  // groups a 64-byte load of codes holds
constexpr int64_t kQuadElements = kQuadGroups * kUInt4GroupSize;

// The input prepared once a call: each row's elements in the order four groups' codes widen in
// (the 8-element eighths of a 128-element chunk taken eighth 0 of groups 0-3, then eighth 1, ...; a
// last 1-3 groups stay in element order), and each group's sum.
struct Prepared {
  std::vector<BFloat16> x;  // [num_rows][in_features]
  std::vector<float> sums;  // [num_rows][groups]
};

void prepare(const LinearParams& p, Prepared& prepared) {
  const int64_t k_total = p.in_features, groups = k_total / kUInt4GroupSize;
  prepared.x.resize(static_cast<size_t>(p.num_rows * k_total));
  prepared.sums.resize(static_cast<size_t>(p.num_rows * groups));
  for (int64_t m = 0; m < p.num_rows; ++m) {
    const BFloat16* x = static_cast<const BFloat16*>(p.input) + m * p.input_stride;
    BFloat16* out = prepared.x.data() + m * k_total;
    for (int64_t g = 0; g < groups; ++g) {
      prepared.sums[m * groups + g] = _mm512_reduce_add_ps(Avx512::add(
          Avx512::load(x + g * kUInt4GroupSize), Avx512::load(x + g * kUInt4GroupSize + kUInt4HalfGroup)));
    }
    int64_t k = 0;
    for (; k + kQuadElements <= k_total; k += kQuadElements) {
      for (int eighth = 0; eighth < 4; ++eighth) {
        for (int group = 0; group < kQuadGroups; ++group) {
          const BFloat16* from = x + k + group * kUInt4GroupSize + eighth * 8;
          _mm_storeu_si128(reinterpret_cast<__m128i*>(out + k + (eighth * kQuadGroups + group) * 8),
                           _mm_loadu_si128(reinterpret_cast<const __m128i*>(from)));
        }
      }
    }
    for (; k < k_total; ++k) out[k] = x[k];
  }
}

// The prepared arrays' starts, read once a call: GCC looks the thread_local itself up again (a call)
// for every weight row that reads it.
struct Inputs {
  const BFloat16* x;
  const float* sums;
};

// M input rows from m0 against weight row n.
template <int M>
void tile(const LinearParams& p, const Inputs& in, int64_t m0, int64_t n) {
  const int64_t k_total = p.in_features, groups = k_total / kUInt4GroupSize;
  const uint8_t* codes = static_cast<const uint8_t*>(p.weight) + n * p.weight_stride;
  const float* scale = p.weight_scale + n * groups;
  const float* offset = p.weight_offset + n * groups;
  const BFloat16* x[M];
  for (int m = 0; m < M; ++m) x[m] = in.x + (m0 + m) * k_total;
  __m512 total[M];
  for (int m = 0; m < M; ++m) total[m] = _mm512_setzero_ps();
  prefetch_ahead(codes, scale, offset, p.weight_stride, groups);
  const __m512i low_nibbles = _mm512_set1_epi8(15), exponent_of_128 = _mm512_set1_epi8(0x43);
  const __m512i lanes_by_group = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  int64_t g = 0;
  for (; g + kQuadGroups <= groups; g += kQuadGroups) {
    const __m512i bytes = _mm512_loadu_si512(codes + g * kUInt4HalfGroup);
    const __m512i low = _mm512_and_si512(bytes, low_nibbles);
    const __m512i high = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low_nibbles);
    // Elements 0-7, 8-15, 16-23 and 24-31 of each lane's group, as bfloat16 128 + q.
    const __m512bh eighths[4] = {(__m512bh)_mm512_unpacklo_epi8(low, exponent_of_128),
                                 (__m512bh)_mm512_unpackhi_epi8(low, exponent_of_128),
                                 (__m512bh)_mm512_unpacklo_epi8(high, exponent_of_128),
                                 (__m512bh)_mm512_unpackhi_epi8(high, exponent_of_128)};
    const __m512 scales = _mm512_permutexvar_ps(lanes_by_group, _mm512_castps128_ps512(_mm_loadu_ps(scale + g)));
    for (int m = 0; m < M; ++m) {
      const BFloat16* xk = x[m] + g * kUInt4GroupSize;
      __m512 sums = _mm512_setzero_ps();
      for (int e = 0; e < 4; ++e) sums = _mm512_dpbf16_ps(sums, eighths[e], (__m512bh)_mm512_loadu_si512(xk + 32 * e));
      total[m] = _mm512_fmadd_ps(sums, scales, total[m]);
    }
  }
  const __m512i low_nibble = _mm512_set1_epi16(15), bf16_of_128 = _mm512_set1_epi16(0x4300);
  for (; g < groups; ++g) {  // the last 1-3 groups: 16 bytes widened into one register, in element order
    const __m256i words =
        _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + g * kUInt4HalfGroup)));
    const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(words), _mm256_srli_epi16(words, 4), 1);
    const __m512bh values = (__m512bh)_mm512_ternarylogic_epi32(both, low_nibble, bf16_of_128, 0xEA);
    for (int m = 0; m < M; ++m) {
      const __m512 sums = _mm512_dpbf16_ps(_mm512_setzero_ps(), values,
                                           (__m512bh)_mm512_loadu_si512(x[m] + g * kUInt4GroupSize));
      total[m] = _mm512_fmadd_ps(sums, _mm512_set1_ps(scale[g]), total[m]);
    }
  }
  // sum_g (o_g - 128 s_g) * xsum_g, 16 groups a step.
  __m512 correction[M];
  for (int m = 0; m < M; ++m) correction[m] = _mm512_setzero_ps();
  for (int64_t h = 0; h < groups; h += 16) {
    const __mmask16 keep = groups - h >= 16 ? __mmask16(0xffff) : __mmask16((1u << (groups - h)) - 1);
    const __m512 weight = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(keep, scale + h), _mm512_set1_ps(-128.f),
                                          _mm512_maskz_loadu_ps(keep, offset + h));
    for (int m = 0; m < M; ++m) {
      correction[m] =
          _mm512_fmadd_ps(weight, _mm512_maskz_loadu_ps(keep, in.sums + (m0 + m) * groups + h),
                          correction[m]);
    }
  }
  for (int m = 0; m < M; ++m) {
    store_sum<BFloat16>(p, m0 + m, n, _mm512_reduce_add_ps(_mm512_add_ps(total[m], correction[m])));
  }
}

}  // namespace

void linear_avx512_bf16_uint4(const LinearParams& p, int64_t n_begin, int64_t n_end) {
  if (p.num_rows > kDirectRows) return linear_avx512_bf16_uint4_rows(p, n_begin, n_end);
  thread_local Prepared prepared;
  prepare(p, prepared);
  const Inputs in{prepared.x.data(), prepared.sums.data()};
  for (int64_t n = n_begin; n < n_end; ++n) {
    each_row_chunk(0, p.num_rows, [&](int64_t m0, auto m) { tile<decltype(m)::value>(p, in, m0, n); });
  }
}

}  // namespace kvserve::cpu
