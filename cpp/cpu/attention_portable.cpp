// The attention kernel in plain C++, for any CPU and any head_dim.
#include "attention_tile.h"
#include "vec_portable.h"

namespace kvserve::cpu {

AttendFn attend_portable(DType dtype, DType cache_dtype, int64_t) {
  return attend_for<Portable, FloatScores<Portable>>(dtype, cache_dtype);
}

}  // namespace kvserve::cpu
