// Binding of decoder_stack.h: ops.DecoderStack(layers, final_norm, ...) checks and keeps every
// weight and cache once; calling it runs a step over the embeddings in place. The object holds
// references to its arrays, so they outlive it whatever the caller drops. ops.DecoderLoRA(stack,
// layers) does the same for one LoRA adapter's deltas, which a step may then run with.
#include <nanobind/nanobind.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "array_check.h"
#include "bind.h"
#include "kvserve/decoder_stack.h"
#include "linear_weight.h"

namespace kvserve::bind {

namespace {

class PyDecoderLoRA;

class PyDecoderStack {
 public:
  PyDecoderStack(std::vector<nb::dict> layers, Array final_norm, int64_t num_heads, int64_t num_kv_heads,
                 int64_t head_dim, double eps, double scale) {
    check_dtype(final_norm, "final_norm", kFloatDtypes);
    reference_ = final_norm;  // every other array takes its dtype
    check_vector(final_norm, "final_norm", -1);
    if (layers.empty()) throw nb::value_error("layers: expected at least one layer");
    s_.dtype = kernel_dtype(final_norm, "final_norm");
    s_.hidden_size = static_cast<int64_t>(final_norm.shape(0));
    s_.num_heads = num_heads;
    s_.num_kv_heads = num_kv_heads;
    s_.head_dim = head_dim;
    s_.eps = static_cast<float>(eps);
    s_.scale = static_cast<float>(scale);
    s_.final_norm = keep(final_norm);
    if (num_heads <= 0 || num_kv_heads <= 0 || head_dim <= 0) {
      throw nb::value_error("num_heads, num_kv_heads and head_dim must be positive");
    }
    for (size_t i = 0; i < layers.size(); ++i) s_.layers.push_back(parse_layer(layers[i], i));
    std::string why;
    if (check_decoder_stack(s_, &why) != Status::kOk) throw nb::value_error(why.c_str());
  }

  // Runs one step (below, after PyDecoderLoRA).
  void run(Array hidden, Array cos, Array sin, Array slot_mapping, Array block_table, Array seq_lens,
           Array query_start_loc, const PyDecoderLoRA* lora);

  size_t num_layers() const { return s_.layers.size(); }
  const DecoderStack& stack() const { return s_; }
  const Array& reference() const { return reference_; }

 private:
  const void* keep(const Array& array) {
    owners_.push_back(array);
    return array.data();
  }

  // A 1-D weight of `size` elements (-1: any), in the weights' dtype, on the CPU.
  void check_vector(const Array& array, const char* name, int64_t size) {
    check_same_dtype(array, name, reference_, "final_norm");
    check_ndim(array, name, 1, "[size]");
    if (size >= 0) check_dim(array, name, 0, size, "the model's size");
    check_contiguous(array, name);
    check_cpu(array, name);
  }

  // A weight [rows, cols] in one of ops.linear's layouts and element types (linear_weight.h),
  // contiguous throughout: the stack reads rows in_features apart. A quantized one comes with its
  // scales, layer[key + "_scale"], and uint4 codes with their offsets, layer[key + "_offset"]; any
  // may come with the order it takes its input's columns in, layer[key + "_order"] (int64 [cols]).
  // Or in parts of different kinds of codes, layer[key + "_parts"]: a list of dicts, each a part's
  // "w", "w_scale", "w_offset" (as above) and "rows", their rows adding up to `rows`.
  DecoderWeight check_matrix(const nb::dict& layer, const char* key, size_t index, int64_t rows, int64_t cols) {
    const std::string parts_key = std::string(key) + "_parts";
    DecoderWeight w = layer.contains(parts_key.c_str()) && !layer[parts_key.c_str()].is_none()
                          ? check_parts(layer[parts_key.c_str()], parts_key, index, rows, cols)
                          : check_codes(layer, key, index, rows, cols);
    const std::string order_key = std::string(key) + "_order";
    if (const auto order = get(layer, order_key.c_str(), false, index)) {
      check_index(*order, order_key.c_str(), kInt64, 1, "[in_features]");
      check_dim(*order, order_key.c_str(), 0, cols, "in_features");
      const auto* columns = static_cast<const int64_t*>(order->data());
      if (std::any_of(columns, columns + cols, [cols](int64_t k) { return k < 0 || k >= cols; })) {
        throw nb::value_error(("layers[" + std::to_string(index) + "]['" + order_key +
                               "']: a column outside [0, in_features)").c_str());
      }
      w.input_order = static_cast<const int64_t*>(keep(*order));
    }
    return w;
  }

