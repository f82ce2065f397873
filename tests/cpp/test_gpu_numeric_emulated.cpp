// The GPU kernels' conversions of fp8 cache elements (cuda/numeric.cuh), run as the emulator
// compiles them (the arithmetic of GPUs before sm_89, which have no fp8 conversion instruction),
// against the CPU kernels' decoding (cpu/half.h) of every code.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/half.h"
#include "numeric.cuh"

namespace {

uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

// Both elements of every pair of codes, each at both places in the word, as float16 equal to the
// CPU's value of its code: bit for bit (signed zeros and subnormals too), or NaN for NaN.
template <class GpuCode, class CpuCode>
void expect_pairs_match_cpu() {
  for (uint32_t a = 0; a < 256; ++a) {
    for (uint32_t b = 0; b < 256; ++b) {
      const uint32_t other = (a * 37 + b * 11) & 0xffu;  // the word's other pair: must not leak in
      const uint32_t words[2] = {a | b << 8 | other << 16 | (other ^ 0x80u) << 24,
                                 other | (other ^ 0x80u) << 8 | a << 16 | b << 24};
      for (int j = 0; j < 2; ++j) {
        const uint32_t pair = kvserve::gpu::half_pair<GpuCode>(words[j], j);
        const uint32_t codes[2] = {a, b};
        for (int lane = 0; lane < 2; ++lane) {
          const float got = __half2float(kvserve::gpu::half_from_bits(static_cast<uint16_t>(pair >> (16 * lane))));
          const float want = kvserve::cpu::to_float(CpuCode{static_cast<uint8_t>(codes[lane])});
          if (std::isnan(want)) {
            ASSERT_TRUE(std::isnan(got)) << "code " << codes[lane];
          } else {
            ASSERT_EQ(bits_of(got), bits_of(want)) << "code " << codes[lane] << " lane " << lane << " pair " << j;
          }
        }
      }
    }
  }
}

TEST(EmulatedNumeric, E4M3PairsWidenExactly) {
  expect_pairs_match_cpu<kvserve::gpu::Float8E4M3, kvserve::cpu::Float8E4M3>();
}

TEST(EmulatedNumeric, E5M2PairsWidenExactly) {
  expect_pairs_match_cpu<kvserve::gpu::Float8E5M2, kvserve::cpu::Float8E5M2>();
}

}  // namespace
