// Launch environment: which process this is, read from what the launcher exported.
//
// Why read the environment and not only MPI: the local rank (which GPU to bind, which cores
// to pin) must be known before CUDA or MPI is initialised, and MPI has no portable "local
// rank" anyway. OpenMPI's mpirun exports OMPI_COMM_WORLD_*; Slurm's srun exports SLURM_*;
// with neither, the process runs alone.
#pragma once
#include <string>

namespace mom::parallel {

struct LaunchEnv {
  int rank = 0, local_rank = 0, world_size = 1, local_size = 1;
  std::string launcher = "none";  // "openmpi", "slurm" or "none"
};

// OpenMPI first (an mpirun inside a Slurm allocation exports both, and mpirun's are the ones
// that describe this job), then Slurm, else one process. A variable that is present but not a
// number, or values that contradict each other (rank >= world size), are a UserError naming
// the variable. Slurm's per-node count comes from SLURM_TASKS_PER_NODE, a list over the nodes
// ("4(x2),3": 4 on nodes 0 and 1, 3 on node 2) indexed by SLURM_NODEID (0 when unset), which is
// exact when nodes hold different counts; else from SLURM_NTASKS_PER_NODE.
LaunchEnv detect_launch_env();

}  // namespace mom::parallel