  DecoderWeight check_parts(nb::handle parts, const std::string& parts_key, size_t index, int64_t rows, int64_t cols) {
    const std::string where = "layers[" + std::to_string(index) + "]['" + parts_key + "']";
    nb::list list;
    if (!nb::try_cast(parts, list)) throw nb::type_error((where + ": expected a list of dicts").c_str());
    DecoderWeight w;
    int64_t total = 0;
    for (nb::handle item : list) {
      nb::dict part;
      int64_t part_rows = 0;
      if (!nb::try_cast(item, part) || !part.contains("rows") || !nb::try_cast(part["rows"], part_rows) ||
          part_rows <= 0) {
        throw nb::type_error((where + ": expected dicts of w, w_scale, w_offset and rows > 0").c_str());
      }
      DecoderWeight codes = check_codes(part, "w", index, part_rows, cols);
      codes.rows = part_rows;
      total += part_rows;
      w.parts.push_back(std::move(codes));
    }
    if (total != rows) {
      throw nb::value_error((where + ": the parts' rows add up to " + std::to_string(total) + ", expected " +
                             std::to_string(rows)).c_str());
    }
    return w;
  }

  // check_matrix's one weight, without its order.
  DecoderWeight check_codes(const nb::dict& layer, const char* key, size_t index, int64_t rows, int64_t cols) {
    const Array array = *get(layer, key, true, index);
    DecoderWeight w;
    const std::optional<DType> weight_dtype = check_weight_dtype(array, key, reference_, "final_norm");
    w.interleaved = check_linear_weight(array, key, cols, "in_features");
    w.weight_dtype = weight_dtype;
    check_linear_out_features(array, key, rows);
    check_contiguous(array, key);
    check_cpu(array, key);
    w.data = keep(array);
    const std::string scale_key = std::string(key) + "_scale", offset_key = std::string(key) + "_offset";
    const auto scale = get(layer, scale_key.c_str(), false, index);
    const auto offset = get(layer, offset_key.c_str(), false, index);
    check_weight_scales(weight_dtype, scale, offset, "layers[" + std::to_string(index) + "]: ", scale_key, offset_key,
                        rows, cols);
    if (scale) {
      check_cpu(*scale, scale_key.c_str());
      w.scale = static_cast<const float*>(keep(*scale));
    }
    if (offset) {
      check_cpu(*offset, offset_key.c_str());
      w.offset = static_cast<const float*>(keep(*offset));
    }
    return w;
  }

  static void check_index(const Array& array, const char* name, nb::dlpack::dtype dtype, size_t ndim,
                          const char* layout) {
    check_dtype(array, name, {dtype});
    check_ndim(array, name, ndim, layout);
    check_contiguous(array, name);
    check_cpu(array, name);
  }

  static std::optional<Array> get(const nb::dict& layer, const char* key, bool required, size_t index) {
    if (!layer.contains(key) || layer[key].is_none()) {
      if (required) {
        throw nb::value_error(("layers[" + std::to_string(index) + "]: missing '" + key + "'").c_str());
      }
      return std::nullopt;
    }
    Array array;
    if (!nb::try_cast(layer[key], array)) {
      throw nb::type_error(("layers[" + std::to_string(index) + "]['" + key + "']: expected an array").c_str());
    }
    return array;
  }

