#include "device_resources.h"

#if KVSERVE_GPU_MMA

#include <mutex>

namespace kvserve::gpu {

namespace {

std::mutex mutex;
DeviceInfo infos[kMaxDevices];
void* workspaces[kMaxDevices] = {};

bool current_device(int* device) {
  return cudaGetDevice(device) == cudaSuccess && *device >= 0 && *device < kMaxDevices;
}

}  // namespace

bool current_device_info(DeviceInfo* info) {
  int device = 0;
  if (!current_device(&device)) return false;
  std::lock_guard<std::mutex> lock(mutex);
  DeviceInfo& cached = infos[device];
  if (cached.multiprocessors == 0) {
    int sms = 0, major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
      return false;
    }
    cached = {device, sms, major * 10 + minor};
  }
  *info = cached;
  return true;
}

void* split_workspace(kvGpuStream_t stream) {
  int device = 0;
  if (!current_device(&device)) return nullptr;
  std::lock_guard<std::mutex> lock(mutex);
  if (workspaces[device] != nullptr) return workspaces[device];
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess || capture != cudaStreamCaptureStatusNone) {
    return nullptr;
  }
  if (cudaMalloc(&workspaces[device], kSplitWorkspaceBytes) != cudaSuccess) {
    workspaces[device] = nullptr;
    cudaGetLastError();  // an out-of-memory here only means: do not split
  }
  return workspaces[device];
}

}  // namespace kvserve::gpu

#endif  // KVSERVE_GPU_MMA
