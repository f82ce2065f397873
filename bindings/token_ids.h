// Token ids from Python: a list or tuple of ints (numpy integers too), or a 1-D integer array
// (numpy or a CPU torch tensor). Anything else is a ValueError naming the argument.
#pragma once

#include <nanobind/nanobind.h>

#include <cstdint>
#include <vector>

namespace kvserve::bind {

std::vector<int32_t> token_ids_from_python(nanobind::handle obj, const char* name);

}  // namespace kvserve::bind
