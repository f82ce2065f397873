// Kernel bindings: validate every argument once (dtype, device, shape, contiguity), then call the
// framework-free kernel with raw pointers, the CPU or the CUDA one by where the arrays live. The GIL
// is released while a kernel runs.
//
// For CUDA arrays only what the host knows is checked here (dtypes, shapes, strides, one device);
// the metadata values (slots, block ids, seq_lens, query_start_loc) live in device memory and are
// checked by the kernels as they read them (see paged_attention.h), so that a call costs no
// device-to-host copy and can be captured in a CUDA graph.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>

#include <cmath>
#include <optional>
#include <string>

#include "array_check.h"
#include "bind.h"
#include "kernel_call.h"
#include "kvserve/config.h"
#include "kvserve/copy_blocks.h"
#include "kvserve/cpu_isa.h"
#include "kvserve/paged_attention.h"
#include "kvserve/reshape_and_cache.h"
#include "op_params.h"

namespace kvserve::bind {

namespace {

void copy_blocks(Array cache, Array block_pairs, uintptr_t stream) {
  check_dtype(cache, "cache", kCacheDtypes);
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

// [num_tokens, heads, head_dim], head_dim contiguous (tokens and heads may be strided).
void check_rows(const Array& array, const char* name, const char* layout) {
  check_ndim(array, name, 3, layout);
  check_contiguous(array, name, 2);
}

// [num_blocks, block_size, num_kv_heads, head_dim], each block contiguous; both caches
// alike (shape, dtype, strides) and of the dtype of `data` or 8-bit floats, and of the last two
// dims of `data`.
void check_caches(const Array& key_cache, const Array& value_cache, const Array& data, const char* data_name,
                  size_t heads_dim_of_data) {
  const char* layout = "[num_blocks, block_size, num_kv_heads, head_dim]";
  check_ndim(key_cache, "key_cache", 4, layout);
  check_cache_dtype(key_cache, "key_cache", data, data_name);
  if (heads_dim_of_data != 0) check_dim(key_cache, "key_cache", 2, data.shape(1), "num_kv_heads of key");
  check_dim(key_cache, "key_cache", 3, data.shape(2), (std::string("head_dim of ") + data_name).c_str());
  check_contiguous(key_cache, "key_cache", 1);
  check_same_shape(value_cache, "value_cache", key_cache, "key_cache");
  check_same_dtype(value_cache, "value_cache", key_cache, "key_cache");
  check_contiguous(value_cache, "value_cache", 1);
  check_same_stride(value_cache, "value_cache", key_cache, "key_cache", 0);
}

// Data pointer and token/head strides of a [num_tokens, heads, head_dim] array, into params fields.
template <class Pointer>
void set_rows(const Array& array, Pointer& data, int64_t& stride_token, int64_t& stride_head) {
  data = static_cast<Pointer>(array.data());
  stride_token = array.stride(0);
  stride_head = array.stride(1);
}

// The cache fields both kernels' params share, from checked caches.
template <class Params>
void set_caches(const Array& key_cache, const Array& value_cache, Params& p) {
  p.key_cache = static_cast<decltype(p.key_cache)>(key_cache.data());
  p.value_cache = static_cast<decltype(p.value_cache)>(value_cache.data());
  p.cache_stride_block = key_cache.stride(0);
  p.num_blocks = static_cast<int64_t>(key_cache.shape(0));
  p.block_size = static_cast<int64_t>(key_cache.shape(1));
  p.num_kv_heads = static_cast<int64_t>(key_cache.shape(2));
  p.head_dim = static_cast<int64_t>(key_cache.shape(3));
  p.cache_dtype = kernel_dtype(key_cache, "key_cache");
}

void check_vector(const Array& array, const char* name, std::initializer_list<nb::dlpack::dtype> dtypes,
                  int64_t length, const char* what) {
  check_dtype(array, name, dtypes);
  check_ndim(array, name, 1, what);
  check_dim(array, name, 0, length, what);
  check_contiguous(array, name);
}

void reshape_and_cache(Array key, Array value, Array key_cache, Array value_cache, Array slot_mapping,
                       uintptr_t stream) {
  const ReshapeAndCacheParams p = reshape_and_cache_params(key, value, key_cache, value_cache, slot_mapping);
  const bool cuda = on_one_device({{key, "key"}, {value, "value"}, {key_cache, "key_cache"},
                                   {value_cache, "value_cache"}, {slot_mapping, "slot_mapping"}});
  call_kernel(cuda, KVSERVE_KERNELS(reshape_and_cache), check_reshape_and_cache, check_reshape_and_cache_layout, p,
              key.device_id(), stream, "reshape_and_cache");
}

void paged_attention(Array out, Array query, Array key_cache, Array value_cache, Array block_table,
                     Array seq_lens, Array query_start_loc, double scale, bool causal,
                     std::optional<int64_t> sliding_window, std::optional<double> softcap,
                     std::optional<int64_t> num_splits, uintptr_t stream) {
  const char* layout = "[num_tokens, num_heads, head_dim]";
  check_dtype(query, "query", kFloatDtypes);
  check_rows(query, "query", layout);
  check_same_shape(out, "out", query, "query");
  check_same_dtype(out, "out", query, "query");
  check_rows(out, "out", layout);
  check_caches(key_cache, value_cache, query, "query", 0);
  check_dtype(block_table, "block_table", {kInt32});
  check_ndim(block_table, "block_table", 2, "[num_reqs, max_blocks_per_req]");
  check_contiguous(block_table, "block_table", 1);
  const int64_t num_reqs = static_cast<int64_t>(block_table.shape(0));
  check_vector(seq_lens, "seq_lens", {kInt32}, num_reqs, "[num_reqs] (rows of block_table)");
  check_vector(query_start_loc, "query_start_loc", {kInt32}, num_reqs + 1, "[num_reqs + 1]");
  if (sliding_window && *sliding_window < 1) {
    throw nb::value_error(("sliding_window: expected >= 1 or None, got " + std::to_string(*sliding_window)).c_str());
  }
  if (softcap && !(*softcap > 0 && std::isfinite(*softcap))) {
    throw nb::value_error(("softcap: expected a finite number > 0 or None, got " + std::to_string(*softcap)).c_str());
  }
  if (num_splits && *num_splits < 1) {
    throw nb::value_error(("num_splits: expected >= 1 or None, got " + std::to_string(*num_splits)).c_str());
  }
  const bool cuda = on_one_device({{query, "query"}, {out, "out"}, {key_cache, "key_cache"},
                                   {value_cache, "value_cache"}, {block_table, "block_table"},
                                   {seq_lens, "seq_lens"}, {query_start_loc, "query_start_loc"}});

  PagedAttentionParams p;
  set_rows(out, p.out, p.out_stride_token, p.out_stride_head);
  set_rows(query, p.query, p.query_stride_token, p.query_stride_head);
  set_caches(key_cache, value_cache, p);
  p.block_table = static_cast<const int32_t*>(block_table.data());
  p.block_table_stride = block_table.stride(0);
  p.seq_lens = static_cast<const int32_t*>(seq_lens.data());
  p.query_start_loc = static_cast<const int32_t*>(query_start_loc.data());
  p.dtype = kernel_dtype(query, "query");
  p.num_tokens = static_cast<int64_t>(query.shape(0));
  p.num_heads = static_cast<int64_t>(query.shape(1));
  p.num_reqs = num_reqs;
  p.max_blocks_per_req = static_cast<int64_t>(block_table.shape(1));
  p.scale = static_cast<float>(scale);
  p.causal = causal;
  p.sliding_window = sliding_window.value_or(0);
  p.softcap = static_cast<float>(softcap.value_or(0.0));
  p.num_splits = num_splits.value_or(0);
  call_kernel(cuda, KVSERVE_KERNELS(paged_attention), check_paged_attention, check_paged_attention_layout, p,
              query.device_id(), stream, "paged_attention");
}

}  // namespace

ReshapeAndCacheParams reshape_and_cache_params(const Array& key, const Array& value, const Array& key_cache,
                                               const Array& value_cache, const Array& slot_mapping) {
  check_dtype(key, "key", kFloatDtypes);
  check_rows(key, "key", "[num_tokens, num_kv_heads, head_dim]");
  check_same_shape(value, "value", key, "key");
  check_same_dtype(value, "value", key, "key");
  check_rows(value, "value", "[num_tokens, num_kv_heads, head_dim]");
  check_caches(key_cache, value_cache, key, "key", 1);
  check_vector(slot_mapping, "slot_mapping", {kInt64, kInt32}, static_cast<int64_t>(key.shape(0)), "[num_tokens]");

  ReshapeAndCacheParams p;
  set_rows(key, p.key, p.key_stride_token, p.key_stride_head);
  set_rows(value, p.value, p.value_stride_token, p.value_stride_head);
  set_caches(key_cache, value_cache, p);
  p.slot_mapping = slot_mapping.data();
  p.slot_mapping_dtype = kernel_dtype(slot_mapping, "slot_mapping");
  p.dtype = kernel_dtype(key, "key");
  p.num_tokens = static_cast<int64_t>(key.shape(0));
  return p;
}

void bind_ops(nb::module_& m) {
  m.def("copy_blocks", &copy_blocks, nb::arg("cache").noconvert(), nb::arg("block_pairs"),
        nb::arg("stream") = 0,
        "Copy whole blocks of `cache` [num_blocks, ...] in place: for each row {src, dst} of\n"
        "`block_pairs` [num_pairs, 2] (int64, host), block dst becomes a copy of block src.\n"
        "`stream` is the CUDA stream (an integer handle) for a CUDA cache.");
  m.def("reshape_and_cache", &reshape_and_cache, nb::arg("key"), nb::arg("value"),
        nb::arg("key_cache").noconvert(), nb::arg("value_cache").noconvert(), nb::arg("slot_mapping"),
        nb::arg("stream") = 0,
        "Write key/value [num_tokens, num_kv_heads, head_dim] into the caches [num_blocks, block_size,\n"
        "num_kv_heads, head_dim] at slot_mapping [num_tokens] (int32/int64; -1 skips a token).\n"
        "`stream` is the CUDA stream (an integer handle) for CUDA arrays.");
  m.def("paged_attention", &paged_attention, nb::arg("out").noconvert(), nb::arg("query"),
        nb::arg("key_cache"), nb::arg("value_cache"), nb::arg("block_table"), nb::arg("seq_lens"),
        nb::arg("query_start_loc"), nb::arg("scale"), nb::arg("causal") = true,
        nb::arg("sliding_window") = nb::none(), nb::arg("softcap") = nb::none(), nb::arg("num_splits") = nb::none(),
        nb::arg("stream") = 0,
        "Attention of query [num_tokens, num_heads, head_dim] over the paged KV cache, into out.\n"
        "See kvserve.ops.paged_attention for the contract.");
  m.def("cpu_isa", [] { return cpu_isa_name(cpu_isa()); },
        "The vector ISA the CPU kernels run with (capped by the KVSERVE_CPU_ISA environment variable).");
}

}  // namespace kvserve::bind
