// SchedulerOutput: the step's arrays as numpy views over the scheduler's buffers (no copies), and
// the SampleUpdate results of update_from_output.
#include <nanobind/ndarray.h>

#include <string>

#include "py_scheduler.h"

namespace kvserve::bind {

namespace {

template <typename T>
using Vector1D = nb::ndarray<nb::numpy, T, nb::ndim<1>, nb::c_contig>;
template <typename T>
using Matrix = nb::ndarray<nb::numpy, T, nb::ndim<2>, nb::c_contig>;

const SchedulerOutput& output_of(const PyStep& step) { return *step.out; }

// A view of `values[0, size)` kept alive by (and valid as long as) the step object.
template <typename T>
Vector1D<T> view(const PyStep& step, const std::vector<T>& values, size_t size) {
  return Vector1D<T>(const_cast<T*>(values.data()), {size}, nb::find(step));
}

template <typename T>
Matrix<T> view(const PyStep& step, const std::vector<T>& values, size_t rows, size_t cols) {
  return Matrix<T>(const_cast<T*>(values.data()), {rows, cols}, nb::find(step));
}

// The request ids (the caller's str objects) of `count` entries, entry i being in row row_of(i).
template <typename RowOf>
nb::list request_ids(const PyStep& step, size_t count, RowOf row_of) {
  const SchedulerOutput& out = output_of(step);
  const auto& ids = step.owner->ids;
  nb::list list = nb::steal<nb::list>(PyList_New(static_cast<Py_ssize_t>(count)));
  for (size_t i = 0; i < count; ++i) {
    const nb::object& id = ids[static_cast<size_t>(out.req_handles[static_cast<size_t>(row_of(i))])];
    PyList_SET_ITEM(list.ptr(), static_cast<Py_ssize_t>(i), id.inc_ref().ptr());
  }
  return list;
}

nb::list strings(const std::vector<std::string>& values) {
  nb::list list;
  for (const std::string& v : values) list.append(nb::str(v.data(), v.size()));
  return list;
}

// A struct sequence: 4 fields by position (the documented tuple), the others by name only,
// so `rid, i, tokens, reason = update` keeps working as fields are added.
PyTypeObject* sample_update_type = nullptr;

PyStructSequence_Field sample_update_fields[] = {
    {"request_id", "the request's id"},
    {"sample_index", "which of the request's n samples"},
    {"new_token_ids", "the tokens appended this step (list[int])"},
    {"finish_reason", "\"stop\", \"length\", \"abort\" or None while running"},
    {"stop_token_id", "the EOS or stop token that ended the sample, else None"},
    {"sampled_index", "its entry in the step's logits_indices (the row of its logprobs)"},
    {nullptr, nullptr},
};

PyStructSequence_Desc sample_update_desc = {
    "kvserve._C.SampleUpdate",
    "One sampled token applied to one sequence by Scheduler.update_from_output.",
    sample_update_fields,
    4,
};

nb::object finish_reason_object(FinishReason reason) {
  if (reason == FinishReason::kNone) return nb::none();
  const std::string_view name = finish_reason_name(reason);
  return nb::steal(PyUnicode_InternFromString(std::string(name).c_str()));
}

}  // namespace

nb::list sample_updates_to_list(const PyScheduler& scheduler, const std::vector<SampleUpdate>& updates) {
  nb::list list = nb::steal<nb::list>(PyList_New(static_cast<Py_ssize_t>(updates.size())));
  for (size_t i = 0; i < updates.size(); ++i) {
    const SampleUpdate& u = updates[i];
    PyObject* item = PyStructSequence_New(sample_update_type);
    if (item == nullptr) throw nb::python_error();
    PyList_SET_ITEM(list.ptr(), static_cast<Py_ssize_t>(i), item);
    PyObject* tokens = PyList_New(1);
    if (tokens == nullptr) throw nb::python_error();
    PyList_SET_ITEM(tokens, 0, PyLong_FromLong(u.token_id));
    PyStructSequence_SetItem(item, 0, scheduler.ids[static_cast<size_t>(u.req_handle)].inc_ref().ptr());
    PyStructSequence_SetItem(item, 1, PyLong_FromLong(u.sample_index));
    PyStructSequence_SetItem(item, 2, tokens);
    PyStructSequence_SetItem(item, 3, finish_reason_object(u.finish_reason).release().ptr());
    PyStructSequence_SetItem(item, 4, u.stop_token_id < 0 ? nb::none().release().ptr() : PyLong_FromLong(u.stop_token_id));
    PyStructSequence_SetItem(item, 5, PyLong_FromLong(u.sampled_index));
  }
  return list;
}

void bind_scheduler_output(nb::module_& m) {
  sample_update_type = PyStructSequence_NewType(&sample_update_desc);
  if (sample_update_type == nullptr) throw nb::python_error();
  m.attr("SampleUpdate") = nb::steal(reinterpret_cast<PyObject*>(sample_update_type));

  nb::class_<PyStep>(m, "SchedulerOutput",
                     "One step's batch. Arrays are numpy views of the scheduler's buffers, valid until the next\n"
                     "schedule(); treat them as read-only. Rows are scheduled sequences, tokens are flat over rows.")
      .def_prop_ro("num_reqs", [](const PyStep& s) { return output_of(s).num_reqs; })
      .def_prop_ro("num_tokens", [](const PyStep& s) { return output_of(s).num_tokens; })
      .def_prop_ro("num_sampled", [](const PyStep& s) { return output_of(s).num_sampled(); })
      .def_prop_ro("max_blocks_per_req", [](const PyStep& s) { return output_of(s).max_blocks_per_req; },
                   "block_table width: the most blocks any row holds (at least 1)")
      .def_prop_ro("input_ids", [](const PyStep& s) { const auto& o = output_of(s); return view(s, o.input_ids, o.input_ids.size()); },
                   "int32[num_tokens]: the tokens to compute")
      .def_prop_ro("positions", [](const PyStep& s) { const auto& o = output_of(s); return view(s, o.positions, o.positions.size()); },
                   "int64[num_tokens]: each token's position in its sequence")
      .def_prop_ro("slot_mapping", [](const PyStep& s) { const auto& o = output_of(s); return view(s, o.slot_mapping, o.slot_mapping.size()); },
                   "int64[num_tokens]: cache slot of each token's K/V (block * block_size + offset)")
      .def_prop_ro("query_start_loc", [](const PyStep& s) { const auto& o = output_of(s); return view(s, o.query_start_loc, o.query_start_loc.size()); },
                   "int32[num_reqs + 1]: row r owns tokens [query_start_loc[r], query_start_loc[r + 1])")
      .def_prop_ro("seq_lens", [](const PyStep& s) { const auto& o = output_of(s); return view(s, o.seq_lens, o.seq_lens.size()); },
                   "int32[num_reqs]: tokens of each row in the cache after this step")
      .def_prop_ro("block_table",
                   [](const PyStep& s) {
                     const auto& o = output_of(s);
                     return view(s, o.block_table, static_cast<size_t>(o.num_reqs), static_cast<size_t>(o.max_blocks_per_req));
                   },
                   "int32[num_reqs, max_blocks_per_req]: physical blocks of each row, 0 (the null block) past its end")
      .def_prop_ro("logits_indices", [](const PyStep& s) { const auto& o = output_of(s); return view(s, o.logits_indices, o.logits_indices.size()); },
                   "int64[num_sampled]: token rows whose hidden states are sampled")
      .def_prop_ro("sample_indices", [](const PyStep& s) { const auto& o = output_of(s); return view(s, o.sample_indices, o.sample_indices.size()); },
                   "int32[num_reqs]: which of its request's n samples each row is")
      .def_prop_ro("sampled_sample_indices",
                   [](const PyStep& s) { const auto& o = output_of(s); return view(s, o.sampled_sample_indices, o.sampled_sample_indices.size()); },
                   "int32[num_sampled]: the sample each logits_indices entry is for")
      .def_prop_ro("sampled_draft_offsets",
                   [](const PyStep& s) { const auto& o = output_of(s); return view(s, o.sampled_draft_offsets, o.sampled_draft_offsets.size()); },
                   "int32[num_sampled]: speculative decoding: how many of its row's draft tokens entry k's token\n"
                   "follows, the drafts input_ids[logits_indices[k] - j + 1 : logits_indices[k] + 1]; 0 without drafts")
      .def_prop_ro("blocks_to_copy",
                   [](const PyStep& s) {
                     const auto& o = output_of(s);
                     return view(s, o.blocks_to_copy, static_cast<size_t>(o.num_copies()), size_t{2});
                   },
                   "int64[num_copies, 2]: {src, dst} blocks to copy (copy-on-write) before the forward pass")
      .def_prop_ro("num_deferred", [](const PyStep& s) { return output_of(s).num_deferred(); })
      .def_prop_ro("deferred_input_tokens",
                   [](const PyStep& s) { const auto& o = output_of(s); return view(s, o.deferred_input_tokens, o.deferred_input_tokens.size()); },
                   "int64[num_deferred]: tokens whose input id (-1 in input_ids) is sampled by the previous step")
      .def_prop_ro("deferred_input_sources",
                   [](const PyStep& s) { const auto& o = output_of(s); return view(s, o.deferred_input_sources, o.deferred_input_sources.size()); },
                   "int32[num_deferred]: the entry of the previous step's sampled tokens each one takes")
      .def_prop_ro("req_ids",
                   [](const PyStep& s) { return request_ids(s, output_of(s).req_handles.size(), [](size_t i) { return i; }); },
                   "list[str]: the request id of each row")
      .def_prop_ro("sampled_req_ids",
                   [](const PyStep& s) {
                     const auto& rows = output_of(s).sampled_rows;
                     return request_ids(s, rows.size(), [&rows](size_t i) { return rows[i]; });
                   },
                   "list[str]: the request id of each logits_indices entry")
      .def_prop_ro("preempted_req_ids", [](const PyStep& s) { return strings(output_of(s).preempted_req_ids); },
                   "list[str]: requests preempted (by recompute) in this step")
      .def_prop_ro("finished_req_ids", [](const PyStep& s) { return strings(output_of(s).finished_req_ids); },
                   "list[str]: requests ended outside update_from_output (abort, finish_requests) since the last step");
}

}  // namespace kvserve::bind
