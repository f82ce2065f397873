// The layer kernels for avx2 (compiled with that ISA's flags only).
#include "vec_avx2.h"
#include "layer_kernels.h"

namespace kvserve::cpu {

LayerKernels layer_kernels_avx2(DType dtype) { return layer_kernels_for<Avx2>(dtype); }

}  // namespace kvserve::cpu
