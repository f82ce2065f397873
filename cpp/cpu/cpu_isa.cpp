#include "kvserve/cpu_isa.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

namespace kvserve {

namespace {

CpuIsa detect() {
#if defined(__x86_64__) && defined(KVSERVE_CPU_X86_KERNELS)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (avx512 && __builtin_cpu_supports("avx512bf16")) return CpuIsa::kAvx512Bf16;
  if (avx512) return CpuIsa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return CpuIsa::kAvx2;
  }
#endif
  return CpuIsa::kPortable;
}

CpuIsa select() {
  CpuIsa best = detect();
  const char* cap = std::getenv("KVSERVE_CPU_ISA");
  if (cap == nullptr || *cap == '\0') return best;
  for (CpuIsa isa : {CpuIsa::kPortable, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16}) {
    if (std::strcmp(cap, cpu_isa_name(isa)) == 0) return isa < best ? isa : best;
  }
  // A library cannot raise here; a typo must still not pass unnoticed.
  std::fprintf(stderr, "kvserve: ignoring KVSERVE_CPU_ISA=%s (expected portable, avx2, avx512 or avx512_bf16)\n", cap);
  return best;
}

}  // namespace

CpuIsa cpu_isa() {
  static const CpuIsa isa = select();
  return isa;
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kPortable: return "portable";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx512Bf16: return "avx512_bf16";
  }
  return "unknown";
}

}  // namespace kvserve
