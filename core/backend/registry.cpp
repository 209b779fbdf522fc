// backend_for: one process-wide backend per device, created on first use.
#include "core/backend/cpu/cpu_backend.h"
#include "core/error.h"

namespace mom {

Backend& backend_for(Device d) {
  if (d == Device::CPU) {
    static CpuBackend cpu;
    return cpu;
  }
  throw UserError("device 'cuda' is not available in this build: rebuild with nvcc present (-DMOM_CUDA=ON) "
                  "or set device to \"cpu\"");
}

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::CPU;
  if (name == "cuda") return Device::CUDA;
  throw UserError("unknown device '" + name + "': use \"cpu\" or \"cuda\"");
}

}  // namespace mom
