// Kernel bindings: validate every argument once (dtype, device, shape, contiguity), then call the
// framework-free kernel with raw pointers. The GIL is released while a kernel runs.
#include <nanobind/nanobind.h>

#include "array_check.h"
#include "bind.h"
#include "kvserve/config.h"
#include "kvserve/copy_blocks.h"

namespace kvserve::bind {

namespace {

void copy_blocks(Array cache, Array block_pairs, uintptr_t stream) {
  check_dtype(cache, "cache", {kFloat32, kFloat16, kBFloat16});
  if (cache.ndim() < 1) throw nb::value_error("cache: expected [num_blocks, ...], got a scalar");
  check_contiguous(cache, "cache");
  check_dtype(block_pairs, "block_pairs", {kInt64});
  check_ndim(block_pairs, "block_pairs", 2, "[num_pairs, 2]");
  check_dim(block_pairs, "block_pairs", 1, 2, "2 ({src, dst})");
  check_contiguous(block_pairs, "block_pairs");
  check_cpu(block_pairs, "block_pairs");

  const int64_t num_blocks = static_cast<int64_t>(cache.shape(0));
  const int64_t block_bytes = num_blocks == 0 ? 0 : static_cast<int64_t>(cache.nbytes()) / num_blocks;
  const auto* pairs = static_cast<const int64_t*>(block_pairs.data());
  const int64_t num_pairs = static_cast<int64_t>(block_pairs.shape(0));
  for (int64_t p = 0; p < 2 * num_pairs; ++p) {
    if (pairs[p] < 0 || pairs[p] >= num_blocks) {
      throw nb::value_error(("block_pairs: block id " + std::to_string(pairs[p]) +
                             " out of range [0, " + std::to_string(num_blocks) + ")").c_str());
    }
  }
  if (num_pairs == 0) return;

  Status status;
  if (is_cuda(cache)) {
#if KVSERVE_HAS_CUDA
    nb::gil_scoped_release release;
    status = copy_blocks_cuda(cache.data(), num_blocks, block_bytes, pairs, num_pairs,
                              reinterpret_cast<void*>(stream));
#else
    throw nb::value_error("cache: is a CUDA array, but this kvserve build has no CUDA kernels");
#endif
  } else {
    check_cpu(cache, "cache");
    nb::gil_scoped_release release;
    status = copy_blocks_cpu(cache.data(), num_blocks, block_bytes, pairs, num_pairs);
  }
  raise_on_error(status, "copy_blocks");
}

}  // namespace

void bind_ops(nb::module_& m) {
  m.def("copy_blocks", &copy_blocks, nb::arg("cache").noconvert(), nb::arg("block_pairs"),
        nb::arg("stream") = 0,
        "Copy whole blocks of `cache` [num_blocks, ...] in place: for each row {src, dst} of\n"
        "`block_pairs` [num_pairs, 2] (int64, host), block dst becomes a copy of block src.\n"
        "`stream` is the CUDA stream (an integer handle) for a CUDA cache.");
}

}  // namespace kvserve::bind
