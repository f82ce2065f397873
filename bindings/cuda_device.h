// The kernels launch on the calling thread's current CUDA device: this guard makes the arrays'
// device current for one call and restores the caller's afterwards, as torch's device guards do.
#pragma once

#include "kvserve/config.h"

#if KVSERVE_HAS_CUDA
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace kvserve::bind {

class CudaDeviceGuard {
 public:
  explicit CudaDeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = device;
    if (previous_ != device && cudaSetDevice(device) != cudaSuccess) {
      throw std::runtime_error("cannot make CUDA device " + std::to_string(device) + " current");
    }
  }
  ~CudaDeviceGuard() {
    int current = previous_;
    if (cudaGetDevice(&current) == cudaSuccess && current != previous_) cudaSetDevice(previous_);
  }
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace kvserve::bind

#endif  // KVSERVE_HAS_CUDA
