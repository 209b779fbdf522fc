// The world a command runs in: every rank of an mpirun/srun launch, or one process.
#pragma once
#include <functional>

#include "core/tensor.h"
#include "parallel/communicator.h"

namespace mom::jobs {

// Runs `job` on the world communicator. When a launcher started this process (OpenMPI's or
// Slurm's variables, parallel/launch_env.h) MPI is initialised around it and the world is
// MPI_COMM_WORLD, whose size must agree with the launcher's (else a UserError saying how to
// launch); otherwise the world is this one process. Under MPI with more than one rank, an
// exception on any rank ends the whole job at once through abort_job (the message names the
// rank; the exit status is 2 for a UserError, 3 otherwise), so no peer waits in a collective.
// `device` is the one the job computes on (train.device): for CUDA the world takes device
// buffers too, through NCCL or MPI with host staging (parallel/device_communicator.h).
void run_on_world(Device device, const std::function<void(Communicator&)>& job);
inline void run_on_world(const std::function<void(Communicator&)>& job) { run_on_world(Device::CPU, job); }

}  // namespace mom::jobs
