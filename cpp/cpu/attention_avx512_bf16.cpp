// bfloat16 attention with AVX512-BF16 dot products for the scores (compiled with -mavx512bf16).
//
// vdpbf16ps multiplies pairs of bfloat16 and accumulates in float32, so keys need no conversion:
// packed as 32-bit pairs (dims 2u, 2u+1) and transposed like float keys, a 16-key chunk costs half
// the shuffles and half the FMAs of the float path. Products of bfloat16 are exact in float32.
#include <cstring>

#include "attention_tile.h"
#include "vec_avx512.h"

namespace kvserve::cpu {
namespace {

struct Bf16DotScores {
  using Unit = uint32_t;  // two bfloat16 of adjacent dims
  static constexpr int64_t kDimsPerUnit = 2;

  static void pack_query(Unit* dst, const BFloat16* query, int64_t head_dim) {
    std::memcpy(dst, query, head_dim * sizeof(BFloat16));
  }
  static void pack_keys(Unit* dst, const BFloat16* const keys[kChunk], int64_t head_dim) {
    for (int64_t u0 = 0; u0 < head_dim / 2; u0 += 16) {
      __m512 tile[16];
      for (int c = 0; c < 16; ++c) {
        tile[c] = keys[c] ? _mm512_loadu_ps(reinterpret_cast<const float*>(keys[c]) + u0) : _mm512_setzero_ps();
      }
      Avx512::transpose(tile);
      for (int j = 0; j < 16; ++j) _mm512_storeu_ps(reinterpret_cast<float*>(dst + (u0 + j) * kChunk), tile[j]);
    }
  }
  static __m512 load_keys(const Unit* k) { return _mm512_loadu_ps(reinterpret_cast<const float*>(k)); }
  static __m512 fma(__m512 acc, __m512 keys, const Unit* q) {
    return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_castps_si512(keys), (__m512bh)_mm512_set1_epi32(static_cast<int>(*q)));
  }
};

}  // namespace

AttendFn attend_avx512_bf16(DType dtype, DType cache_dtype, int64_t head_dim) {
  if (dtype != DType::kBFloat16 || cache_dtype != DType::kBFloat16 || head_dim % 32 != 0) return nullptr;
  return &AttentionTile<Avx512, BFloat16, BFloat16, Bf16DotScores>::run;
}

}  // namespace kvserve::cpu
