// Bindings of the row-wise kernels (RMSNorm, SiLU-and-mul, argmax, rotary embedding) and the few-rows linear: 2-D arrays whose rows may be
// strided (views of a wider projection), last dimension contiguous, on the CPU.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>

#include <optional>
#include <string>

#include "array_check.h"
#include "bind.h"
#include "kvserve/argmax.h"
#include "kvserve/linear.h"
#include "kvserve/rms_norm.h"
#include "kvserve/rotary_embedding.h"
#include "kvserve/silu_and_mul.h"

namespace kvserve::bind {

namespace {

constexpr std::initializer_list<nb::dlpack::dtype> kFloatDtypes = {kFloat32, kFloat16, kBFloat16};

void check_matrix(const Array& array, const char* name, const char* layout) {
  check_ndim(array, name, 2, layout);
  check_contiguous(array, name, 1);
  check_cpu(array, name);
}

void rms_norm(Array out, Array input, Array weight, double eps, std::optional<Array> residual) {
  const char* layout = "[num_tokens, hidden]";
  check_dtype(input, "input", kFloatDtypes);
  check_matrix(input, "input", layout);
  check_same_shape(out, "out", input, "input");
  check_same_dtype(out, "out", input, "input");
  check_matrix(out, "out", layout);
  check_same_dtype(weight, "weight", input, "input");
  check_ndim(weight, "weight", 1, "[hidden]");
  check_dim(weight, "weight", 0, static_cast<int64_t>(input.shape(1)), "hidden of input");
  check_contiguous(weight, "weight");
  check_cpu(weight, "weight");
  RmsNormParams p;
  if (residual) {
    check_same_shape(*residual, "residual", input, "input");
    check_same_dtype(*residual, "residual", input, "input");
    check_matrix(*residual, "residual", layout);
    p.residual = residual->data();
    p.residual_stride = residual->stride(0);
  }
  if (!(eps >= 0.0)) throw nb::value_error(("eps must be >= 0, got " + std::to_string(eps)).c_str());
  p.out = out.data();
  p.out_stride = out.stride(0);
  p.input = input.data();
  p.input_stride = input.stride(0);
  p.weight = weight.data();
  p.num_tokens = static_cast<int64_t>(input.shape(0));
  p.hidden = static_cast<int64_t>(input.shape(1));
  p.eps = static_cast<float>(eps);
  p.dtype = kernel_dtype(input, "input");
  Status status;
  {
    nb::gil_scoped_release release;
    status = rms_norm_cpu(p);
  }
  raise_on_error(status, "rms_norm");
}

void silu_and_mul(Array out, Array input) {
  check_dtype(input, "input", kFloatDtypes);
  check_matrix(input, "input", "[num_tokens, 2 * dim]");
  if (input.shape(1) % 2 != 0) {
    throw nb::value_error(("input: the last dimension holds [gate; up] and must be even, got " +
                           std::to_string(input.shape(1))).c_str());
  }
  check_same_dtype(out, "out", input, "input");
  check_matrix(out, "out", "[num_tokens, dim]");
  check_dim(out, "out", 0, static_cast<int64_t>(input.shape(0)), "num_tokens of input");
  check_dim(out, "out", 1, static_cast<int64_t>(input.shape(1) / 2), "half the last dimension of input");
  SiluAndMulParams p;
  p.out = out.data();
  p.out_stride = out.stride(0);
  p.input = input.data();
  p.input_stride = input.stride(0);
  p.num_tokens = static_cast<int64_t>(input.shape(0));
  p.dim = static_cast<int64_t>(out.shape(1));
  p.dtype = kernel_dtype(input, "input");
  Status status;
  {
    nb::gil_scoped_release release;
    status = silu_and_mul_cpu(p);
  }
  raise_on_error(status, "silu_and_mul");
}

void argmax(Array out, Array input) {
  check_dtype(input, "input", kFloatDtypes);
  check_matrix(input, "input", "[num_rows, num_cols]");
  check_dtype(out, "out", {kInt32});
  check_ndim(out, "out", 1, "[num_rows]");
  check_dim(out, "out", 0, static_cast<int64_t>(input.shape(0)), "num_rows of input");
  check_contiguous(out, "out");
  check_cpu(out, "out");
  ArgmaxParams p;
  p.out = static_cast<int32_t*>(out.data());
  p.input = input.data();
  p.input_stride = input.stride(0);
  p.num_rows = static_cast<int64_t>(input.shape(0));
  p.num_cols = static_cast<int64_t>(input.shape(1));
  p.dtype = kernel_dtype(input, "input");
  Status status;
  {
    nb::gil_scoped_release release;
    status = argmax_cpu(p);
  }
  raise_on_error(status, "argmax");
}

void rotary_embedding(Array query, Array key, Array cos, Array sin) {
  const char* q_layout = "[num_tokens, num_heads, head_dim]";
  const char* k_layout = "[num_tokens, num_kv_heads, head_dim]";
  check_dtype(query, "query", kFloatDtypes);
  check_ndim(query, "query", 3, q_layout);
  check_contiguous(query, "query", 2);
  check_cpu(query, "query");
  check_same_dtype(key, "key", query, "query");
  check_ndim(key, "key", 3, k_layout);
  check_dim(key, "key", 0, static_cast<int64_t>(query.shape(0)), "num_tokens of query");
  check_dim(key, "key", 2, static_cast<int64_t>(query.shape(2)), "head_dim of query");
  check_contiguous(key, "key", 2);
  check_cpu(key, "key");
  const int64_t half = static_cast<int64_t>(query.shape(2)) / 2;
  if (query.shape(2) % 2 != 0) {
    throw nb::value_error(("query: head_dim must be even, got " + std::to_string(query.shape(2))).c_str());
  }
  for (const auto& [array, name] : {std::pair{&cos, "cos"}, std::pair{&sin, "sin"}}) {
    check_same_dtype(*array, name, query, "query");
    check_ndim(*array, name, 2, "[num_tokens, head_dim / 2]");
    check_dim(*array, name, 0, static_cast<int64_t>(query.shape(0)), "num_tokens of query");
    check_dim(*array, name, 1, half, "head_dim / 2");
    check_contiguous(*array, name);
    check_cpu(*array, name);
  }
  RotaryEmbeddingParams p;
  p.query = query.data();
  p.query_stride_token = query.stride(0);
  p.query_stride_head = query.stride(1);
  p.num_heads = static_cast<int64_t>(query.shape(1));
  p.key = key.data();
  p.key_stride_token = key.stride(0);
  p.key_stride_head = key.stride(1);
  p.num_kv_heads = static_cast<int64_t>(key.shape(1));
  p.cos = cos.data();
  p.sin = sin.data();
  p.num_tokens = static_cast<int64_t>(query.shape(0));
  p.head_dim = static_cast<int64_t>(query.shape(2));
  p.dtype = kernel_dtype(query, "query");
  Status status;
  {
    nb::gil_scoped_release release;
    status = rotary_embedding_cpu(p);
  }
  raise_on_error(status, "rotary_embedding");
}

void linear(Array out, Array input, Array weight, std::optional<Array> bias) {
  check_dtype(input, "input", kFloatDtypes);
  check_matrix(input, "input", "[num_rows, in_features]");
  check_same_dtype(weight, "weight", input, "input");
  check_matrix(weight, "weight", "[out_features, in_features]");
  check_dim(weight, "weight", 1, static_cast<int64_t>(input.shape(1)), "in_features of input");
  check_same_dtype(out, "out", input, "input");
  check_matrix(out, "out", "[num_rows, out_features]");
  check_dim(out, "out", 0, static_cast<int64_t>(input.shape(0)), "num_rows of input");
  check_dim(out, "out", 1, static_cast<int64_t>(weight.shape(0)), "out_features of weight");
  LinearParams p;
  if (bias) {
    check_same_dtype(*bias, "bias", input, "input");
    check_ndim(*bias, "bias", 1, "[out_features]");
    check_dim(*bias, "bias", 0, static_cast<int64_t>(weight.shape(0)), "out_features of weight");
    check_contiguous(*bias, "bias");
    check_cpu(*bias, "bias");
    p.bias = bias->data();
  }
  p.out = out.data();
  p.out_stride = out.stride(0);
  p.input = input.data();
  p.input_stride = input.stride(0);
  p.weight = weight.data();
  p.weight_stride = weight.stride(0);
  p.num_rows = static_cast<int64_t>(input.shape(0));
  p.in_features = static_cast<int64_t>(input.shape(1));
  p.out_features = static_cast<int64_t>(weight.shape(0));
  p.dtype = kernel_dtype(input, "input");
  Status status;
  {
    nb::gil_scoped_release release;
    status = linear_cpu(p);
  }
  raise_on_error(status, "linear");
}

}  // namespace

void bind_layer_ops(nb::module_& m) {
  m.def("rms_norm", &rms_norm, nb::arg("out").noconvert(), nb::arg("input"), nb::arg("weight"), nb::arg("eps"),
        nb::arg("residual").noconvert() = nb::none(),
        "RMSNorm of each row of input [num_tokens, hidden] into out; with `residual`, first\n"
        "residual <- input + residual (in place) and normalize that. See include/kvserve/rms_norm.h.");
  m.def("silu_and_mul", &silu_and_mul, nb::arg("out").noconvert(), nb::arg("input"),
        "out [num_tokens, dim] = silu(gate) * up for input [num_tokens, 2 * dim] = [gate; up].");
  m.def("argmax", &argmax, nb::arg("out").noconvert(), nb::arg("input"),
        "out [num_rows] (int32) = the first index of each row's maximum of input [num_rows, num_cols];\n"
        "NaN entries are ignored.");
  m.def("rotary_embedding", &rotary_embedding, nb::arg("query").noconvert(), nb::arg("key").noconvert(),
        nb::arg("cos"), nb::arg("sin"),
        "Rotate query [T, H, D] and key [T, Hkv, D] in place by cos/sin [T, D/2] (neox half-split).");
  m.def("linear", &linear, nb::arg("out").noconvert(), nb::arg("input"), nb::arg("weight"),
        nb::arg("bias") = nb::none(),
        "out [M, N] = input [M, K] @ weight[N, K]^T (+ bias [N]), for few rows M (decode).");
}

}  // namespace kvserve::bind
