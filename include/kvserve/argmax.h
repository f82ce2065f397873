// argmax: the index of each row's largest value (greedy sampling straight from the logits).
//
//   input: [num_rows, num_cols]   rows may be strided, last dimension contiguous
//   out:   [num_rows] int32
//
// The first index wins a tie (as torch.argmax). NaN entries are ignored; a row without a number
// gives 0. Strides are in elements.
#pragma once

#include <cstdint>
#include <string>

#include "kvserve/config.h"
#include "kvserve/dtype.h"
#include "kvserve/export.h"
#include "kvserve/status.h"

namespace kvserve {

struct ArgmaxParams {
  int32_t* out = nullptr;
  const void* input = nullptr;
  int64_t input_stride = 0;
  int64_t num_rows = 0, num_cols = 0;
  DType dtype = DType::kFloat32;
};

// kOk, or kInvalidArgument with the reason in `why` (when not null).
KVSERVE_EXPORT Status check_argmax(const ArgmaxParams& params, std::string* why);

KVSERVE_EXPORT Status argmax_cpu(const ArgmaxParams& params);

#if KVSERVE_HAS_CUDA
// One block per row; `stream` is a cudaStream_t (null: the default stream).
KVSERVE_EXPORT Status argmax_cuda(const ArgmaxParams& params, void* stream);
#endif

}  // namespace kvserve