  DecoderLayerWeights parse_layer(const nb::dict& layer, size_t index) {
    const int64_t h = s_.hidden_size, q = s_.num_heads * s_.head_dim, kv = s_.num_kv_heads * s_.head_dim;
    DecoderLayerWeights w;
    auto vector = [&](const char* key, int64_t size, bool required) -> const void* {
      auto array = get(layer, key, required, index);
      if (!array) return nullptr;
      check_vector(*array, key, size);
      return keep(*array);
    };
    Array down = *get(layer, "down", true, index);
    if (!is_interleaved(down)) check_ndim(down, "down", 2, "[hidden, intermediate]");
    if (index == 0) s_.intermediate_size = linear_in_features(down);
    const int64_t inter = s_.intermediate_size;
    w.down = check_matrix(layer, "down", index, h, inter);
    w.input_norm = vector("input_norm", h, true);
    w.post_norm = vector("post_norm", h, true);
    w.q_norm = vector("q_norm", s_.head_dim, false);
    w.k_norm = vector("k_norm", s_.head_dim, false);
    w.qkv_bias = vector("qkv_bias", q + 2 * kv, false);
    w.o_bias = vector("o_bias", h, false);
    w.gate_up_bias = vector("gate_up_bias", 2 * inter, false);
    w.down_bias = vector("down_bias", h, false);
    w.qkv = check_matrix(layer, "qkv", index, q + 2 * kv, h);
    w.o = check_matrix(layer, "o", index, h, q);
    w.gate_up = check_matrix(layer, "gate_up", index, 2 * inter, h);
    for (auto [key, slot] : {std::pair{"key_cache", &w.key_cache}, std::pair{"value_cache", &w.value_cache}}) {
      Array cache = *get(layer, key, true, index);
      check_ndim(cache, key, 4, "[num_blocks, block_size, num_kv_heads, head_dim]");
      if (s_.num_blocks == 0) {
        check_cache_dtype(cache, key, reference_, "final_norm");
        cache_reference_ = cache;
        s_.cache_dtype = kernel_dtype(cache, key);
        s_.num_blocks = static_cast<int64_t>(cache.shape(0));
        s_.block_size = static_cast<int64_t>(cache.shape(1));
      }
      check_same_dtype(cache, key, cache_reference_, "the first cache");
      check_dim(cache, key, 0, s_.num_blocks, "num_blocks of the first cache");
      check_dim(cache, key, 1, s_.block_size, "block_size of the first cache");
      check_dim(cache, key, 2, s_.num_kv_heads, "num_kv_heads");
      check_dim(cache, key, 3, s_.head_dim, "head_dim");
      check_contiguous(cache, key);
      check_cpu(cache, key);
      *slot = const_cast<void*>(keep(cache));
    }
    if (layer.contains("sliding_window") && !layer["sliding_window"].is_none()) {
      w.sliding_window = nb::cast<int64_t>(layer["sliding_window"]);
    }
    return w;
  }

