// The CUDA half of communicator_for_device (parallel/device_communicator.h): which GPU each
// rank uses, and NCCL or host staging from that.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace mom::parallel {

// This rank's GPU as the CUDA backend picks it (MOM_CUDA_DEVICE, else local rank modulo the
// visible devices): "<hostname> <device UUID>", which names one physical GPU across a job.
// Creates the backend; throws its UserError when no GPU is usable.
std::string local_gpu_identity(int* device_index = nullptr);

// The choice, made from every rank's identity (world order) and MOM_COMM (forced: "mpi",
// "nccl" or "" for automatic): true for NCCL. `why` says why, for the line rank 0 prints.
bool choose_nccl(const std::vector<std::string>& identities, const std::string& forced, bool have_nccl,
                 std::string& why);

// Collective over `world`: the NCCL or the staged communicator over it.
std::unique_ptr<Communicator> cuda_world_communicator(std::unique_ptr<Communicator> world);

}  // namespace mom::parallel
