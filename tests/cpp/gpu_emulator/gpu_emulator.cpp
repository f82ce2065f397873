#include "gpu_emulator.h"

#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <vector>

namespace {

constexpr size_t kStackBytes = 64 * 1024;
constexpr int kWordsPerLane = 16;
constexpr size_t kDefaultSharedLimit = 48 * 1024;  // without cudaFuncSetAttribute
constexpr size_t kMaxSharedBytes = 227 * 1024;     // an H100's per-block opt-in limit

[[noreturn]] void fail(const char* message) {
  std::fprintf(stderr, "gpu emulator: %s\n", message);
  std::abort();
}

struct PendingCopy {
  unsigned char* dst;
  const unsigned char* src;
  size_t bytes;
  bool fill;
};

struct Fiber {
  ucontext_t context;
  char* stack = nullptr;
  kvserve::gpu::emulator::Index thread{};
  unsigned warp = 0, lane = 0;
  bool done = false;
  bool waited = false;  // past wait_for_prior_grid()
  std::vector<PendingCopy> open_group;
  std::vector<std::vector<PendingCopy>> committed;
};

struct Barrier {
  int arrived = 0;
  uint64_t generation = 0;
};

// The thread block being run (one at a time, on the calling OS thread).
struct Block {
  uint64_t progress = 0;  // barriers passed and threads exited: a scheduling round without any is a deadlock
  std::vector<Fiber> fibers;
  size_t current = 0;
  ucontext_t scheduler;
  int live = 0;
  std::vector<int> warp_live;
  Barrier block_barrier;
  std::vector<Barrier> warp_barriers;
  std::vector<uint32_t> exchange;
  std::vector<uint4> shared;
  void (*body)(void*) = nullptr;
  void* context = nullptr;
};

Block* block = nullptr;
kvserve::gpu::emulator::Index block_index_now{};
dim3 block_dim_now, grid_dim_now;
cudaError_t last_error = cudaSuccess;
std::map<const void*, int> shared_limits;
std::vector<kvserve::gpu::emulator::ByteRange> early_loads;  // of the launch running, or the last one

Fiber& current() { return block->fibers[block->current]; }

void yield() { swapcontext(&current().context, &block->scheduler); }

// Waits until every live participant arrived; threads that exited count as arrived.
void wait(Barrier& barrier, const int& live) {
  const uint64_t generation = barrier.generation;
  ++barrier.arrived;
  while (barrier.generation == generation) {
    if (barrier.arrived >= live) {
      barrier.arrived = 0;
      ++barrier.generation;
      ++block->progress;
      return;
    }
    yield();
  }
}

void land(std::vector<PendingCopy>& group) {
  for (const PendingCopy& copy : group) {
    if (copy.fill) {
      std::memcpy(copy.dst, copy.src, copy.bytes);
    } else {
      std::memset(copy.dst, 0, copy.bytes);
    }
  }
  group.clear();
}

void fiber_main() {
  Fiber& fiber = current();
  block->body(block->context);
  if (!fiber.open_group.empty() || !fiber.committed.empty()) fail("a thread exited with cp.async copies never waited for");
  if (!fiber.waited) fail("a thread exited before wait_for_prior_grid(): the kernel after could start too soon");
  fiber.done = true;
  ++block->progress;
  --block->live;
  --block->warp_live[fiber.warp];
}

void run_block(dim3 block_shape, size_t shared_bytes, void (*body)(void*), void* context,
               std::vector<std::unique_ptr<char[]>>& stacks) {
  const unsigned threads = block_shape.x * block_shape.y * block_shape.z;
  const unsigned warps = (threads + 31) / 32;
  Block b;
  b.fibers.resize(threads);
  b.live = static_cast<int>(threads);
  b.warp_live.assign(warps, 0);
  b.warp_barriers.resize(warps);
  b.exchange.assign(static_cast<size_t>(warps) * 32 * kWordsPerLane, 0);
  b.shared.resize((shared_bytes + 15) / 16);
  if (!b.shared.empty()) std::memset(b.shared.data(), 0xff, b.shared.size() * sizeof(uint4));
  b.body = body;
  b.context = context;
  block = &b;
  for (unsigned i = 0; i < threads; ++i) {
    Fiber& f = b.fibers[i];
    f.thread = {i % block_shape.x, (i / block_shape.x) % block_shape.y, i / (block_shape.x * block_shape.y)};
    f.warp = i / 32;
    f.lane = i % 32;
    ++b.warp_live[f.warp];
    f.stack = stacks[i].get();
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &b.scheduler;
    makecontext(&f.context, fiber_main, 0);
  }
  while (b.live > 0) {
    const uint64_t before = b.progress;
    for (size_t i = 0; i < b.fibers.size(); ++i) {
      if (b.fibers[i].done) continue;
      b.current = i;
      swapcontext(&b.scheduler, &b.fibers[i].context);
    }
    if (b.live > 0 && b.progress == before) fail("deadlock: the live threads wait at different barriers");
  }
  block = nullptr;
}

}  // namespace

