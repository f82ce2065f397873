// A CPU stand-in for the parts of the CUDA runtime and of the thread and warp built-ins that
// kvserve's kernels use. With KVSERVE_GPU_EMULATOR defined, cuda/compat.cuh includes this header
// instead of CUDA's, cuda/*.cu compile as host C++, and the C++ tests run the kernels without a GPU.
//
// A launch runs its thread blocks one after another, in a shuffled order (a GPU promises no order
// either; seeded by the launch's number, so that a test run repeats exactly). The threads of a block are fibers (ucontext),
// switched only where a thread waits: __syncthreads and the warp collectives (shuffles, ldmatrix,
// mma; tensor_core_emulated.h), each of which waits for every live thread of the block or warp.
// cp.async copies are queued and land when the thread waits for their group, as on the GPU. Device
// memory is host memory, and dynamic shared memory starts filled with 0xff bytes (NaN in every
// float type), so that reading what no thread wrote shows. Launch limits are checked as CUDA checks
// them (block and grid sizes, dynamic shared memory above 48 KiB only after cudaFuncSetAttribute).
//
// It checks indexing, masking, pipelining bookkeeping and numerics; it says nothing about speed and
// finds only the races that the fixed switch points expose.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(8) float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// IEEE binary16, converted with round to nearest even.
struct __half {
  uint16_t bits;
};
__half __float2half_rn(float x);
float __half2float(__half x);

inline float __uint_as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t __float_as_uint(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
// Blocks run one at a time: a plain add is atomic, and every write is visible to the next block.
inline int atomicAdd(int* address, int value) {
  const int old = *address;
  *address = old + value;
  return old;
}
inline void __threadfence() {}
inline float __fmul_rn(float a, float b) { return a * b; }
// Byte i of the result: byte (s >> 4i) & 7 of y:x (x's bytes 0-3, y's 4-7).
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t bytes = static_cast<uint64_t>(y) << 32 | x;
  unsigned result = 0;
  for (int i = 0; i < 4; ++i) result |= static_cast<unsigned>((bytes >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
  return result;
}

// ---- the runtime API subset --------------------------------------------------------------------

struct EmulatedStream;
using cudaStream_t = EmulatedStream*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2 };
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount,
  cudaDevAttrComputeCapabilityMajor,
  cudaDevAttrComputeCapabilityMinor
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
enum cudaStreamCaptureStatus { cudaStreamCaptureStatusNone, cudaStreamCaptureStatusActive };
enum cudaMemcpyKind { cudaMemcpyDeviceToDevice };

cudaError_t cudaGetLastError();
cudaError_t cudaGetDevice(int* device);
// An H100 as the launchers see it: 132 multiprocessors, compute capability 9.0.
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device);
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status);
cudaError_t cudaMalloc(void** pointer, size_t bytes);
cudaError_t cudaFree(void* pointer);
cudaError_t cudaMemset(void* pointer, int value, size_t bytes);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream);

namespace kvserve::gpu::emulator {

struct Index {
  unsigned x, y, z;
};

const Index& thread_index();
const Index& block_index();
const dim3& block_dim();
const dim3& grid_dim();  // of the launch running, or of the last one (tests read it)
unsigned char* dynamic_shared_memory();

// Barriers: every live thread of the block, or of the calling thread's warp.
void sync_block();
void sync_warp();

// The calling thread's lane (0..31) and its warp's exchange area: 16 words per lane, for collectives
// (each lane writes its own words, sync_warp, reads any lane's, sync_warp).
unsigned lane();
uint32_t* warp_exchange(unsigned lane);

// cp.async: a copy of 4, 8 or 16 bytes (zero-fill without `fill`) queued in the thread's open group;
// commit closes the group; wait leaves at most `pending` committed groups queued, landing the older ones.
void async_copy(void* dst, const void* src, size_t bytes, bool fill);
void async_commit();
void async_wait(int pending);

void set_max_dynamic_shared(const void* kernel, int bytes);

// Programmatic dependent launch (cuda/compat.cuh). wait_for_prior_grid() marks the calling thread as
// past its wait, and a thread that exits before it fails the run. Loads through L2 (the only reads a
// kernel makes before its wait) are noted while the thread has not waited: a test checks that they
// lie in memory the kernel before cannot write (weights, the step's metadata).
struct ByteRange {
  const unsigned char* begin;
  const unsigned char* end;
};
void wait_for_prior_grid();
void note_load_through_l2(const void* at, size_t bytes);
// The bytes the last launch's threads loaded before their wait.
const std::vector<ByteRange>& loads_before_wait();

// Runs body(context) as every thread of every block of the grid; sets the last error and runs
// nothing when the launch breaks a CUDA limit.
void run_grid(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes, void (*body)(void*), void* context);

template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, const Args&... args) {
  auto call = [&] { kernel(args...); };
  run_grid(reinterpret_cast<const void*>(kernel), grid, block, shared_bytes,
           [](void* context) { (*static_cast<decltype(call)*>(context))(); }, &call);
}

}  // namespace kvserve::gpu::emulator

// An H100's limits a multiprocessor: 2048 threads, 32 blocks, and 228 KB of shared memory, of which a
// block takes 1 KB more than it asks (registers are not counted).
template <class Kernel>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel*, int block_size, size_t shared_bytes) {
  const auto by_shared = static_cast<int>(228 * 1024 / (shared_bytes + 1024));
  *blocks = std::min({2048 / block_size, 32, by_shared});
  return cudaSuccess;
}

template <class Kernel>
cudaError_t cudaFuncSetAttribute(Kernel* kernel, cudaFuncAttribute, int value) {
  kvserve::gpu::emulator::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value);
  return cudaSuccess;
}

#define threadIdx (::kvserve::gpu::emulator::thread_index())
#define blockIdx (::kvserve::gpu::emulator::block_index())
#define blockDim (::kvserve::gpu::emulator::block_dim())
#define gridDim (::kvserve::gpu::emulator::grid_dim())
#define __syncthreads() ::kvserve::gpu::emulator::sync_block()

inline float __shfl_xor_sync(unsigned, float value, int lane_mask) {
  namespace emu = kvserve::gpu::emulator;
  emu::warp_exchange(emu::lane())[0] = __float_as_uint(value);
  emu::sync_warp();
  const float other = __uint_as_float(emu::warp_exchange(emu::lane() ^ static_cast<unsigned>(lane_mask))[0]);
  emu::sync_warp();
  return other;
}

inline float __shfl_sync(unsigned, float value, int src_lane) {
  namespace emu = kvserve::gpu::emulator;
  emu::warp_exchange(emu::lane())[0] = __float_as_uint(value);
  emu::sync_warp();
  const float other = __uint_as_float(emu::warp_exchange(static_cast<unsigned>(src_lane) % 32u)[0]);
  emu::sync_warp();
  return other;
}
