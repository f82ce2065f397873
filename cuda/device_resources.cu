#include "device_resources.h"

#if KVSERVE_GPU_MMA

#include <cstdlib>
#include <map>
#include <mutex>
#include <string_view>
#include <utility>

namespace kvserve::gpu {

namespace {

std::mutex mutex;
DeviceInfo infos[kMaxDevices];
SplitWorkspace workspaces[kMaxDevices];

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

bool split_workspace(kvGpuStream_t stream, SplitWorkspace* workspace) {
  int device = 0;
  if (!current_device(&device)) return false;
  std::lock_guard<std::mutex> lock(mutex);
  SplitWorkspace& cached = workspaces[device];
  if (cached.partials == nullptr) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess || capture != cudaStreamCaptureStatusNone) {
      return false;
    }
    constexpr size_t kArrivalBytes = kMaxSplitTiles * sizeof(int32_t);
    void* memory = nullptr;
    if (cudaMalloc(&memory, kSplitPartialBytes + kArrivalBytes) != cudaSuccess) {
      cudaGetLastError();  // an out-of-memory here only means: do not split
      return false;
    }
    auto* arrivals = reinterpret_cast<int32_t*>(static_cast<char*>(memory) + kSplitPartialBytes);
    if (cudaMemset(arrivals, 0, kArrivalBytes) != cudaSuccess) {
      cudaFree(memory);
      cudaGetLastError();
      return false;
    }
    cached = {static_cast<float*>(memory), arrivals};
  }
  *workspace = cached;
  return true;
}

DecodeWarps decode_warps() {
  const char* setting = std::getenv("KVSERVE_DECODE_WARPS");
  const std::string_view value = setting == nullptr ? "" : setting;
  return value == "2" ? DecodeWarps::kTwo : value == "auto" ? DecodeWarps::kAuto : DecodeWarps::kFour;
}

#if !defined(KVSERVE_GPU_EMULATOR)
bool launch_programmatically(const void* kernel) {
  static const bool enabled = [] {
    const char* setting = std::getenv("KVSERVE_PDL");
    return setting == nullptr || std::string_view(setting) != "0";
  }();
  DeviceInfo device;
  if (!enabled || !current_device_info(&device) || device.compute_capability < 90) return false;
  static std::map<std::pair<int, const void*>, int> ptx_versions;  // of the code each device runs
  std::lock_guard<std::mutex> lock(mutex);
  const auto [it, added] = ptx_versions.try_emplace({device.index, kernel}, 0);
  if (added) {
    cudaFuncAttributes attributes{};
    if (cudaFuncGetAttributes(&attributes, kernel) == cudaSuccess) {
      it->second = attributes.ptxVersion;
    } else {
      cudaGetLastError();  // unknown: launch it the plain way
    }
  }
  return it->second >= 90;
}
#endif

}  // namespace kvserve::gpu

#endif  // KVSERVE_GPU_MMA
