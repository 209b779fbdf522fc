// communicator_for_device: the world communicator for the device a job computes on.
//
// CPU: the MPI (or single-process) communicator, unchanged. CUDA: one of two decorators of it,
// chosen the same way on every rank from an allgather of each rank's GPU (host name and the
// device UUID of the GPU its CudaBackend uses):
//   - NcclCommunicator (parallel/nccl/nccl_communicator.h) when every rank has a GPU of its own:
//     device buffers go through NCCL, host buffers (metrics, strings) through MPI;
//   - StagedCommunicator (parallel/cuda/staged_communicator.h) when ranks share a GPU (NCCL
//     refuses two ranks on one device), when MOM_COMM=mpi forces it, for a single rank, or when
//     the build has no NCCL: device buffers are copied to host memory, reduced or exchanged by
//     MPI, and copied back.
// Rank 0 prints one line saying which and why. MOM_COMM: "mpi" (host staging), "nccl" (NCCL
// even where the check would not choose it; NCCL's own error then says why it refuses), or
// "auto"/unset (the rule above); anything else is a UserError.
//
// Both decorators keep the wrapped communicator's timeouts (MOM_COMM_TIMEOUT_S): a collective
// that does not finish in time throws CommTimeout, and NCCL's communicator is aborted first
// (ncclCommAbort), so no rank waits forever.
#pragma once
#include <memory>

#include "core/tensor.h"
#include "parallel/communicator.h"

namespace mom::parallel {

// Collective over `world`. For Device::CUDA in a build without CUDA, or on a machine without a
// usable GPU, throws UserError saying so.
std::unique_ptr<Communicator> communicator_for_device(std::unique_ptr<Communicator> world, Device device);

}  // namespace mom::parallel