__half __float2half_rn(float x) {
  const uint32_t u = __float_as_uint(x);
  const auto sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return {static_cast<uint16_t>(sign | 0x7e00u)};   // NaN
  if (magnitude >= 0x477ff000u) return {static_cast<uint16_t>(sign | 0x7c00u)};  // >= 65520: inf
  if (magnitude < 0x38800000u) {  // below 2^-14: a subnormal half, a multiple of 2^-24
    const float scaled = __uint_as_float(magnitude) * 16777216.f;
    return {static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(scaled)))};
  }
  const uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
  return {static_cast<uint16_t>(sign | ((rounded >> 13) - (112u << 10)))};
}

float __half2float(__half x) {
  const uint32_t sign = static_cast<uint32_t>(x.bits & 0x8000u) << 16;
  const uint32_t exponent = (x.bits >> 10) & 0x1fu, mantissa = x.bits & 0x3ffu;
  if (exponent == 0) {
    const float value = static_cast<float>(mantissa) / 16777216.f;
    return sign ? -value : value;
  }
  if (exponent == 31) return __uint_as_float(sign | 0x7f800000u | (mantissa << 13));
  return __uint_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

cudaError_t cudaGetLastError() {
  const cudaError_t error = last_error;
  last_error = cudaSuccess;
  return error;
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int) {
  switch (attribute) {
    case cudaDevAttrMultiProcessorCount: *value = 132; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
  }
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t, cudaStreamCaptureStatus* status) {
  *status = cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** pointer, size_t bytes) {
  *pointer = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  return *pointer != nullptr ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFree(void* pointer) {
  std::free(pointer);
  return cudaSuccess;
}

cudaError_t cudaMemset(void* pointer, int value, size_t bytes) {
  std::memset(pointer, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

namespace kvserve::gpu::emulator {

const Index& thread_index() { return current().thread; }
const Index& block_index() { return block_index_now; }
const dim3& block_dim() { return block_dim_now; }
const dim3& grid_dim() { return grid_dim_now; }
unsigned char* dynamic_shared_memory() { return reinterpret_cast<unsigned char*>(block->shared.data()); }

void sync_block() { wait(block->block_barrier, block->live); }
void sync_warp() { wait(block->warp_barriers[current().warp], block->warp_live[current().warp]); }

unsigned lane() { return current().lane; }

uint32_t* warp_exchange(unsigned lane) {
  return &block->exchange[(static_cast<size_t>(current().warp) * 32 + lane) * kWordsPerLane];
}

void async_copy(void* dst, const void* src, size_t bytes, bool fill) {
  // cp.async needs both addresses aligned to the copy's size (a GPU faults otherwise).
  if (reinterpret_cast<uintptr_t>(dst) % bytes != 0 || (fill && reinterpret_cast<uintptr_t>(src) % bytes != 0)) {
    fail("cp.async from or to an address not aligned to the copy's size");
  }
  current().open_group.push_back(
      {static_cast<unsigned char*>(dst), static_cast<const unsigned char*>(src), bytes, fill});
}

void async_commit() {
  Fiber& fiber = current();
  fiber.committed.push_back(std::move(fiber.open_group));
  fiber.open_group.clear();
}

void async_wait(int pending) {
  Fiber& fiber = current();
  while (static_cast<int>(fiber.committed.size()) > pending) {
    land(fiber.committed.front());
    fiber.committed.erase(fiber.committed.begin());
  }
}

void set_max_dynamic_shared(const void* kernel, int bytes) { shared_limits[kernel] = bytes; }

void wait_for_prior_grid() { current().waited = true; }

void note_load_through_l2(const void* at, size_t bytes) {
  if (current().waited) return;
  const auto* begin = static_cast<const unsigned char*>(at);
  early_loads.push_back({begin, begin + bytes});
}

const std::vector<ByteRange>& loads_before_wait() { return early_loads; }

void run_grid(const void* kernel, dim3 grid, dim3 block_shape, size_t shared_bytes, void (*body)(void*),
              void* context) {
  const unsigned threads = block_shape.x * block_shape.y * block_shape.z;
  const auto limit = shared_limits.count(kernel) ? static_cast<size_t>(shared_limits[kernel]) : kDefaultSharedLimit;
  if (threads == 0 || threads > 1024 || threads % 32 != 0 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu || shared_bytes > limit ||
      shared_bytes > kMaxSharedBytes) {
    last_error = cudaErrorInvalidValue;
    return;
  }
  grid_dim_now = grid;
  block_dim_now = block_shape;
  early_loads.clear();
  std::vector<std::unique_ptr<char[]>> stacks(threads);  // reused by every block
  for (auto& stack : stacks) stack.reset(new char[kStackBytes]);
  std::vector<Index> order;
  order.reserve(static_cast<size_t>(grid.x) * grid.y * grid.z);
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) order.push_back({x, y, z});
    }
  }
  static uint32_t launches = 0;
  std::shuffle(order.begin(), order.end(), std::mt19937(++launches));
  for (const Index& index : order) {
    block_index_now = index;
    run_block(block_shape, shared_bytes, body, context, stacks);
  }
}

}  // namespace kvserve::gpu::emulator
