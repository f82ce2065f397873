// The scheduler in Python: SchedulerConfig, Scheduler, SchedulerStats. Errors from the core
// (std::invalid_argument) arrive as ValueError; calls out of order (std::logic_error) as RuntimeError.
// The GIL stays held: a step takes microseconds, and the scheduler is not thread-safe.
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/string_view.h>
#include <nanobind/stl/vector.h>

#include "bind.h"
#include "py_scheduler.h"
#include "token_ids.h"

namespace kvserve::bind {

namespace {

using SampledIds = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

void bind_config(nb::module_& m) {
  nb::class_<SchedulerConfig>(m, "SchedulerConfig", "The scheduler's limits (names as in vLLM's engine arguments).")
      .def(
          "__init__",
          [](SchedulerConfig* c, int32_t num_blocks, int32_t block_size, int32_t max_num_seqs,
             int32_t max_num_batched_tokens, int32_t max_model_len, bool enable_prefix_caching,
             bool enable_chunked_prefill, int32_t long_prefill_token_threshold, int32_t num_speculative_tokens,
             int32_t prompt_lookup_min, int32_t prompt_lookup_max, int32_t speculative_disable_by_batch_size) {
            new (c) SchedulerConfig{num_blocks,           block_size,           max_num_seqs,
                                    max_num_batched_tokens, max_model_len,      enable_prefix_caching,
                                    enable_chunked_prefill, num_speculative_tokens, prompt_lookup_min,
                                    prompt_lookup_max,      speculative_disable_by_batch_size,
                                    long_prefill_token_threshold};
            validate(*c);
          },
          nb::kw_only(), nb::arg("num_blocks"), nb::arg("block_size") = 16, nb::arg("max_num_seqs") = 256,
          nb::arg("max_num_batched_tokens") = 8192, nb::arg("max_model_len"), nb::arg("enable_prefix_caching") = true,
          nb::arg("enable_chunked_prefill") = true, nb::arg("long_prefill_token_threshold") = 0,
          nb::arg("num_speculative_tokens") = 0,
          nb::arg("prompt_lookup_min") = 5, nb::arg("prompt_lookup_max") = 5,
          nb::arg("speculative_disable_by_batch_size") = 0)
      .def_ro("num_blocks", &SchedulerConfig::num_blocks, "KV-cache blocks, block 0 (the null block) included")
      .def_ro("block_size", &SchedulerConfig::block_size)
      .def_ro("max_num_seqs", &SchedulerConfig::max_num_seqs)
      .def_ro("max_num_batched_tokens", &SchedulerConfig::max_num_batched_tokens)
      .def_ro("max_model_len", &SchedulerConfig::max_model_len)
      .def_ro("enable_prefix_caching", &SchedulerConfig::enable_prefix_caching)
      .def_ro("enable_chunked_prefill", &SchedulerConfig::enable_chunked_prefill)
      .def_ro("long_prefill_token_threshold", &SchedulerConfig::long_prefill_token_threshold,
              "tokens a sequence computes at most a step (0: as many as the budget leaves)")
      .def_ro("num_speculative_tokens", &SchedulerConfig::num_speculative_tokens,
              "draft tokens a decode verifies at most (prompt lookup); 0: no speculative decoding")
      .def_ro("prompt_lookup_min", &SchedulerConfig::prompt_lookup_min)
      .def_ro("prompt_lookup_max", &SchedulerConfig::prompt_lookup_max)
      .def_ro("speculative_disable_by_batch_size", &SchedulerConfig::speculative_disable_by_batch_size,
              "no drafts in a step that starts with more sequences running (0: no limit)");
}

void bind_stats(nb::module_& m) {
  nb::class_<SchedulerStats>(m, "SchedulerStats")
      .def_ro("num_blocks", &SchedulerStats::num_blocks)
      .def_ro("num_free_blocks", &SchedulerStats::num_free_blocks, "num_blocks - 1 when idle (block 0 is the null block)")
      .def_ro("kv_cache_usage", &SchedulerStats::kv_cache_usage, "fraction of usable blocks in use, 0..1")
      .def_ro("prefix_cache_queries", &SchedulerStats::prefix_cache_queries, "prompt tokens looked up at admission")
      .def_ro("prefix_cache_hits", &SchedulerStats::prefix_cache_hits, "of those, tokens found in the cache")
      .def_ro("num_preemptions", &SchedulerStats::num_preemptions)
      .def_ro("num_evictions", &SchedulerStats::num_evictions, "cached blocks reused for other content")
      .def_ro("num_drafts", &SchedulerStats::num_drafts, "rows that verified draft tokens")
      .def_ro("num_draft_tokens", &SchedulerStats::num_draft_tokens)
      .def_ro("num_accepted_tokens", &SchedulerStats::num_accepted_tokens, "draft tokens the model agreed with")
      .def_ro("num_accepted_tokens_per_pos", &SchedulerStats::num_accepted_tokens_per_pos,
              "list[int]: accepted drafts by their place in their row (0: the first)")
      .def("__repr__", [](const SchedulerStats& s) {
        return "SchedulerStats(num_blocks=" + std::to_string(s.num_blocks) + ", num_free_blocks=" +
               std::to_string(s.num_free_blocks) + ", kv_cache_usage=" + std::to_string(s.kv_cache_usage) +
               ", prefix_cache_queries=" + std::to_string(s.prefix_cache_queries) + ", prefix_cache_hits=" +
               std::to_string(s.prefix_cache_hits) + ", num_preemptions=" + std::to_string(s.num_preemptions) +
               ", num_evictions=" + std::to_string(s.num_evictions) + ", num_drafts=" + std::to_string(s.num_drafts) +
               ", num_draft_tokens=" + std::to_string(s.num_draft_tokens) +
               ", num_accepted_tokens=" + std::to_string(s.num_accepted_tokens) + ")";
      });
}

void add_request(PyScheduler& s, nb::str request_id, nb::handle prompt_token_ids, int32_t max_tokens,
                 int32_t min_tokens, nb::handle eos_token_ids, bool ignore_eos, nb::handle stop_token_ids,
                 int32_t priority, double arrival_time, int32_t n, std::string cache_salt, bool skip_prefix_cache,
                 bool speculate) {
  RequestParams params;
  params.max_tokens = max_tokens;
  params.min_tokens = min_tokens;
  // None means no tokens here (SamplingParams-style defaults); a prompt must be given.
  if (!eos_token_ids.is_none()) params.eos_token_ids = token_ids_from_python(eos_token_ids, "eos_token_ids");
  params.ignore_eos = ignore_eos;
  if (!stop_token_ids.is_none()) params.stop_token_ids = token_ids_from_python(stop_token_ids, "stop_token_ids");
  params.priority = priority;
  params.arrival_time = arrival_time;
  params.n = n;
  params.cache_salt = std::move(cache_salt);
  params.skip_prefix_cache = skip_prefix_cache;
  params.speculate = speculate;
  const int32_t handle = s.core.add_request(nb::cast<std::string>(request_id),
                                            token_ids_from_python(prompt_token_ids, "prompt_token_ids"),
                                            std::move(params));
  if (static_cast<size_t>(handle) >= s.ids.size()) s.ids.resize(static_cast<size_t>(handle) + 1);
  s.ids[static_cast<size_t>(handle)] = std::move(request_id);
}

}  // namespace

void bind_scheduler(nb::module_& m) {
  bind_config(m);
  bind_stats(m);
  bind_scheduler_output(m);

  nb::class_<PyScheduler>(m, "Scheduler",
                          "The continuous-batching scheduler: schedule() builds a step's batch,\n"
                          "update_from_output() applies the tokens sampled for it.")
      .def(nb::init<const SchedulerConfig&>(), nb::arg("config"))
      .def("add_request", &add_request, nb::arg("request_id"), nb::arg("prompt_token_ids"), nb::kw_only(),
           nb::arg("max_tokens"), nb::arg("min_tokens") = 0, nb::arg("eos_token_ids").none() = nb::tuple(),
           nb::arg("ignore_eos") = false, nb::arg("stop_token_ids").none() = nb::tuple(), nb::arg("priority") = 0,
           nb::arg("arrival_time") = 0.0, nb::arg("n") = 1, nb::arg("cache_salt") = "",
           nb::arg("skip_prefix_cache") = false, nb::arg("speculate") = true,
           "Queue a request. prompt_token_ids: list[int] or a 1-D integer array. ValueError for an id in use,\n"
           "an empty prompt, prompt + 1 > max_model_len, bad limits, or a request larger than the cache.")
      .def(
          "schedule",
          [](PyScheduler& s) -> PyStep& {
            s.step.out = &s.core.schedule();
            return s.step;
          },
          nb::rv_policy::reference_internal,
          "Build the next step's batch, which opens unless empty. One step may be open (its tokens\n"
          "not applied yet): rows that decode its tokens get placeholders (deferred_input_tokens).\n"
          "RuntimeError when two are.")
      .def(
          "update_from_output",
          [](PyScheduler& s, SampledIds sampled_token_ids) {
            const auto& updates = s.core.update_from_output(sampled_token_ids.data(),
                                                            static_cast<int64_t>(sampled_token_ids.shape(0)));
            return sample_updates_to_list(s, updates);
          },
          nb::arg("sampled_token_ids"),
          "Close the oldest open step: apply the tokens sampled for its logits_indices (int32[num_sampled]).\n"
          "Returns list[SampleUpdate]: (request_id, sample_index, new_token_ids, finish_reason), with\n"
          "stop_token_id and sampled_index by name; finish_reason is None while the sequence runs.")
      .def(
          "retract_in_flight",
          [](PyScheduler& s, std::string_view request_id, int32_t sample_index) {
            return s.core.retract_in_flight(request_id, sample_index);
          },
          nb::arg("request_id"), nb::arg("sample_index"),
          "After update_from_output: the sequence's row in the open step decoded a token the sampler\n"
          "changed since; the row is void (its token dropped) and the next step computes it again.\n"
          "Returns whether the open step had such a row.")
      .def("fail_step", [](PyScheduler& s) { return s.core.fail_step(); },
           "The model run of an open step failed: close every open step without tokens, end their\n"
           "requests (abort), make the prefix cache forget the blocks they were to write. Returns the\n"
           "ids of the requests it ended.")
      .def(
          "finish_requests",
          [](PyScheduler& s, const std::vector<std::string>& request_ids, std::string_view reason) {
            s.core.finish_requests(request_ids, parse_finish_reason(reason));
          },
          nb::arg("request_ids"), nb::arg("reason"),
          "End requests (all samples), e.g. on a stop string. reason: \"stop\", \"length\" or \"abort\".")
      .def(
          "finish_sample",
          [](PyScheduler& s, std::string_view request_id, int32_t sample_index, std::string_view reason) {
            s.core.finish_sample(request_id, sample_index, parse_finish_reason(reason));
          },
          nb::arg("request_id"), nb::arg("sample_index"), nb::arg("reason"), "End one sample of a request.")
      .def("abort", [](PyScheduler& s, std::string_view request_id) { s.core.abort(request_id); }, nb::arg("request_id"),
           "End a request at any time, freeing everything it holds. ValueError for an unknown id.")
      .def("has_unfinished_requests", [](const PyScheduler& s) { return s.core.has_unfinished_requests(); })
      .def(
          "__contains__",
          [](const PyScheduler& s, std::string_view request_id) { return s.core.find_request(request_id) != nullptr; },
          nb::arg("request_id"), "Whether a request with this id is unfinished (waiting or running).")
      .def_prop_ro("num_running", [](const PyScheduler& s) { return s.core.num_running(); })
      .def_prop_ro("num_waiting", [](const PyScheduler& s) { return s.core.num_waiting(); })
      .def_prop_ro("num_running_seqs", [](const PyScheduler& s) { return s.core.num_running_seqs(); },
                   "int: the running requests' sequences (n each), the batch's places in use")
      .def("stats", [](const PyScheduler& s) { return s.core.stats(); })
      .def_prop_ro("config", [](const PyScheduler& s) { return s.core.config(); }, "the SchedulerConfig it runs with")
      .def("reset_prefix_cache", [](PyScheduler& s) { return s.core.reset_prefix_cache(); },
           "Drop every prefix-cache entry; False (nothing dropped) while a request holds blocks.");
}

}  // namespace kvserve::bind
