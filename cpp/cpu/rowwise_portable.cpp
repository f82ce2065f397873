// The row-wise layer kernels for portable (compiled with that ISA's flags only).
#include "rowwise.h"
#include "vec_portable.h"

namespace kvserve::cpu {

RowwiseKernels rowwise_portable(DType dtype) { return rowwise_for<Portable>(dtype); }

}  // namespace kvserve::cpu