  DecoderStack s_;
  Array reference_;
  Array cache_reference_;  // the first cache: every other takes its dtype
  std::vector<Array> owners_;
};

// One LoRA adapter's deltas for a stack: per layer, a dict of the products it adapts ("qkv", "o",
// "gate_up", "down"), each (a [rank, in_features], b [out_features, rank]) in the stack's dtype.
class PyDecoderLoRA {
 public:
  PyDecoderLoRA(const PyDecoderStack& stack, std::vector<nb::dict> layers) : stack_(&stack) {
    const DecoderStack& s = stack.stack();
    if (layers.size() != s.layers.size()) {
      throw nb::value_error(("layers: expected one per layer of the stack (" + std::to_string(s.layers.size()) +
                             "), got " + std::to_string(layers.size()))
                                .c_str());
    }
    const int64_t h = s.hidden_size, q = s.num_heads * s.head_dim, kv = s.num_kv_heads * s.head_dim;
    const int64_t inter = s.intermediate_size;
    for (size_t i = 0; i < layers.size(); ++i) {
      DecoderLayerLoRA l;
      for (auto [key, delta, in, out] : {std::tuple{"qkv", &l.qkv, h, q + 2 * kv}, std::tuple{"o", &l.o, q, h},
                                         std::tuple{"gate_up", &l.gate_up, h, 2 * inter},
                                         std::tuple{"down", &l.down, inter, h}}) {
        if (!layers[i].contains(key) || layers[i][key].is_none()) continue;
        const std::string where = "layers[" + std::to_string(i) + "]['" + key + "']";
        std::pair<Array, Array> pair;
        if (!nb::try_cast(layers[i][key], pair)) {
          throw nb::type_error((where + ": expected a pair of arrays (a, b)").c_str());
        }
        auto& [a, b] = pair;
        const std::string a_name = where + " a", b_name = where + " b";
        for (auto [array, name] : {Named{a, a_name.c_str()}, Named{b, b_name.c_str()}}) {
          check_same_dtype(array, name, stack.reference(), "the stack's weights");
          check_ndim(array, name, 2, "[rows, columns]");
        }
        const int64_t rank = static_cast<int64_t>(a.shape(0));
        if (rank <= 0) throw nb::value_error((a_name + ": expected a rank of at least 1").c_str());
        check_dim(a, a_name.c_str(), 1, in, "in_features of the product");
        check_dim(b, b_name.c_str(), 0, out, "out_features of the product");
        check_dim(b, b_name.c_str(), 1, rank, "the rank (rows of a)");
        for (auto [array, name] : {Named{a, a_name.c_str()}, Named{b, b_name.c_str()}}) {
          check_contiguous(array, name);
          check_cpu(array, name);
        }
        owners_.push_back(a);
        owners_.push_back(b);
        *delta = LoRADelta{a.data(), b.data(), rank};
      }
      layers_.push_back(l);
    }
  }

  const PyDecoderStack* stack() const { return stack_; }
  const std::vector<DecoderLayerLoRA>& layers() const { return layers_; }

