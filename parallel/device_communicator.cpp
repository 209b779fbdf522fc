// communicator_for_device: CPU keeps the world as it is; CUDA goes to parallel/cuda/.
#include "parallel/device_communicator.h"

#include "core/error.h"
#ifdef MOM_HAVE_CUDA
#include "parallel/cuda/select_communicator.h"
#endif

namespace mom::parallel {

std::unique_ptr<Communicator> communicator_for_device(std::unique_ptr<Communicator> world, Device device) {
  if (device == Device::CPU) return world;
#ifdef MOM_HAVE_CUDA
  return cuda_world_communicator(std::move(world));
#else
  throw UserError(
      "device 'cuda' is not available in this build, so there is no GPU communicator either: rebuild "
      "with nvcc present (-DMOM_CUDA=ON) or set train.device to \"cpu\"");
#endif
}

}  // namespace mom::parallel
