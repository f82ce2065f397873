// Status codes returned by every kvserve kernel.
//
// Kernels never throw: they may be called from embedders built without exceptions or from code that
// enqueues work on a device stream. Each caller turns a status into its own kind of error (the Python
// bindings raise ValueError for kInvalidArgument/kUnsupported and RuntimeError for kDeviceError).
#pragma once

#include <cstdint>

#include "kvserve/export.h"

namespace kvserve {

enum class Status : int32_t {
  kOk = 0,
  kInvalidArgument = 1,  // a size, id or pointer the kernel cannot accept
  kUnsupported = 2,      // no kernel for this dtype / head_dim / device combination
  kDeviceError = 3,      // the CUDA (or HIP) runtime reported an error
};

// A short constant description of `status`, e.g. "invalid argument".
KVSERVE_EXPORT const char* status_string(Status status);

// The library's version, "MAJOR.MINOR.PATCH".
KVSERVE_EXPORT const char* version();

}  // namespace kvserve
