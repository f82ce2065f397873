// The warp-level instructions of the tensor-core attention kernel, as inline PTX (CUDA, sm_80+):
// 16- and 4-byte asynchronous copies into shared memory, ldmatrix, and the m16n8k16 mma with float32
// accumulators. Fragment layouts (lane = 4 * g + t):
//
//   A 16x16 (row-major): a0 = A[g][2t..2t+1]   a1 = A[g+8][2t..2t+1]   a2 = A[g][2t+8..]   a3 = A[g+8][2t+8..]
//   B 16x8  (k x n):     b0 = B[2t..2t+1][g]   b1 = B[2t+8..2t+9][g]
//   C 16x8  (float):     c0, c1 = C[g][2t..2t+1]   c2, c3 = C[g+8][2t..2t+1]
//
// Each 32-bit register holds two 16-bit elements, the lower index in the lower half.
#pragma once

#include "numeric.cuh"

#if KVSERVE_GPU_MMA && defined(KVSERVE_GPU_EMULATOR)
#include "tensor_core_emulated.h"
#elif KVSERVE_GPU_MMA

namespace kvserve::gpu {

__device__ inline uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// 16 bytes from global to shared memory without passing through registers; with `fill` false the
// destination is zero-filled and nothing is read.
__device__ inline void copy_async_16(void* shared, const void* global, bool fill) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(shared)), "l"(global),
               "r"(fill ? 16 : 0)
               : "memory");
}

// 4 bytes from global to shared memory (cp.async's only path for fewer than 16 bytes goes through
// L1); with `fill` false the destination is zero-filled and nothing is read.
__device__ inline void copy_async_4(void* shared, const void* global, bool fill) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(shared_address(shared)), "l"(global),
               "r"(fill ? 4 : 0)
               : "memory");
}

// An L2 eviction policy for data read once (a step's K/V, a projection's weights at decode): its
// lines are the first to go, so that streaming it does not push out what the step's other kernels
// read again and again from L2 (their code, the activations, the block table).
__device__ inline uint64_t evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}

// copy_async_16, its line kept in L2 as `policy` says (evict_first_policy).
__device__ inline void copy_async_16(void* shared, const void* global, bool fill, uint64_t policy) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(shared_address(shared)),
               "l"(global), "r"(fill ? 16 : 0), "l"(policy)
               : "memory");
}

// 4, 8 or 16 bytes of global memory (V: uint32_t, uint2 or uint4) read once, into registers: past
// L1, its line kept in L2 as `policy` says. Volatile, so that it stays after wait_for_prior_grid()
// (compat.cuh). kThroughL2: as load_through_l2 (ld.global.cg), so that a kernel may issue it before
// that wait for memory no kernel writes, such as its weights; else by the read-only path
// (ld.global.nc).
template <class V, bool kThroughL2 = false>
__device__ inline V load_once(const V* global, uint64_t policy) {
  static_assert(sizeof(V) == 4 || sizeof(V) == 8 || sizeof(V) == 16, "a 4-, 8- or 16-byte load");
  V v;
  if constexpr (sizeof(V) == 16 && kThroughL2) {
    asm volatile("ld.global.cg.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(global), "l"(policy));
  } else if constexpr (sizeof(V) == 16) {
    asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(global), "l"(policy));
  } else if constexpr (sizeof(V) == 8 && kThroughL2) {
    asm volatile("ld.global.cg.L2::cache_hint.v2.u32 {%0, %1}, [%2], %3;\n"
                 : "=r"(v.x), "=r"(v.y) : "l"(global), "l"(policy));
  } else if constexpr (sizeof(V) == 8) {
    asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v2.u32 {%0, %1}, [%2], %3;\n"
                 : "=r"(v.x), "=r"(v.y) : "l"(global), "l"(policy));
  } else if constexpr (kThroughL2) {
    asm volatile("ld.global.cg.L2::cache_hint.u32 %0, [%1], %2;\n" : "=r"(v) : "l"(global), "l"(policy));
  } else {
    asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.u32 %0, [%1], %2;\n"
                 : "=r"(v) : "l"(global), "l"(policy));
  }
  return v;
}

__device__ inline void copy_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most `kPending` committed groups are still in flight.
template <int kPending>
__device__ inline void copy_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Four 8x8 matrices of 16-bit elements; lanes 8i..8i+7 give the addresses of matrix i's rows, and
// register i receives matrix i in the A/B fragment layout (row g, columns 2t, 2t+1).
__device__ inline void load_matrix_x4(uint32_t (&r)[4], const void* shared_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(shared_row)));
}

// The same with each matrix transposed: register i holds (rows 2t, 2t+1; column g).
__device__ inline void load_matrix_x4_transposed(uint32_t (&r)[4], const void* shared_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(shared_row)));
}

// 2^x by the special-function unit alone, results below 2^-126 flushed to zero: exp2f's own
// handling of that range costs three more instructions per call, for weights that an online softmax
// (whose largest weight is 1) would drop anyway.
__device__ inline float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// c += a * b for one 16x8x16 tile.
template <class T>
__device__ inline void mma_16x8x16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ inline void mma_16x8x16<BFloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ inline void mma_16x8x16<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded to T (to nearest even) and packed into one register, lo in the lower half.
template <class T>
__device__ inline uint32_t pack_pair(float lo, float hi);

template <>
__device__ inline uint32_t pack_pair<BFloat16>(float lo, float hi) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&pair);
}

template <>
__device__ inline uint32_t pack_pair<__half>(float lo, float hi) {
  const __half2 pair = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&pair);
}

}  // namespace kvserve::gpu

#endif  // KVSERVE_GPU_MMA
