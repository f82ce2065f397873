// The layer kernels for avx512 (compiled with that ISA's flags only).
#include "vec_avx512.h"
#include "layer_kernels.h"

namespace kvserve::cpu {

LayerKernels layer_kernels_avx512(DType dtype) { return layer_kernels_for<Avx512>(dtype); }

}  // namespace kvserve::cpu
