// The attention kernel for AVX-512 F/BW/VL/DQ (compiled with those flags only).
#include "attention_tile.h"
#include "vec_avx512.h"

namespace kvserve::cpu {

AttendFn attend_avx512(DType dtype, DType cache_dtype, int64_t head_dim) {
  if (head_dim % Avx512::kWidth != 0) return nullptr;
  return attend_for<Avx512, FloatScores<Avx512>>(dtype, cache_dtype);
}

}  // namespace kvserve::cpu
