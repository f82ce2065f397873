// Which vector instruction set the CPU kernels run with.
//
// Chosen once per process from what the CPU supports. The environment variable KVSERVE_CPU_ISA
// (portable, avx2, avx512, avx512_bf16) caps the choice, so that every path can be tested and
// compared on one machine; a value the CPU cannot run falls back to the best one it can.
#pragma once

#include <cstdint>

#include "kvserve/export.h"

namespace kvserve {

enum class CpuIsa : int32_t {
  kPortable = 0,    // plain C++; any CPU
  kAvx2 = 1,        // AVX2 + FMA + F16C
  kAvx512 = 2,      // AVX-512 F/BW/VL/DQ
  kAvx512Bf16 = 3,  // AVX-512 + BF16 dot products (bfloat16 scores)
};

KVSERVE_EXPORT CpuIsa cpu_isa();
// "portable", "avx2", "avx512" or "avx512_bf16".
KVSERVE_EXPORT const char* cpu_isa_name(CpuIsa isa);

}  // namespace kvserve
