#include "array_check.h"

#include <stdexcept>

#include "kvserve/config.h"

namespace kvserve::bind {

std::string dtype_name(nb::dlpack::dtype dtype) {
  const char* kind = "?";
  switch (static_cast<nb::dlpack::dtype_code>(dtype.code)) {
    case nb::dlpack::dtype_code::Int: kind = "int"; break;
    case nb::dlpack::dtype_code::UInt: kind = "uint"; break;
    case nb::dlpack::dtype_code::Float: kind = "float"; break;
    case nb::dlpack::dtype_code::Bfloat: kind = "bfloat"; break;
    case nb::dlpack::dtype_code::Complex: kind = "complex"; break;
    case nb::dlpack::dtype_code::Bool: return "bool";
    case nb::dlpack::dtype_code::Float8_E4M3FN: return "float8_e4m3fn";
    case nb::dlpack::dtype_code::Float8_E5M2: return "float8_e5m2";
    default: break;
  }
  return std::string(kind) + std::to_string(dtype.bits);
}

static std::string device_name(const Array& array) {
  switch (array.device_type()) {
    case nb::device::cpu::value: return "cpu";
    case nb::device::cuda::value: return "cuda:" + std::to_string(array.device_id());
    case nb::device::rocm::value: return "rocm:" + std::to_string(array.device_id());
    default: return "device type " + std::to_string(array.device_type());
  }
}

// "[2, 3]" (shape) or "(3, 1)" (strides). Built with std::to_string, not an ostringstream: on a GPU
// image whose g++ is not the libstdc++ that the process loaded first, the stream's number formatting
// crashed (seen on an H200 machine).
static std::string dims_string(const Array& array, bool strides) {
  std::string s = strides ? "(" : "[";
  for (size_t i = 0; i < array.ndim(); ++i) {
    if (i) s += ", ";
    s += strides ? std::to_string(array.stride(i)) : std::to_string(array.shape(i));
  }
  return s + (strides ? ")" : "]");
}

static std::string shape_string(const Array& array) { return dims_string(array, false); }
static std::string strides_string(const Array& array) { return dims_string(array, true); }

void check_dtype(const Array& array, const char* name, std::initializer_list<nb::dlpack::dtype> allowed) {
  for (const auto& dtype : allowed) {
    if (array.dtype() == dtype) return;
  }
  std::string expected;
  for (const auto& dtype : allowed) expected += (expected.empty() ? "" : " or ") + dtype_name(dtype);
  throw nb::value_error((std::string(name) + ": expected dtype " + expected + ", got " +
                         dtype_name(array.dtype())).c_str());
}

void check_cache_dtype(const Array& cache, const char* name, const Array& rows, const char* rows_name) {
  const nb::dlpack::dtype dtype = cache.dtype();
  for (const auto& known : kCacheDtypes) {
    if (dtype == known && cache_dtype_serves(kernel_dtype(cache, name), kernel_dtype(rows, rows_name))) return;
  }
  throw nb::value_error((std::string(name) + ": expected the dtype of " + rows_name + " (" + dtype_name(rows.dtype()) +
                         ") or float8_e4m3fn or float8_e5m2 (or for float32 rows float16 or bfloat16), got " +
                         dtype_name(dtype)).c_str());
}

void check_ndim(const Array& array, const char* name, size_t ndim, const char* layout) {
  if (array.ndim() != ndim) {
    throw nb::value_error((std::string(name) + ": expected " + std::to_string(ndim) + " dimensions " +
                           layout + ", got shape " + shape_string(array)).c_str());
  }
}

void check_dim(const Array& array, const char* name, size_t dim, int64_t expected, const char* what) {
  if (static_cast<int64_t>(array.shape(dim)) != expected) {
    throw nb::value_error((std::string(name) + ": dimension " + std::to_string(dim) + " must be " +
                           what + " = " + std::to_string(expected) + ", got shape " +
                           shape_string(array)).c_str());
  }
}

void check_vector_like(const Array& array, const char* name, const Array& reference, const char* ref_name,
                       int64_t size, const char* layout, const char* what) {
  check_same_dtype(array, name, reference, ref_name);
  check_ndim(array, name, 1, layout);
  check_dim(array, name, 0, size, what);
  check_contiguous(array, name);
}

void check_contiguous(const Array& array, const char* name, size_t first_dim) {
  int64_t expected = 1;
  for (size_t i = array.ndim(); i-- > first_dim;) {
    if (array.shape(i) != 1 && array.stride(i) != expected) {
      const std::string what = first_dim == 0 ? "a contiguous array"
                                              : "dimensions " + std::to_string(first_dim) + ".. contiguous";
      throw nb::value_error((std::string(name) + ": expected " + what + ", got strides " + strides_string(array) +
                             " for shape " + shape_string(array) + " (call .contiguous() first)").c_str());
    }
    expected *= static_cast<int64_t>(array.shape(i));
  }
}

void check_cpu(const Array& array, const char* name) {
  if (array.device_type() != nb::device::cpu::value) {
    throw nb::value_error((std::string(name) + ": expected a CPU array, got one on " +
                           device_name(array)).c_str());
  }
}

void check_same_device(const Array& array, const char* name, const Array& reference, const char* ref_name) {
  if (array.device_type() != reference.device_type() || array.device_id() != reference.device_id()) {
    throw nb::value_error((std::string(name) + " is on " + device_name(array) + " but " + ref_name +
                           " is on " + device_name(reference) + ": both must be on one device").c_str());
  }
}

void check_same_shape(const Array& array, const char* name, const Array& reference, const char* ref_name) {
  bool same = array.ndim() == reference.ndim();
  for (size_t i = 0; same && i < array.ndim(); ++i) same = array.shape(i) == reference.shape(i);
  if (!same) {
    throw nb::value_error((std::string(name) + ": expected the shape of " + ref_name + " " + shape_string(reference) +
                           ", got " + shape_string(array)).c_str());
  }
}

void check_same_dtype(const Array& array, const char* name, const Array& reference, const char* ref_name) {
  if (array.dtype() != reference.dtype()) {
    throw nb::value_error((std::string(name) + ": expected the dtype of " + ref_name + " (" +
                           dtype_name(reference.dtype()) + "), got " + dtype_name(array.dtype())).c_str());
  }
}

void check_same_stride(const Array& array, const char* name, const Array& reference, const char* ref_name,
                       size_t dim) {
  if (array.shape(dim) != 1 && array.stride(dim) != reference.stride(dim)) {
    throw nb::value_error((std::string(name) + ": expected the strides of " + ref_name + " " +
                           strides_string(reference) + ", got " + strides_string(array)).c_str());
  }
}

DType kernel_dtype(const Array& array, const char* name) {
  const nb::dlpack::dtype dtype = array.dtype();
  if (dtype == kFloat32) return DType::kFloat32;
  if (dtype == kFloat16) return DType::kFloat16;
  if (dtype == kBFloat16) return DType::kBFloat16;
  if (dtype == kInt32) return DType::kInt32;
  if (dtype == kInt64) return DType::kInt64;
  if (dtype == kFloat8E4M3) return DType::kFloat8E4M3;
  if (dtype == kFloat8E5M2) return DType::kFloat8E5M2;
  throw nb::value_error((std::string(name) + ": no kernel dtype for " + dtype_name(dtype)).c_str());
}

bool is_cuda(const Array& array) { return array.device_type() == nb::device::cuda::value; }

bool on_one_device(const std::vector<Named>& arrays) {
  const Named& first = *arrays.begin();
  if (!is_cuda(first.array)) check_cpu(first.array, first.name);
  for (const Named& other : arrays) check_same_device(other.array, other.name, first.array, first.name);
  if (is_cuda(first.array) && !KVSERVE_HAS_CUDA) {
    throw nb::value_error((std::string(first.name) + ": is on " + device_name(first.array) +
                           ", but this kvserve build has no CUDA kernels").c_str());
  }
  return is_cuda(first.array);
}

void raise_on_error(Status status, const char* op) {
  switch (status) {
    case Status::kOk: return;
    case Status::kInvalidArgument:
    case Status::kUnsupported:
      throw nb::value_error((std::string(op) + ": " + status_string(status)).c_str());
    case Status::kDeviceError:
      throw std::runtime_error(std::string(op) + ": " + status_string(status));
  }
}

}  // namespace kvserve::bind
