// The row-wise layer kernels for avx2 (compiled with that ISA's flags only).
#include "rowwise.h"
#include "vec_avx2.h"

namespace kvserve::cpu {

RowwiseKernels rowwise_avx2(DType dtype) { return rowwise_for<Avx2>(dtype); }

}  // namespace kvserve::cpu
