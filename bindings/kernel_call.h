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

// The CPU kernel and, in a CUDA build, the CUDA kernel of one op: KVSERVE_KERNELS(rms_norm).
#if KVSERVE_HAS_CUDA
#define KVSERVE_KERNELS(op) op##_cpu, op##_cuda
#else
#define KVSERVE_KERNELS(op) op##_cpu, nullptr
#endif

// Runs an op on the device its arrays are on (`cuda` as on_one_device said). For ops whose metadata
// (slots, block ids, lengths) stays in device memory on CUDA, `cuda_check` checks what the host
// knows there (the layout; the kernel checks the values as it reads them) and `cpu_check` checks
// everything on the CPU.
template <class Params, class CpuCheck, class CudaCheck, class CudaKernel>
void call_kernel(bool cuda, Status (*cpu_kernel)(const Params&), [[maybe_unused]] CudaKernel cuda_kernel,
                 CpuCheck cpu_check, [[maybe_unused]] CudaCheck cuda_check, const Params& params,
                 [[maybe_unused]] int device, [[maybe_unused]] uintptr_t stream, const char* op) {
#if KVSERVE_HAS_CUDA
  if (cuda) return call_cuda_kernel(cuda_kernel, cuda_check, params, device, stream, op);
#endif
  (void)cuda;
  call_cpu_kernel(cpu_kernel, cpu_check, params, op);
}

// The same for ops with one check on both devices.
template <class Params, class Check, class CudaKernel>
void call_kernel(bool cuda, Status (*cpu_kernel)(const Params&), CudaKernel cuda_kernel, Check check,
                 const Params& params, int device, uintptr_t stream, const char* op) {
  call_kernel(cuda, cpu_kernel, cuda_kernel, check, check, params, device, stream, op);
}

}  // namespace kvserve::bind
