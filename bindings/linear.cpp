// Bindings of linear (linear.h): the few-rows product on the CPU (any rows, either weight layout)
// or a CUDA device (up to kLinearCudaMaxRows rows of 16-bit dtypes, any over codes; cuBLAS serves the rest), on
// CUDA its fusion with rotary_and_cache (linear_rotary_and_cache.h), and the widening of quantized
// codes (dequantize_weight) on either. 2-D arrays whose rows may be strided, last dimension
// contiguous.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>

#include <optional>
#include <string>
#include <vector>

#include "array_check.h"
#include "bind.h"
#include "kernel_call.h"
#include "kvserve/linear.h"
#include "kvserve/linear_rotary_and_cache.h"
#include "linear_weight.h"
#include "op_params.h"

namespace kvserve::bind {

namespace {

void check_matrix(const Array& array, const char* name, const char* layout) {
  check_ndim(array, name, 2, layout);
  check_contiguous(array, name, 1);
}

// The params of out = input @ weight^T (+ bias) over checked arrays (with silu_and_mul_output, out
// holds half the weight's rows); `cuda`: whether they all sit on one CUDA device.
LinearParams linear_params(Array& out, const Array& input, const Array& weight, const std::optional<Array>& bias,
                           bool silu_and_mul_output, const std::optional<Array>& weight_scale,
                           const std::optional<Array>& weight_offset, bool* cuda) {
  check_dtype(input, "input", kFloatDtypes);
  check_matrix(input, "input", "[num_rows, in_features]");
  const auto in_features = static_cast<int64_t>(input.shape(1));
  const std::optional<DType> weight_dtype = check_weight_dtype(weight, "weight", input, "input");
  const bool interleaved = check_linear_weight(weight, "weight", in_features, "in_features of input");
  const int64_t out_features = linear_out_features(weight);
  if (silu_and_mul_output && out_features % 2 != 0) {
    throw nb::value_error(("linear: with silu_and_mul_output the weight's rows are [gate; up] (an even number), got " +
                           std::to_string(out_features)).c_str());
  }
  check_same_dtype(out, "out", input, "input");
  check_matrix(out, "out", silu_and_mul_output ? "[num_rows, out_features / 2]" : "[num_rows, out_features]");
  check_dim(out, "out", 0, static_cast<int64_t>(input.shape(0)), "num_rows of input");
  if (silu_and_mul_output) {
    check_dim(out, "out", 1, out_features / 2, "half the weight's rows");
  } else {
    check_dim(out, "out", 1, out_features, "out_features of weight");
  }
  LinearParams p;
  check_weight_scales(weight_dtype, weight_scale, weight_offset, "linear: ", "weight_scale", "weight_offset",
                      out_features, in_features);
  std::vector<Named> arrays = {{input, "input"}, {weight, "weight"}, {out, "out"}};
  if (bias) {
    check_vector_like(*bias, "bias", input, "input", out_features, "[out_features]", "out_features of weight");
    arrays.push_back({*bias, "bias"});
    p.bias = bias->data();
  }
  p.weight_dtype = weight_dtype;
  if (weight_scale) {
    arrays.push_back({*weight_scale, "weight_scale"});
    p.weight_scale = static_cast<const float*>(weight_scale->data());
  }
  if (weight_offset) {
    arrays.push_back({*weight_offset, "weight_offset"});
    p.weight_offset = static_cast<const float*>(weight_offset->data());
  }
  *cuda = on_one_device(arrays);
  p.out = out.data();
  p.out_stride = out.stride(0);
  p.input = input.data();
  p.input_stride = input.stride(0);
  p.weight = weight.data();
  p.weight_stride = interleaved ? 0 : weight.stride(0);
  p.weight_interleaved = interleaved;
  p.num_rows = static_cast<int64_t>(input.shape(0));
  p.in_features = in_features;
  p.out_features = out_features;
  p.silu_and_mul_output = silu_and_mul_output;
  p.dtype = kernel_dtype(input, "input");
  if (*cuda && !linear_cuda_takes(p)) {
    throw nb::value_error(("linear: on CUDA, 1 to " + std::to_string(kLinearCudaMaxRows) +
                           " rows of float16 or bfloat16 (any number over codes) with a [out_features, in_features] "
                           "weight, in_features and the row strides multiples of 8 and 16-byte aligned rows (past " +
                           std::to_string(kLinearCudaMaxCodeRows) + " rows over codes: in_features a multiple of 32, "
                           "code rows 16 bytes apart); got " +
                           std::to_string(p.num_rows) + " rows of " + dtype_name(input.dtype()) +
                           " (linear_cuda_takes says which; torch's matmul serves the rest)").c_str());
  }
  return p;
}

void linear(Array out, Array input, Array weight, std::optional<Array> bias, uintptr_t stream,
            bool silu_and_mul_output, std::optional<Array> weight_scale, std::optional<Array> weight_offset) {
  bool cuda = false;
  const LinearParams p =
      linear_params(out, input, weight, bias, silu_and_mul_output, weight_scale, weight_offset, &cuda);
  if (silu_and_mul_output && !cuda) {
    throw nb::value_error("linear: silu_and_mul_output runs on CUDA only (on the CPU: linear, then silu_and_mul)");
  }
  call_kernel(cuda, KVSERVE_KERNELS(linear), check_linear, p, input.device_id(), stream, "linear");
}

void linear_rotary_and_cache(Array out, Array input, Array weight, std::optional<Array> bias, Array query, Array key,
                             Array value, Array cos, Array sin, Array key_cache, Array value_cache, Array slot_mapping,
                             uintptr_t stream, std::optional<Array> weight_scale, std::optional<Array> weight_offset) {
  bool cuda = false;
  const LinearParams p = linear_params(out, input, weight, bias, false, weight_scale, weight_offset, &cuda);
  RotaryAndCacheParams rc;
  rc.rotary = rotary_embedding_params(query, key, cos, sin);
  rc.cache = reshape_and_cache_params(key, value, key_cache, value_cache, slot_mapping);
  cuda = on_one_device({{input, "input"}, {out, "out"}, {query, "query"}, {key, "key"}, {value, "value"},
                        {cos, "cos"}, {sin, "sin"}, {key_cache, "key_cache"}, {value_cache, "value_cache"},
                        {slot_mapping, "slot_mapping"}}) && cuda;
  // The layout first, wherever the arrays are: the same message on either device.
  std::string why;
  if (check_linear_rotary_and_cache(p, rc, &why) != Status::kOk) {
    throw nb::value_error(("linear_rotary_and_cache: " + why).c_str());
  }
  if (!cuda) {
    throw nb::value_error("linear_rotary_and_cache runs on CUDA only (on the CPU: linear, then rotary_and_cache)");
  }
  if (rc.rotary.head_dim % 16 != 0) {
    throw nb::value_error(("linear_rotary_and_cache: head_dim must be a multiple of 16, got " +
                           std::to_string(rc.rotary.head_dim) + " (linear, then rotary_and_cache serve it)").c_str());
  }
#if KVSERVE_HAS_CUDA
  const CudaDeviceGuard guard(input.device_id());
  Status status;
  {
    nb::gil_scoped_release release;
    status = linear_rotary_and_cache_cuda(p, rc, reinterpret_cast<void*>(stream));
  }
  raise_on_error(status, "linear_rotary_and_cache");
#else
  (void)stream;  // unreachable: a build without CUDA kernels refuses CUDA arrays (on_one_device)
#endif
}

// out [N, K] = the weight quantized codes stand for (dequantize_weight_cpu, _cuda): float8_e4m3fn [N, K]
// with weight_scale [N], uint4 codes (uint8 [N, K / 2]) with weight_scale and weight_offset [N, K / 32],
// or int8 codes [N, K] with weight_scale [N, K / 16].
void dequantize_weight(Array out, Array weight, Array weight_scale, std::optional<Array> weight_offset,
                       uintptr_t stream) {
  check_dtype(out, "out", kFloatDtypes);
  check_matrix(out, "out", "[out_features, in_features]");
  check_dtype(weight, "weight", {kFloat8E4M3, kUInt8, kInt8});
  check_matrix(weight, "weight", "[out_features, in_features (/ 2 for uint4 codes)]");
  const auto out_features = static_cast<int64_t>(out.shape(0)), in_features = static_cast<int64_t>(out.shape(1));
  const DType weight_dtype = *code_dtype(weight.dtype());
  check_dim(weight, "weight", 0, out_features, "out_features of out");
  check_linear_weight(weight, "weight", in_features, "in_features of out");
  check_weight_scales(weight_dtype, weight_scale, weight_offset, "dequantize_weight: ", "weight_scale",
                      "weight_offset", out_features, in_features);
  std::vector<Named> arrays = {{out, "out"}, {weight, "weight"}, {weight_scale, "weight_scale"}};
  if (weight_offset) arrays.push_back({*weight_offset, "weight_offset"});
  const bool cuda = on_one_device(arrays);
  LinearParams p;
  p.out = out.data();
  p.out_stride = out.stride(0);
  p.weight = weight.data();
  p.weight_stride = weight.stride(0);
  p.weight_dtype = weight_dtype;
  p.weight_scale = static_cast<const float*>(weight_scale.data());
  p.weight_offset = weight_offset ? static_cast<const float*>(weight_offset->data()) : nullptr;
  p.in_features = in_features;
  p.out_features = out_features;
  p.dtype = kernel_dtype(out, "out");
  call_kernel(cuda, KVSERVE_KERNELS(dequantize_weight), check_dequantize_weight, p, out.device_id(), stream,
              "dequantize_weight");
}

// Whether linear takes input [M, K] over `weight` ([N, K] of input's dtype, or codes) on CUDA, as
// linear_cuda_takes says of their layout (the device's compute capability aside), and with
// `few_rows_only` whether its few-rows kernel does (what linear_rotary_and_cache takes): the callers'
// test before they choose between kvserve's kernels and torch's.
bool cuda_takes(Array input, Array weight, bool silu_and_mul_output, bool few_rows_only) {
  if (input.ndim() != 2 || weight.ndim() != 2 || input.stride(1) != 1 || weight.stride(1) != 1) return false;
  if (input.dtype() != kFloat16 && input.dtype() != kBFloat16) return false;
  const std::optional<DType> codes = code_dtype(weight.dtype());
  if (!codes && weight.dtype() != input.dtype()) return false;
  LinearParams p;
  p.input = input.data();
  p.input_stride = input.stride(0);
  p.weight = weight.data();
  p.weight_stride = weight.stride(0);
  p.weight_dtype = codes;
  p.num_rows = static_cast<int64_t>(input.shape(0));
  p.in_features = static_cast<int64_t>(input.shape(1));
  p.out_features = static_cast<int64_t>(weight.shape(0));
  p.silu_and_mul_output = silu_and_mul_output;
  p.dtype = kernel_dtype(input, "input");
  return linear_cuda_takes(p) && (!few_rows_only || p.num_rows <= linear_cuda_few_rows_max(p));
}

bool interleave_supported(Array weight) {
  check_ndim(weight, "weight", 2, "[out_features, in_features]");
  return weight.device_type() == nb::device::cpu::value && weight.dtype() == kBFloat16 &&
         linear_interleave_supported(DType::kBFloat16, static_cast<int64_t>(weight.shape(0)),
                                     static_cast<int64_t>(weight.shape(1)));
}

}  // namespace

void bind_linear(nb::module_& m) {
  m.attr("linear_cuda_max_rows") = kLinearCudaMaxRows;
  m.def("linear", &linear, nb::arg("out").noconvert(), nb::arg("input"), nb::arg("weight"),
        nb::arg("bias") = nb::none(), nb::arg("stream") = 0, nb::arg("silu_and_mul_output") = false,
        nb::arg("weight_scale") = nb::none(), nb::arg("weight_offset") = nb::none(),
        "out [M, N] = input [M, K] @ weight[N, K]^T (+ bias [N]), for few rows M (decode); on the CPU the\n"
        "weight may be interleaved, [N / 4, K / 32, 4, 32] (see linear_interleave_supported),\n"
        "float8_e4m3fn codes with weight_scale [N] (float32): out = (input @ weight^T) * weight_scale + bias,\n"
        "or uint4 codes, uint8 [N, K / 2], with weight_scale and weight_offset [N, K / 32] (float32), each\n"
        "group of 32 codes standing for code * scale + offset (kvserve/linear.h has the byte order), or\n"
        "int8 codes [N, K] with weight_scale [N, K / 16], each group of 16 standing for code * scale; on\n"
        "CUDA each code's value is rounded to the dtype first.\n"
        "With silu_and_mul_output (CUDA): weight rows [gate; up], out [M, N / 2] = silu(gate) * up.");
  m.def("linear_cuda_takes", &cuda_takes, nb::arg("input"), nb::arg("weight"), nb::arg("silu_and_mul_output") = false,
        nb::arg("few_rows_only") = false,
        "Whether linear takes input [M, K] over weight on CUDA, by their layout (kvserve/linear.h's\n"
        "linear_cuda_takes; the device must also be sm_80 or later); with few_rows_only, whether its\n"
        "few-rows kernel does (linear_rotary_and_cache's rows).");
  m.def("linear_rotary_and_cache", &linear_rotary_and_cache, nb::arg("out").noconvert(), nb::arg("input"),
        nb::arg("weight"), nb::arg("bias").none(), nb::arg("query").noconvert(), nb::arg("key").noconvert(),
        nb::arg("value"), nb::arg("cos"), nb::arg("sin"), nb::arg("key_cache").noconvert(),
        nb::arg("value_cache").noconvert(), nb::arg("slot_mapping"), nb::arg("stream") = 0,
        nb::arg("weight_scale") = nb::none(), nb::arg("weight_offset") = nb::none(),
        "linear(out, input, weight, bias), then rotary_and_cache(query, key, value, ...) over its columns, in\n"
        "one CUDA kernel: a layer's qkv projection at decode (query, key and value are the q, k and v\n"
        "columns of out; the weight may be codes, with weight_scale and weight_offset as for linear).");
  m.def("dequantize_weight", &dequantize_weight, nb::arg("out").noconvert(), nb::arg("weight"),
        nb::arg("weight_scale"), nb::arg("weight_offset") = nb::none(), nb::arg("stream") = 0,
        "out [N, K] = the weight linear's product over quantized codes stands for, rounded to out's dtype\n"
        "(CPU or CUDA): float8_e4m3fn [N, K] times its rows' weight_scale [N], or uint4 codes (uint8 [N, K / 2]),\n"
        "code * scale + offset with weight_scale and weight_offset [N, K / 32] (float32), or int8 codes\n"
        "[N, K], code * scale with weight_scale [N, K / 16].");
  m.def("linear_interleave_supported", &interleave_supported, nb::arg("weight"),
        "Whether linear takes this weight [N, K] interleaved on this CPU (bfloat16, AVX512-BF16, N % 4 == 0,\n"
        "K % 32 == 0).");
}

}  // namespace kvserve::bind
