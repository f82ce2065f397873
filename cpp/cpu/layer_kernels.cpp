// The entry points of the CPU layer kernels (rms_norm, silu_and_mul, argmax, rotary_embedding,
// linear): validate, pick the ISA's kernel, and split the rows (for linear: the output features)
// over the OpenMP team of the calling thread (torch's, see cpp/CMakeLists.txt) when the call is
// large enough to pay for waking it.
#include <omp.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "kvserve/cpu_isa.h"
#include "layer_kernels.h"

namespace kvserve {

namespace {

using namespace cpu;

// Elements below which waking the thread team costs more than it saves (a decode step of a small
// model normalizes a few thousand elements per call).
constexpr int64_t kSerialElements = 1 << 15;

LayerKernels kernels_for(DType dtype) {
  switch (cpu_isa()) {
#if defined(KVSERVE_CPU_X86_KERNELS)
    case CpuIsa::kAvx512:
    case CpuIsa::kAvx512Bf16: return layer_kernels_avx512(dtype);
    case CpuIsa::kAvx2: return layer_kernels_avx2(dtype);
#endif
    default: return layer_kernels_portable(dtype);
  }
}

int64_t num_rows(const RmsNormParams& p) { return p.num_tokens * p.num_heads; }
int64_t num_rows(const SiluAndMulParams& p) { return p.num_tokens; }
int64_t num_rows(const ArgmaxParams& p) { return p.num_rows; }
int64_t num_rows(const RotaryEmbeddingParams& p) { return p.num_tokens; }
int64_t num_rows(const LinearParams& p) { return p.out_features; }

// fn(begin, end) over [0, rows), split evenly over the team, or on this thread alone for a call
// too small to pay for waking the team.
template <class Fn>
void split_rows(int64_t rows, int64_t elements_per_row, Fn fn) {
  const int64_t threads = std::min<int64_t>(omp_get_max_threads(), rows);
  if (threads <= 1 || rows * elements_per_row < kSerialElements) {
    fn(0, rows);
    return;
  }
#pragma omp parallel num_threads(static_cast<int>(threads))
  {
    const int64_t team = omp_get_num_threads(), me = omp_get_thread_num();
    fn(rows * me / team, rows * (me + 1) / team);
  }
}

template <class Params, class Kernel>
void run_rows(const Params& p, Kernel kernel, int64_t elements_per_row) {
  split_rows(num_rows(p), elements_per_row, [&](int64_t begin, int64_t end) { kernel(p, begin, end); });
}

}  // namespace

Status rms_norm_cpu(const RmsNormParams& p) {
  if (check_rms_norm(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  run_rows(p, kernels_for(p.dtype).rms_norm, 3 * p.hidden);
  return Status::kOk;
}

Status argmax_cpu(const ArgmaxParams& p) {
  if (check_argmax(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  run_rows(p, kernels_for(p.dtype).argmax, p.num_cols);
  return Status::kOk;
}

Status rotary_embedding_cpu(const RotaryEmbeddingParams& p) {
  if (check_rotary_embedding(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  run_rows(p, kernels_for(p.dtype).rotary_embedding, 2 * (p.num_heads + p.num_kv_heads) * p.head_dim);
  return Status::kOk;
}

bool linear_interleave_supported(DType dtype, int64_t out_features, int64_t in_features) {
#if defined(KVSERVE_CPU_X86_KERNELS)
  return dtype == DType::kBFloat16 && cpu_isa() >= CpuIsa::kAvx512Bf16 && out_features > 0 && in_features > 0 &&
         out_features % 4 == 0 && in_features % 32 == 0;
#else
  (void)dtype, (void)out_features, (void)in_features;
  return false;
#endif
}

Status linear_cpu(const LinearParams& p) {
  if (check_linear(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  if (p.silu_and_mul_output) return Status::kUnsupported;
  if (p.num_rows == 0) return Status::kOk;
  if (p.weight_interleaved) {
    if (!linear_interleave_supported(p.dtype, p.out_features, p.in_features)) return Status::kUnsupported;
#if defined(KVSERVE_CPU_X86_KERNELS)
    // Threads take whole blocks of 4 output features.
    split_rows(p.out_features / 4, 4 * p.in_features,
               [&](int64_t begin, int64_t end) { linear_avx512_bf16_interleaved(p, begin, end); });
#endif
    return Status::kOk;
  }
  const LayerKernels kernels = kernels_for(p.dtype);
  const DType codes = p.weight_dtype.value_or(p.dtype);
  auto kernel = codes == DType::kUInt4         ? kernels.linear_uint4
                : codes == DType::kInt8        ? kernels.linear_int8
                : codes == DType::kFloat8E4M3 ? kernels.linear_e4m3
                                               : kernels.linear;
#if defined(KVSERVE_CPU_X86_KERNELS)
  if (p.dtype == DType::kBFloat16 && cpu_isa() >= CpuIsa::kAvx512Bf16) {
    kernel = codes == DType::kUInt4         ? linear_avx512_bf16_uint4
             : codes == DType::kInt8        ? linear_avx512_bf16_int8
             : codes == DType::kFloat8E4M3 ? linear_avx512_bf16_e4m3
                                            : linear_avx512_bf16;
  }
#endif
  run_rows(p, kernel, p.in_features);
  return Status::kOk;
}

Status dequantize_weight_cpu(const LinearParams& p) {
  if (check_dequantize_weight(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  const LayerKernels kernels = kernels_for(p.dtype);
  run_rows(p,
           p.weight_dtype == DType::kUInt4  ? kernels.dequantize_uint4
           : p.weight_dtype == DType::kInt8 ? kernels.dequantize_int8
                                            : kernels.dequantize_e4m3,
           p.in_features);
  return Status::kOk;
}

Status silu_and_mul_cpu(const SiluAndMulParams& p) {
  if (check_silu_and_mul(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  run_rows(p, kernels_for(p.dtype).silu_and_mul, 3 * p.size);
  return Status::kOk;
}

}  // namespace kvserve
