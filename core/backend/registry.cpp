// backend_for: one process-wide backend per device, created on first use.
#include <memory>
#include <mutex>

#include "core/backend/cpu/cpu_backend.h"
#include "core/error.h"
#ifdef MOM_HAVE_CUDA
#include "core/backend/cuda/cuda_backend.h"
#endif

namespace mom {

Backend& backend_for(Device d) {
  if (d == Device::CPU) {
    static CpuBackend cpu;
    return cpu;
  }
#ifdef MOM_HAVE_CUDA
  // Created on first use and kept to process exit; a failed creation (no GPU) throws its
  // UserError every time it is asked for.
  static std::mutex mutex;
  static std::unique_ptr<CudaBackend> cuda;
  std::lock_guard<std::mutex> lock(mutex);
  if (!cuda) cuda = std::make_unique<CudaBackend>();
  return *cuda;
#else
  throw UserError(
      "device 'cuda' is not available in this build: rebuild with nvcc present (-DMOM_CUDA=ON) "
      "or set device to \"cpu\"");
#endif
}

Backend::MatmulPrecision parse_matmul_precision(const std::string& name) {
  if (name == "highest") return Backend::MatmulPrecision::F32;
  if (name == "high") return Backend::MatmulPrecision::TF32;
  if (name == "medium") return Backend::MatmulPrecision::BF16;
  throw UserError("unknown matmul precision '" + name + "': use \"highest\", \"high\" or \"medium\"");
}

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::CPU;
  if (name == "cuda") return Device::CUDA;
  throw UserError("unknown device '" + name + "': use \"cpu\" or \"cuda\"");
}

}  // namespace mom
