// The attention kernel for AVX2 + FMA + F16C (compiled with those flags only).
#include "attention_tile.h"
#include "vec_avx2.h"

namespace kvserve::cpu {

AttendFn attend_avx2(DType dtype, DType cache_dtype, int64_t head_dim) {
  if (head_dim % Avx2::kWidth != 0) return nullptr;
  return attend_for<Avx2, FloatScores<Avx2>>(dtype, cache_dtype);
}

}  // namespace kvserve::cpu
