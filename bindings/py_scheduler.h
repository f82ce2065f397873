// The Python face of the scheduler, shared by the files that bind it.
//
// PyScheduler keeps the Python str of every live request id by handle, so that the per-step lists
// (req_ids, update results) reuse the caller's objects instead of building new strings.
// PyStep is what schedule() returns: one object per scheduler whose arrays are numpy views of the
// scheduler's output buffers, valid until the next schedule().
#pragma once

#include <nanobind/nanobind.h>

#include <vector>

#include "kvserve/scheduler.h"

namespace kvserve::bind {

namespace nb = nanobind;

struct PyScheduler;

struct PyStep {
  PyScheduler* owner;
  const SchedulerOutput* out = nullptr;  // set by the first schedule(); the same buffers every step
};

struct PyScheduler {
  explicit PyScheduler(const SchedulerConfig& config) : core(config) {}

  Scheduler core;
  std::vector<nb::object> ids;  // by request handle
  PyStep step{this};
};

// Binds SchedulerOutput (over PyStep) and the SampleUpdate result type.
void bind_scheduler_output(nb::module_& m);
// update_from_output's result: one SampleUpdate per update, a 4-tuple with stop_token_id by name.
nb::list sample_updates_to_list(const PyScheduler& scheduler, const std::vector<SampleUpdate>& updates);

}  // namespace kvserve::bind
