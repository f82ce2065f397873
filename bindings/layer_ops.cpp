// Bindings of the fused layer kernels (layer_ops.h): RMSNorm, fused residual add + RMSNorm, rotary
// embedding (alone, or with the KV-cache write: rotary_and_cache.h), SiLU-and-mul, and the greedy
// sampler's argmax (argmax.h), on the CPU or a CUDA device. Shapes, dtypes and strides are checked first, then that every array is on one
// device, whose kernel then runs.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>

#include <optional>
#include <utility>

#include "array_check.h"
#include "bind.h"
#include "kernel_call.h"
#include "kvserve/argmax.h"
#include "kvserve/layer_ops.h"
#include "kvserve/rotary_and_cache.h"
#include "op_params.h"

namespace kvserve::bind {

RotaryEmbeddingParams rotary_embedding_params(const Array& query, const Array& key, const Array& cos,
                                              const Array& sin) {
  check_dtype(query, "query", kFloatDtypes);
  check_ndim(query, "query", 3, "[num_tokens, num_heads, head_dim]");
  check_contiguous(query, "query", 2);
  check_same_dtype(key, "key", query, "query");
  check_ndim(key, "key", 3, "[num_tokens, num_kv_heads, head_dim]");
  check_dim(key, "key", 0, static_cast<int64_t>(query.shape(0)), "num_tokens of query");
  check_dim(key, "key", 2, static_cast<int64_t>(query.shape(2)), "head_dim of query");
  check_contiguous(key, "key", 2);
  check_same_dtype(cos, "cos", query, "query");
  check_ndim(cos, "cos", 2, "[num_tokens, head_dim / 2]");
  check_dim(cos, "cos", 0, static_cast<int64_t>(query.shape(0)), "num_tokens of query");
  check_dim(cos, "cos", 1, static_cast<int64_t>(query.shape(2)) / 2, "head_dim / 2 of query");
  check_contiguous(cos, "cos", 1);
  check_same_shape(sin, "sin", cos, "cos");
  check_same_dtype(sin, "sin", cos, "cos");
  check_same_stride(sin, "sin", cos, "cos", 0);
  check_contiguous(sin, "sin", 1);

  RotaryEmbeddingParams p;
  p.query = query.data();
  p.query_stride_token = query.stride(0);
  p.query_stride_head = query.stride(1);
  p.key = key.data();
  p.key_stride_token = key.stride(0);
  p.key_stride_head = key.stride(1);
  p.cos = cos.data();
  p.sin = sin.data();
  p.cos_sin_stride_token = cos.stride(0);
  p.dtype = kernel_dtype(query, "query");
  p.num_tokens = static_cast<int64_t>(query.shape(0));
  p.num_heads = static_cast<int64_t>(query.shape(1));
  p.num_kv_heads = static_cast<int64_t>(key.shape(1));
  p.head_dim = static_cast<int64_t>(query.shape(2));
  return p;
}

namespace {

// [num_tokens, hidden] or [num_tokens, num_heads, hidden], the last dimension contiguous.
void check_norm_rows(const Array& array, const char* name) {
  if (array.ndim() != 2 && array.ndim() != 3) {
    check_ndim(array, name, 3, "[num_tokens, hidden] or [num_tokens, num_heads, hidden]");
  }
  check_contiguous(array, name, array.ndim() - 1);
}

void check_weight(const Array& weight, const Array& input) {
  check_vector_like(weight, "weight", input, "input", static_cast<int64_t>(input.shape(input.ndim() - 1)), "[hidden]",
                    "hidden of input");
}

// The params of out = norm(input) * weight over checked arrays of 2 or 3 dimensions.
RmsNormParams norm_params(Array& out, const Array& input, const Array& weight, double eps) {
  const bool heads = input.ndim() == 3;
  RmsNormParams p;
  p.out = out.data();
  p.out_stride_token = out.stride(0);
  p.out_stride_head = heads ? out.stride(1) : 0;
  p.input = input.data();
  p.input_stride_token = input.stride(0);
  p.input_stride_head = heads ? input.stride(1) : 0;
  p.weight = weight.data();
  p.dtype = kernel_dtype(input, "input");
  p.num_tokens = static_cast<int64_t>(input.shape(0));
  p.num_heads = heads ? static_cast<int64_t>(input.shape(1)) : 1;
  p.hidden = static_cast<int64_t>(input.shape(input.ndim() - 1));
  p.eps = static_cast<float>(eps);
  return p;
}

void rms_norm(Array out, Array input, Array weight, double eps, uintptr_t stream) {
  check_dtype(input, "input", kFloatDtypes);
  check_norm_rows(input, "input");
  check_same_shape(out, "out", input, "input");
  check_same_dtype(out, "out", input, "input");
  check_norm_rows(out, "out");
  check_weight(weight, input);
  const bool cuda = on_one_device({{input, "input"}, {out, "out"}, {weight, "weight"}});
  call_kernel(cuda, KVSERVE_KERNELS(rms_norm), check_rms_norm, norm_params(out, input, weight, eps), input.device_id(),
              stream, "rms_norm");
}

void fused_add_rms_norm(Array input, Array residual, Array weight, double eps, uintptr_t stream) {
  check_dtype(input, "input", kFloatDtypes);
  check_ndim(input, "input", 2, "[num_tokens, hidden]");
  check_contiguous(input, "input", 1);
  check_same_shape(residual, "residual", input, "input");
  check_same_dtype(residual, "residual", input, "input");
  check_contiguous(residual, "residual", 1);
  check_weight(weight, input);
  const bool cuda = on_one_device({{input, "input"}, {residual, "residual"}, {weight, "weight"}});
  RmsNormParams p = norm_params(input, input, weight, eps);
  p.residual = residual.data();
  p.residual_stride_token = residual.stride(0);
  call_kernel(cuda, KVSERVE_KERNELS(rms_norm), check_rms_norm, p, input.device_id(), stream, "fused_add_rms_norm");
}

void rotary_embedding(Array query, Array key, Array cos, Array sin, uintptr_t stream) {
  const RotaryEmbeddingParams p = rotary_embedding_params(query, key, cos, sin);
  const bool cuda = on_one_device({{query, "query"}, {key, "key"}, {cos, "cos"}, {sin, "sin"}});
  call_kernel(cuda, KVSERVE_KERNELS(rotary_embedding), check_rotary_embedding, p, query.device_id(), stream,
              "rotary_embedding");
}

void rotary_and_cache(Array query, Array key, Array value, Array cos, Array sin, Array key_cache, Array value_cache,
                      Array slot_mapping, uintptr_t stream, std::optional<Array> query_norm_weight,
                      std::optional<Array> key_norm_weight, double norm_eps) {
  RotaryAndCacheParams p;
  p.rotary = rotary_embedding_params(query, key, cos, sin);
  p.cache = reshape_and_cache_params(key, value, key_cache, value_cache, slot_mapping);
  bool cuda =
      on_one_device({{query, "query"}, {key, "key"}, {value, "value"}, {cos, "cos"}, {sin, "sin"},
                     {key_cache, "key_cache"}, {value_cache, "value_cache"}, {slot_mapping, "slot_mapping"}});
  if (query_norm_weight.has_value() != key_norm_weight.has_value()) {
    throw nb::value_error("rotary_and_cache: query_norm_weight and key_norm_weight go together (both or neither)");
  }
  if (query_norm_weight) {
    for (const auto& [weight, name] : {std::pair{&*query_norm_weight, "query_norm_weight"},
                                       std::pair{&*key_norm_weight, "key_norm_weight"}}) {
      check_vector_like(*weight, name, query, "query", static_cast<int64_t>(query.shape(2)), "[head_dim]",
                        "head_dim of query");
      cuda = on_one_device({{query, "query"}, {*weight, name}}) && cuda;
    }
    p.query_norm_weight = query_norm_weight->data();
    p.key_norm_weight = key_norm_weight->data();
    p.norm_eps = static_cast<float>(norm_eps);
  }
  call_kernel(cuda, KVSERVE_KERNELS(rotary_and_cache), check_rotary_and_cache, check_rotary_and_cache_layout, p,
              query.device_id(), stream, "rotary_and_cache");
}

void silu_and_mul(Array out, Array input, uintptr_t stream) {
  check_dtype(input, "input", kFloatDtypes);
  check_ndim(input, "input", 2, "[num_tokens, 2 * size]");
  check_contiguous(input, "input", 1);
  if (input.shape(1) % 2 != 0) {
    throw nb::value_error(("input: expected an even last dimension (gate, then up), got shape [" +
                           std::to_string(input.shape(0)) + ", " + std::to_string(input.shape(1)) + "]").c_str());
  }
  check_same_dtype(out, "out", input, "input");
  check_ndim(out, "out", 2, "[num_tokens, size]");
  check_dim(out, "out", 0, static_cast<int64_t>(input.shape(0)), "num_tokens of input");
  check_dim(out, "out", 1, static_cast<int64_t>(input.shape(1)) / 2, "half the width of input");
  check_contiguous(out, "out", 1);
  const bool cuda = on_one_device({{input, "input"}, {out, "out"}});

  SiluAndMulParams p;
  p.out = out.data();
  p.out_stride_token = out.stride(0);
  p.input = input.data();
  p.input_stride_token = input.stride(0);
  p.dtype = kernel_dtype(input, "input");
  p.num_tokens = static_cast<int64_t>(input.shape(0));
  p.size = static_cast<int64_t>(input.shape(1)) / 2;
  call_kernel(cuda, KVSERVE_KERNELS(silu_and_mul), check_silu_and_mul, p, input.device_id(), stream, "silu_and_mul");
}

void argmax(Array out, Array input, uintptr_t stream) {
  check_dtype(input, "input", kFloatDtypes);
  check_ndim(input, "input", 2, "[num_rows, num_cols]");
  check_contiguous(input, "input", 1);
  check_dtype(out, "out", {kInt32});
  check_ndim(out, "out", 1, "[num_rows]");
  check_dim(out, "out", 0, static_cast<int64_t>(input.shape(0)), "num_rows of input");
  check_contiguous(out, "out");
  const bool cuda = on_one_device({{input, "input"}, {out, "out"}});
  ArgmaxParams p;
  p.out = static_cast<int32_t*>(out.data());
  p.input = input.data();
  p.input_stride = input.stride(0);
  p.num_rows = static_cast<int64_t>(input.shape(0));
  p.num_cols = static_cast<int64_t>(input.shape(1));
  p.dtype = kernel_dtype(input, "input");
  call_kernel(cuda, KVSERVE_KERNELS(argmax), check_argmax, p, input.device_id(), stream, "argmax");
}

}  // namespace

void bind_layer_ops(nb::module_& m) {
  m.def("rms_norm", &rms_norm, nb::arg("out").noconvert(), nb::arg("input"), nb::arg("weight"), nb::arg("eps"),
        nb::arg("stream") = 0, "out = RMSNorm(input) * weight over the last dim. See kvserve.ops.rms_norm.");
  m.def("fused_add_rms_norm", &fused_add_rms_norm, nb::arg("input").noconvert(), nb::arg("residual").noconvert(),
        nb::arg("weight"), nb::arg("eps"), nb::arg("stream") = 0,
        "residual += input; input = RMSNorm(residual) * weight, in place.");
  m.def("rotary_embedding", &rotary_embedding, nb::arg("query").noconvert(), nb::arg("key").noconvert(),
        nb::arg("cos"), nb::arg("sin"), nb::arg("stream") = 0, "Rotate query and key in place.");
  m.def("rotary_and_cache", &rotary_and_cache, nb::arg("query").noconvert(), nb::arg("key").noconvert(),
        nb::arg("value"), nb::arg("cos"), nb::arg("sin"), nb::arg("key_cache").noconvert(),
        nb::arg("value_cache").noconvert(), nb::arg("slot_mapping"), nb::arg("stream") = 0,
        nb::arg("query_norm_weight") = nb::none(), nb::arg("key_norm_weight") = nb::none(),
        nb::arg("norm_eps") = 1e-6,
        "Rotate query and key in place (each head RMS-normalized first, with the norm weights), then\n"
        "write key and value into their cache slots.");
  m.def("silu_and_mul", &silu_and_mul, nb::arg("out").noconvert(), nb::arg("input"), nb::arg("stream") = 0,
        "out = silu(input[:, :size]) * input[:, size:].");
  m.def("argmax", &argmax, nb::arg("out").noconvert(), nb::arg("input"), nb::arg("stream") = 0,
        "out [num_rows] (int32) = the first index of each row's maximum of input [num_rows, num_cols];\n"
        "NaN entries are ignored.");
}

}  // namespace kvserve::bind
