// Calling a kernel from a binding: without the GIL, on the arrays' CUDA device for a CUDA kernel,
// then turning its status into a Python error whose message comes from the kernel's params check.
#pragma once

#include <nanobind/nanobind.h>

#include <cstdint>

#include "array_check.h"
#include "cuda_device.h"

namespace kvserve::bind {

template <class Params, class Check>
void call_cpu_kernel(Status (*kernel)(const Params&), Check check, const Params& params, const char* op) {
  Status status;
  {
    nb::gil_scoped_release release;
    status = kernel(params);
  }
  raise_invalid(params, check, status, op);
}

#if KVSERVE_HAS_CUDA
// `stream` is a cudaStream_t as an integer (0: the default stream) of the arrays' device `device`.
template <class Params, class Check>
void call_cuda_kernel(Status (*kernel)(const Params&, void*), Check check, const Params& params, int device,
                      uintptr_t stream, const char* op) {
  const CudaDeviceGuard guard(device);
  Status status;
  {
    nb::gil_scoped_release release;
    status = kernel(params, reinterpret_cast<void*>(stream));
  }
  raise_invalid(params, check, status, op);
}
#endif

}  // namespace kvserve::bind
