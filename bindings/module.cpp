// kvserve._C: the extension module. It only declares; each concept binds itself in its own file.
#include <nanobind/nanobind.h>

#include "bind.h"
#include "kvserve/config.h"
#include "kvserve/status.h"

NB_MODULE(_C, m) {
  m.doc() = "kvserve's C++ core: block pool, KV-cache manager, scheduler and kernels";
  m.attr("__version__") = kvserve::version();
  m.attr("has_cuda") = static_cast<bool>(KVSERVE_HAS_CUDA);

  auto ops = m.def_submodule("ops", "kernels over arrays (torch tensors or numpy arrays, zero-copy)");
  kvserve::bind::bind_ops(ops);
  kvserve::bind::bind_layer_ops(ops);
  kvserve::bind::bind_linear(ops);
  kvserve::bind::bind_decoder_stack(ops);
  kvserve::bind::bind_scheduler(m);
}
