// Checks that turn a wrong array into a clear Python error before any kernel sees it.
//
// Every check raises ValueError naming the argument, what was expected and what was given
// (nanobind itself raises TypeError when an argument is not an array at all).
#pragma once

#include <nanobind/ndarray.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "kvserve/dtype.h"
#include "kvserve/status.h"

namespace kvserve::bind {

namespace nb = nanobind;
using Array = nb::ndarray<>;

// The dtypes kvserve's kernels speak, as DLPack describes them.
inline constexpr nb::dlpack::dtype kFloat32{(uint8_t)nb::dlpack::dtype_code::Float, 32, 1};
inline constexpr nb::dlpack::dtype kFloat16{(uint8_t)nb::dlpack::dtype_code::Float, 16, 1};
inline constexpr nb::dlpack::dtype kBFloat16{(uint8_t)nb::dlpack::dtype_code::Bfloat, 16, 1};
inline constexpr nb::dlpack::dtype kInt32{(uint8_t)nb::dlpack::dtype_code::Int, 32, 1};
inline constexpr nb::dlpack::dtype kInt64{(uint8_t)nb::dlpack::dtype_code::Int, 64, 1};
inline constexpr std::initializer_list<nb::dlpack::dtype> kFloatDtypes = {kFloat32, kFloat16, kBFloat16};
// The bytes of uint4 weight codes, and int8 ones.
inline constexpr nb::dlpack::dtype kUInt8{(uint8_t)nb::dlpack::dtype_code::UInt, 8, 1};
inline constexpr nb::dlpack::dtype kInt8{(uint8_t)nb::dlpack::dtype_code::Int, 8, 1};
// torch.float8_e4m3fn and torch.float8_e5m2: the elements of an fp8 KV cache.
inline constexpr nb::dlpack::dtype kFloat8E4M3{(uint8_t)nb::dlpack::dtype_code::Float8_E4M3FN, 8, 1};
inline constexpr nb::dlpack::dtype kFloat8E5M2{(uint8_t)nb::dlpack::dtype_code::Float8_E5M2, 8, 1};
// The dtypes a KV cache may hold (which rows each serves: check_cache_dtype).
inline constexpr std::initializer_list<nb::dlpack::dtype> kCacheDtypes = {kFloat32, kFloat16, kBFloat16, kFloat8E4M3,
                                                                          kFloat8E5M2};

std::string dtype_name(nb::dlpack::dtype dtype);

// The dtype is one of `allowed`.
void check_dtype(const Array& array, const char* name, std::initializer_list<nb::dlpack::dtype> allowed);
// A KV cache holds the dtype of `rows` (the rows written into it or read against it), 8-bit floats,
// or for float32 rows 16-bit floats.
void check_cache_dtype(const Array& cache, const char* name, const Array& rows, const char* rows_name);
// The array has `ndim` dimensions; `layout` names them for the message, e.g. "[num_pairs, 2]".
void check_ndim(const Array& array, const char* name, size_t ndim, const char* layout);
// Dimension `dim` has size `expected`.
void check_dim(const Array& array, const char* name, size_t dim, int64_t expected, const char* what);
// Row-major contiguous (kernels read raw pointers) in dimensions first_dim.. (0: the whole array).
void check_contiguous(const Array& array, const char* name, size_t first_dim = 0);
// Same shape as `reference` (both names appear in the message).
void check_same_shape(const Array& array, const char* name, const Array& reference, const char* ref_name);
// Same dtype as `reference`.
void check_same_dtype(const Array& array, const char* name, const Array& reference, const char* ref_name);
// A contiguous vector of `size` elements in the dtype of `reference` (a weight or a bias); `layout`
// ("[hidden]") and `what` ("hidden of input") name them in the messages.
void check_vector_like(const Array& array, const char* name, const Array& reference, const char* ref_name,
                       int64_t size, const char* layout, const char* what);
// Same stride in dimension `dim` as `reference` (ignored where that dimension has size 1).
void check_same_stride(const Array& array, const char* name, const Array& reference, const char* ref_name,
                       size_t dim);
// Host memory (numpy, or a torch tensor on the CPU).
void check_cpu(const Array& array, const char* name);
// `array` lives on the same device as `reference`.
void check_same_device(const Array& array, const char* name, const Array& reference, const char* ref_name);

bool is_cuda(const Array& array);

// An array and its argument name, for the checks over several arrays at once.
struct Named {
  const Array& array;
  const char* name;
};

// Every array lives where the first one does: host memory, or one CUDA device. Returns true for a
// CUDA device, which this build must have kernels for (ValueError otherwise, as for any other device).
bool on_one_device(const std::vector<Named>& arrays);

// The kernels' name for the array's dtype (float32/16, bfloat16, int32/64; ValueError otherwise).
DType kernel_dtype(const Array& array, const char* name);

// Raises the Python error that matches a kernel's status (nothing for kOk).
void raise_on_error(Status status, const char* op);

// raise_on_error, except that after kInvalidArgument the kernel's params check says why.
template <class Params, class Check>
void raise_invalid(const Params& params, Check check, Status status, const char* op) {
  std::string why;
  if (status == Status::kInvalidArgument && check(params, &why) != Status::kOk) {
    throw nb::value_error((std::string(op) + ": " + why).c_str());
  }
  raise_on_error(status, op);
}

}  // namespace kvserve::bind
