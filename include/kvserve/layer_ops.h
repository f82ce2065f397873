// The fused element-wise steps between a decoder layer's matrix products: RMSNorm (with the residual
// add of the next block fused in), rotary embedding in place on strided q and k, and SiLU-and-mul,
// for the CPU and for CUDA with one params struct each.
//
// Each computes in float32 and rounds to the storage dtype where Hugging Face's PyTorch code rounds,
// so float32 results match it to float32 precision and 16-bit ones within a rounding or two.
// Strides are in elements; the last dimension of every array is contiguous.
#pragma once

#include <cstdint>
#include <string>

#include "kvserve/config.h"
#include "kvserve/dtype.h"
#include "kvserve/export.h"
#include "kvserve/status.h"

namespace kvserve {

// out = weight * round(x / sqrt(mean(x^2) + eps)), over the last dimension.
//
//   input, out: [num_tokens, num_heads, hidden]   (a 2-D [num_tokens, hidden] is num_heads = 1;
//               per-head norms such as Qwen3's q/k norms read strided heads of a fused projection)
//   weight:     [hidden]
//   residual:   optional, [num_tokens, hidden] with num_heads = 1: first residual = round(input +
//               residual) is written back, then out = norm(residual). out may be input.
struct RmsNormParams {
  void* out = nullptr;
  int64_t out_stride_token = 0, out_stride_head = 0;
  const void* input = nullptr;
  int64_t input_stride_token = 0, input_stride_head = 0;
  void* residual = nullptr;
  int64_t residual_stride_token = 0;
  const void* weight = nullptr;

  DType dtype = DType::kFloat32;  // of every array: kFloat32, kFloat16 or kBFloat16
  int64_t num_tokens = 0, num_heads = 1, hidden = 0;
  float eps = 1e-6f;
};

// Rotates each pair (x[i], x[i + head_dim/2]) of every head of query and key, in place, by the
// angle whose cos and sin are given per token ("neox" layout, as Hugging Face's Llama):
//   x[i] <- x[i] cos - x[i + h] sin,   x[i + h] <- x[i + h] cos + x[i] sin,   h = head_dim / 2
//
//   query:    [num_tokens, num_heads, head_dim]      key: [num_tokens, num_kv_heads, head_dim]
//   cos, sin: [num_tokens, head_dim / 2]             (one row stride for both)
struct RotaryEmbeddingParams {
  void* query = nullptr;
  int64_t query_stride_token = 0, query_stride_head = 0;
  void* key = nullptr;
  int64_t key_stride_token = 0, key_stride_head = 0;
  const void* cos = nullptr;
  const void* sin = nullptr;
  int64_t cos_sin_stride_token = 0;

  DType dtype = DType::kFloat32;
  int64_t num_tokens = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
};

// out = round(round(silu(gate)) * up), gate and up the two halves of each input row.
//
//   input: [num_tokens, 2 * size]   (gate, then up)      out: [num_tokens, size]
struct SiluAndMulParams {
  void* out = nullptr;
  int64_t out_stride_token = 0;
  const void* input = nullptr;
  int64_t input_stride_token = 0;

  DType dtype = DType::kFloat32;
  int64_t num_tokens = 0, size = 0;
};

// Sizes, strides and pointers; kOk, or kInvalidArgument with a message in `why` (when not null).
KVSERVE_EXPORT Status check_rms_norm(const RmsNormParams& params, std::string* why);
KVSERVE_EXPORT Status check_rotary_embedding(const RotaryEmbeddingParams& params, std::string* why);
KVSERVE_EXPORT Status check_silu_and_mul(const SiluAndMulParams& params, std::string* why);

// Each runs its check (kInvalidArgument if it fails), then the kernel on the calling thread's OpenMP
// team. 16-bit results round where the framework ops they replace round (bit-equal but for rare
// one-ulp flips where a float32 sum or exp is taken in another order).
KVSERVE_EXPORT Status rms_norm_cpu(const RmsNormParams& params);
KVSERVE_EXPORT Status rotary_embedding_cpu(const RotaryEmbeddingParams& params);
KVSERVE_EXPORT Status silu_and_mul_cpu(const SiluAndMulParams& params);

#if KVSERVE_HAS_CUDA
// Each runs its check, then enqueues the kernel on `stream` (a cudaStream_t; nullptr = the default
// stream) of the current device. Capturable in a CUDA graph.
KVSERVE_EXPORT Status rms_norm_cuda(const RmsNormParams& params, void* stream);
KVSERVE_EXPORT Status rotary_embedding_cuda(const RotaryEmbeddingParams& params, void* stream);
KVSERVE_EXPORT Status silu_and_mul_cuda(const SiluAndMulParams& params, void* stream);
#endif

}  // namespace kvserve
