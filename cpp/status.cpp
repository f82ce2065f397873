#include "kvserve/status.h"

namespace kvserve {

const char* status_string(Status status) {
  switch (status) {
    case Status::kOk: return "ok";
    case Status::kInvalidArgument: return "invalid argument";
    case Status::kUnsupported: return "unsupported";
    case Status::kDeviceError: return "device error";
  }
  return "unknown status";
}

const char* version() { return KVSERVE_VERSION; }

}  // namespace kvserve
