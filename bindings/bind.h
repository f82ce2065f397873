// One function per bound concept; module.cpp calls them all.
#pragma once

#include <nanobind/nanobind.h>

namespace kvserve::bind {

void bind_ops(nanobind::module_& m);
void bind_layer_ops(nanobind::module_& m);
void bind_linear(nanobind::module_& m);
void bind_decoder_stack(nanobind::module_& m);
void bind_scheduler(nanobind::module_& m);

}  // namespace kvserve::bind
