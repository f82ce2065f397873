// The tensor-core instructions of cuda/tensor_core.cuh, emulated as warp collectives with the
// fragment layouts of the PTX ISA (lane = 4 * g + t):
//
//   ldmatrix x4:   register i of lane l = row l / 4, columns 2 (l % 4), +1 of matrix i, whose row r
//                  starts at the address given by lane 8 i + r (.trans: rows 2 (l % 4), +1, column l / 4)
//   mma m16n8k16:  a0 = A[g][2t..], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..];
//                  b0 = B[2t..][g], b1 = B[2t+8..][g]; c0, c1 = C[g][2t..], c2, c3 = C[g+8][2t..]
#pragma once

#include <cmath>
#include <cstring>

namespace kvserve::gpu {

inline void copy_async_16(void* shared, const void* global, bool fill) {
  emulator::async_copy(shared, global, 16, fill);
}
inline void copy_async_4(void* shared, const void* global, bool fill) { emulator::async_copy(shared, global, 4, fill); }
// L2 eviction policies only steer a cache the emulator does not have.
inline uint64_t evict_first_policy() { return 0; }
inline void copy_async_16(void* shared, const void* global, bool fill, uint64_t) { copy_async_16(shared, global, fill); }
template <class V, bool kThroughL2 = false>
inline V load_once(const V* global, uint64_t) {
  if constexpr (kThroughL2) emulator::note_load_through_l2(global, sizeof(V));
  V v;
  std::memcpy(&v, global, sizeof v);
  return v;
}
inline void copy_async_commit() { emulator::async_commit(); }
template <int kPending>
inline void copy_async_wait() {
  emulator::async_wait(kPending);
}

// ex2.approx.ftz: results below 2^-126 (normal floats' least) flush to zero.
inline float fast_exp2(float x) {
  const float y = std::exp2(x);
  return y < 1.17549435e-38f ? 0.f : y;
}

namespace emulated {

inline void post_pointer(const void* pointer) {
  uint32_t* slot = emulator::warp_exchange(emulator::lane());
  std::memcpy(slot, &pointer, sizeof pointer);
}

inline const uint16_t* posted_row(unsigned lane) {
  const void* pointer;
  std::memcpy(&pointer, emulator::warp_exchange(lane), sizeof pointer);
  return static_cast<const uint16_t*>(pointer);
}

inline uint32_t pack(uint16_t lo, uint16_t hi) { return lo | (static_cast<uint32_t>(hi) << 16); }

template <class T>
float element(uint16_t bits) {
  return to_float(T{bits});
}

}  // namespace emulated

inline void load_matrix_x4(uint32_t (&r)[4], const void* shared_row) {
  const unsigned l = emulator::lane();
  emulated::post_pointer(shared_row);
  emulator::sync_warp();
  for (unsigned i = 0; i < 4; ++i) {
    const uint16_t* row = emulated::posted_row(8 * i + l / 4);
    r[i] = emulated::pack(row[2 * (l % 4)], row[2 * (l % 4) + 1]);
  }
  emulator::sync_warp();
}

inline void load_matrix_x4_transposed(uint32_t (&r)[4], const void* shared_row) {
  const unsigned l = emulator::lane();
  emulated::post_pointer(shared_row);
  emulator::sync_warp();
  for (unsigned i = 0; i < 4; ++i) {
    r[i] = emulated::pack(emulated::posted_row(8 * i + 2 * (l % 4))[l / 4],
                          emulated::posted_row(8 * i + 2 * (l % 4) + 1)[l / 4]);
  }
  emulator::sync_warp();
}

template <class T>
void mma_16x8x16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const unsigned l = emulator::lane();
  uint32_t* mine = emulator::warp_exchange(l);
  for (int i = 0; i < 4; ++i) mine[i] = a[i];
  mine[4] = b0;
  mine[5] = b1;
  emulator::sync_warp();
  float A[16][16], B[16][8];
  for (unsigned lane = 0; lane < 32; ++lane) {
    const uint32_t* f = emulator::warp_exchange(lane);
    const unsigned g = lane / 4, t = lane % 4;
    for (unsigned half = 0; half < 2; ++half) {
      const auto lo_hi = [&](uint32_t word) { return static_cast<uint16_t>(half ? word >> 16 : word & 0xffffu); };
      A[g][2 * t + half] = emulated::element<T>(lo_hi(f[0]));
      A[g + 8][2 * t + half] = emulated::element<T>(lo_hi(f[1]));
      A[g][2 * t + 8 + half] = emulated::element<T>(lo_hi(f[2]));
      A[g + 8][2 * t + 8 + half] = emulated::element<T>(lo_hi(f[3]));
      B[2 * t + half][g] = emulated::element<T>(lo_hi(f[4]));
      B[2 * t + 8 + half][g] = emulated::element<T>(lo_hi(f[5]));
    }
  }
  const unsigned g = l / 4, t = l % 4;
  for (int e = 0; e < 4; ++e) {
    const unsigned row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
    float sum = c[e];
    for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][col];
    c[e] = sum;
  }
  emulator::sync_warp();
}

template <class T>
uint32_t pack_pair(float lo, float hi) {
  return emulated::pack(from_float<T>(lo).bits, from_float<T>(hi).bits);
}

}  // namespace kvserve::gpu
