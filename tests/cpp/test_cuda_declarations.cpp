// The public headers declare a *_cuda function exactly when the library defines it: when
// KVSERVE_HAS_CUDA (kvserve/config.h) is 1. A declaration without a definition compiles in an
// embedder's code and fails only at its link.
//
// The probe: a catch-all function template of the same name at global scope. Unqualified lookup from
// inside namespace kvserve finds kvserve's function when the header declares one (and stops there),
// and the catch-all, whose return type is NotDeclared, when it does not. decltype never calls either.
#include <gtest/gtest.h>

#include <type_traits>
#include <utility>

#include "kvserve/argmax.h"
#include "kvserve/config.h"
#include "kvserve/copy_blocks.h"
#include "kvserve/layer_ops.h"
#include "kvserve/linear.h"
#include "kvserve/linear_rotary_and_cache.h"
#include "kvserve/paged_attention.h"
#include "kvserve/reshape_and_cache.h"
#include "kvserve/rotary_and_cache.h"

struct NotDeclared {};

#define KVSERVE_CATCH_ALL(name) \
  template <typename... Args>   \
  NotDeclared name(Args&&...);

KVSERVE_CATCH_ALL(argmax_cuda)
KVSERVE_CATCH_ALL(copy_blocks_cuda)
KVSERVE_CATCH_ALL(dequantize_weight_cuda)
KVSERVE_CATCH_ALL(rms_norm_cuda)
KVSERVE_CATCH_ALL(rotary_embedding_cuda)
KVSERVE_CATCH_ALL(silu_and_mul_cuda)
KVSERVE_CATCH_ALL(linear_cuda)
KVSERVE_CATCH_ALL(linear_rotary_and_cache_cuda)
KVSERVE_CATCH_ALL(paged_attention_cuda)
KVSERVE_CATCH_ALL(reshape_and_cache_cuda)
KVSERVE_CATCH_ALL(rotary_and_cache_cuda)

#undef KVSERVE_CATCH_ALL

namespace kvserve {
namespace {

template <typename T>
const T& arg() {
  return std::declval<const T&>();
}

template <typename Result>
constexpr bool declared() {
  return !std::is_same_v<Result, NotDeclared>;
}

TEST(CudaDeclarations, ExistExactlyWhenTheKernelsAreBuilt) {
  constexpr bool has_cuda = KVSERVE_HAS_CUDA != 0;
  void* stream = nullptr;
  void* cache = nullptr;
  const int64_t* pairs = nullptr;
  EXPECT_EQ(declared<decltype(argmax_cuda(arg<ArgmaxParams>(), stream))>(), has_cuda) << "argmax_cuda";
  EXPECT_EQ(declared<decltype(copy_blocks_cuda(cache, int64_t{}, int64_t{}, pairs, int64_t{}, stream))>(), has_cuda)
      << "copy_blocks_cuda";
  EXPECT_EQ(declared<decltype(dequantize_weight_cuda(arg<LinearParams>(), stream))>(), has_cuda)
      << "dequantize_weight_cuda";
  EXPECT_EQ(declared<decltype(rms_norm_cuda(arg<RmsNormParams>(), stream))>(), has_cuda) << "rms_norm_cuda";
  EXPECT_EQ(declared<decltype(rotary_embedding_cuda(arg<RotaryEmbeddingParams>(), stream))>(), has_cuda)
      << "rotary_embedding_cuda";
  EXPECT_EQ(declared<decltype(silu_and_mul_cuda(arg<SiluAndMulParams>(), stream))>(), has_cuda) << "silu_and_mul_cuda";
  EXPECT_EQ(declared<decltype(linear_cuda(arg<LinearParams>(), stream))>(), has_cuda) << "linear_cuda";
  EXPECT_EQ(declared<decltype(linear_rotary_and_cache_cuda(arg<LinearParams>(), arg<RotaryAndCacheParams>(), stream))>(),
            has_cuda)
      << "linear_rotary_and_cache_cuda";
  EXPECT_EQ(declared<decltype(paged_attention_cuda(arg<PagedAttentionParams>(), stream))>(), has_cuda)
      << "paged_attention_cuda";
  EXPECT_EQ(declared<decltype(reshape_and_cache_cuda(arg<ReshapeAndCacheParams>(), stream))>(), has_cuda)
      << "reshape_and_cache_cuda";
  EXPECT_EQ(declared<decltype(rotary_and_cache_cuda(arg<RotaryAndCacheParams>(), stream))>(), has_cuda)
      << "rotary_and_cache_cuda";
}

}  // namespace
}  // namespace kvserve
