#include "token_ids.h"

#include <limits>
#include <string>

#include "array_check.h"

namespace kvserve::bind {

namespace {

int32_t to_int32(int64_t value, const char* name, size_t i) {
  if (value < std::numeric_limits<int32_t>::min() || value > std::numeric_limits<int32_t>::max()) {
    throw nb::value_error((std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(value) +
                           " is out of the int32 range of token ids").c_str());
  }
  return static_cast<int32_t>(value);
}

std::vector<int32_t> from_sequence(nb::handle obj, const char* name) {
  const Py_ssize_t size = PySequence_Fast_GET_SIZE(obj.ptr());
  PyObject** items = PySequence_Fast_ITEMS(obj.ptr());
  std::vector<int32_t> ids(static_cast<size_t>(size));
  for (Py_ssize_t i = 0; i < size; ++i) {
    if (PyBool_Check(items[i]) || !PyIndex_Check(items[i])) {
      throw nb::value_error((std::string(name) + "[" + std::to_string(i) + "]: expected an integer token id, got " +
                             Py_TYPE(items[i])->tp_name).c_str());
    }
    int overflow = 0;
    nb::object index = nb::steal(PyNumber_Index(items[i]));
    if (!index.is_valid()) throw nb::python_error();
    const long long value = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
    if (overflow != 0) {
      throw nb::value_error((std::string(name) + "[" + std::to_string(i) + "] is out of the int32 range of token ids").c_str());
    }
    ids[static_cast<size_t>(i)] = to_int32(value, name, static_cast<size_t>(i));
  }
  return ids;
}

template <typename T>
void copy_strided(const Array& array, std::vector<int32_t>& ids, const char* name) {
  const auto* data = static_cast<const T*>(array.data());
  const int64_t stride = array.stride(0);
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = to_int32(static_cast<int64_t>(data[static_cast<int64_t>(i) * stride]), name, i);
  }
}

std::vector<int32_t> from_array(const Array& array, const char* name) {
  check_cpu(array, name);
  check_ndim(array, name, 1, "[num_tokens]");
  std::vector<int32_t> ids(array.shape(0));
  const auto dtype = array.dtype();
  if (dtype == kInt32) {
    copy_strided<int32_t>(array, ids, name);
  } else if (dtype == kInt64) {
    copy_strided<int64_t>(array, ids, name);
  } else if (dtype == nb::dtype<uint32_t>()) {
    copy_strided<uint32_t>(array, ids, name);
  } else if (dtype == nb::dtype<int16_t>()) {
    copy_strided<int16_t>(array, ids, name);
  } else {
    throw nb::value_error((std::string(name) + ": expected integer token ids (int32, int64, uint32 or int16), got dtype " +
                           dtype_name(dtype)).c_str());
  }
  return ids;
}

}  // namespace

std::vector<int32_t> token_ids_from_python(nb::handle obj, const char* name) {
  if (PyList_Check(obj.ptr()) || PyTuple_Check(obj.ptr())) return from_sequence(obj, name);
  Array array;
  if (nb::try_cast(obj, array, /*convert=*/false)) return from_array(array, name);
  throw nb::value_error((std::string(name) + ": expected a list of ints or a 1-D integer array, got " +
                         Py_TYPE(obj.ptr())->tp_name).c_str());
}

}  // namespace kvserve::bind
