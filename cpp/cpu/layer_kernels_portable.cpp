// The layer kernels for portable (compiled with that ISA's flags only).
#include "vec_portable.h"
#include "layer_kernels.h"

namespace kvserve::cpu {

LayerKernels layer_kernels_portable(DType dtype) { return layer_kernels_for<Portable>(dtype); }

}  // namespace kvserve::cpu
