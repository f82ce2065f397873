// The row-wise layer kernels for avx512 (compiled with that ISA's flags only).
#include "rowwise.h"
#include "vec_avx512.h"

namespace kvserve::cpu {

RowwiseKernels rowwise_avx512(DType dtype) { return rowwise_for<Avx512>(dtype); }

}  // namespace kvserve::cpu