 private:
  const PyDecoderStack* stack_;
  std::vector<DecoderLayerLoRA> layers_;
  std::vector<Array> owners_;
};

void PyDecoderStack::run(Array hidden, Array cos, Array sin, Array slot_mapping, Array block_table,
                         Array seq_lens, Array query_start_loc, const PyDecoderLoRA* lora) {
  if (lora != nullptr && lora->stack() != this) {
    throw nb::value_error("lora: built for another decoder stack");
  }
  const int64_t h = s_.hidden_size;
  check_same_dtype(hidden, "hidden", reference_, "the weights");
  check_ndim(hidden, "hidden", 2, "[num_tokens, hidden]");
  check_dim(hidden, "hidden", 1, h, "hidden size of the weights");
  check_contiguous(hidden, "hidden");
  check_cpu(hidden, "hidden");
  const int64_t num_tokens = static_cast<int64_t>(hidden.shape(0));
  for (auto [array, name] : {Named{cos, "cos"}, Named{sin, "sin"}}) {
    check_same_dtype(array, name, reference_, "the weights");
    check_ndim(array, name, 2, "[num_tokens, head_dim / 2]");
    check_dim(array, name, 0, num_tokens, "num_tokens of hidden");
    check_dim(array, name, 1, s_.head_dim / 2, "head_dim / 2");
    check_contiguous(array, name);
    check_cpu(array, name);
  }
  check_index(slot_mapping, "slot_mapping", kInt64, 1, "[num_tokens]");
  check_dim(slot_mapping, "slot_mapping", 0, num_tokens, "num_tokens of hidden");
  check_dtype(block_table, "block_table", {kInt32});
  check_ndim(block_table, "block_table", 2, "[num_reqs, max_blocks_per_req]");
  check_contiguous(block_table, "block_table", 1);
  check_cpu(block_table, "block_table");
  const int64_t num_reqs = static_cast<int64_t>(block_table.shape(0));
  check_index(seq_lens, "seq_lens", kInt32, 1, "[num_reqs]");
  check_dim(seq_lens, "seq_lens", 0, num_reqs, "num_reqs of block_table");
  check_index(query_start_loc, "query_start_loc", kInt32, 1, "[num_reqs + 1]");
  check_dim(query_start_loc, "query_start_loc", 0, num_reqs + 1, "num_reqs + 1");
  DecoderStepParams step;
  step.hidden = hidden.data();
  step.cos = cos.data();
  step.sin = sin.data();
  step.slot_mapping = static_cast<const int64_t*>(slot_mapping.data());
  step.block_table = static_cast<const int32_t*>(block_table.data());
  step.seq_lens = static_cast<const int32_t*>(seq_lens.data());
  step.query_start_loc = static_cast<const int32_t*>(query_start_loc.data());
  step.num_tokens = num_tokens;
  step.num_reqs = num_reqs;
  step.max_blocks_per_req = static_cast<int64_t>(block_table.shape(1));
  step.block_table_stride = block_table.stride(0);
  step.lora = lora != nullptr ? lora->layers().data() : nullptr;
  std::string why;
  Status status;
  {
    nb::gil_scoped_release release;
    status = decoder_stack_cpu(s_, step, &why);
  }
  if (status == Status::kInvalidArgument && !why.empty()) throw nb::value_error(("decoder stack: " + why).c_str());
  raise_on_error(status, "decoder stack");
}

}  // namespace

void bind_decoder_stack(nb::module_& m) {
  nb::class_<PyDecoderStack>(m, "DecoderStack",
                             "Every decoder layer of a Llama-family model and the final norm, run in one call\n"
                             "on the CPU (see kvserve/decoder_stack.h). Built once from each layer's arrays\n"
                             "(a dict per layer: input_norm, qkv, qkv_bias, q_norm, k_norm, o, o_bias, post_norm,\n"
                             "gate_up, gate_up_bias, down, down_bias, key_cache, value_cache, sliding_window; for\n"
                             "quantized products (ops.linear's), their float32 scales: qkv_scale, o_scale,\n"
                             "gate_up_scale, down_scale, and for uint4 codes their offsets: qkv_offset, ...).")
      .def(nb::init<std::vector<nb::dict>, Array, int64_t, int64_t, int64_t, double, double>(), nb::arg("layers"),
           nb::arg("final_norm"), nb::arg("num_heads"), nb::arg("num_kv_heads"), nb::arg("head_dim"), nb::arg("eps"),
           nb::arg("scale"))
      .def("__call__", &PyDecoderStack::run, nb::arg("hidden").noconvert(), nb::arg("cos"), nb::arg("sin"),
           nb::arg("slot_mapping"), nb::arg("block_table"), nb::arg("seq_lens"), nb::arg("query_start_loc"),
           nb::arg("lora") = nb::none(),
           "Run the step in place: hidden [num_tokens, hidden] holds the embeddings, then the final norm's\n"
           "output; the layers' caches receive the step's keys and values. lora: a DecoderLoRA of this\n"
           "stack, the adapter every token runs with.")
      .def_prop_ro("num_layers", &PyDecoderStack::num_layers);
  nb::class_<PyDecoderLoRA>(m, "DecoderLoRA",
                            "One LoRA adapter's deltas for a DecoderStack (checked and kept once): a dict per\n"
                            "layer of the products it adapts, 'qkv', 'o', 'gate_up', 'down', each (a [rank, in],\n"
                            "b [out, rank]) in the stack's dtype.")
      .def(nb::init<const PyDecoderStack&, std::vector<nb::dict>>(), nb::arg("stack"), nb::arg("layers"),
           nb::keep_alive<1, 2>());
}

}  // namespace kvserve::bind
