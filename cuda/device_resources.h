// What the CUDA launchers keep per device: its properties, read once, and one scratch buffer for
// the split partials (paged attention's split keys, the tiled products' split in_features) and their
// arrival counters (CUDA only: the HIP build has no split path). One call uses it at a time: the
// kernels that split run in one stream a device (the engine's), each leaving the counters at zero.
#pragma once

#include <cstddef>
#include <cstdint>

#include "attention_split.cuh"
#include "compat.cuh"

#if KVSERVE_GPU_MMA

namespace kvserve::gpu {

constexpr int kMaxDevices = 64;

struct DeviceInfo {
  int index = 0;
  int multiprocessors = 0;
  int compute_capability = 0;  // major * 10 + minor: 80 for the A100, 90 for the H100
};

// The current device's properties; false when the CUDA runtime cannot tell (no device, no driver).
bool current_device_info(DeviceInfo* info);

// The decode tile paged attention takes at head_dim 128 (paged_attention_launch.cuh), as the
// environment's KVSERVE_DECODE_WARPS says, read at each call: "4" (or unset, or anything else), the
// four-warp tile; "2", the two-warp tile; "auto", the two-warp tile where a step's blocks outnumber
// the four-warp tile's places on the device (a second wave), the four-warp tile otherwise.
enum class DecodeWarps { kFour, kTwo, kAuto };
DecodeWarps decode_warps();

// Room for the partials of one call (paged attention's SplitPartials::out and stats, or a tiled
// product's sums).
constexpr size_t kSplitPartialBytes = size_t{16} << 20;

struct SplitWorkspace {
  float* partials = nullptr;    // kSplitPartialBytes
  int32_t* arrivals = nullptr;  // kMaxSplitTiles counters, zero between launches
};

// The current device's split workspace, allocated (and its counters zeroed) on first use; false when
// it cannot be allocated now: out of memory, or `stream` is being captured into a graph, where an
// allocation is not allowed (run the same call once before capturing).
bool split_workspace(kvGpuStream_t stream, SplitWorkspace* workspace);

}  // namespace kvserve::gpu

#endif  // KVSERVE_GPU_MMA
