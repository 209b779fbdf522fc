// The world a command runs in: every rank of an mpirun/srun launch, or one process.
#pragma once
#include <functional>

#include "parallel/communicator.h"

namespace mom::jobs {

// Runs `job` on the world communicator. When a launcher started this process (OpenMPI's or
// Slurm's variables, parallel/launch_env.h) MPI is initialised around it and the world is
// MPI_COMM_WORLD, whose size must agree with the launcher's (else a UserError saying how to
// launch); otherwise the world is this one process. Under MPI with more than one rank, an
// exception on any rank ends the whole job at once through abort_job (the message names the
// rank; the exit status is 2 for a UserError, 3 otherwise), so no peer waits in a collective.
void run_on_world(const std::function<void(Communicator&)>& job);

}  // namespace mom::jobs
