#include "jobs/world.h"

#include <exception>
#include <string>

#include "core/error.h"
#include "parallel/launch_env.h"
#include "parallel/mpi_communicator.h"

namespace mom::jobs {

void run_on_world(const std::function<void(Communicator&)>& job) {
  const parallel::LaunchEnv env = parallel::detect_launch_env();
  if (env.launcher == "none") {
    SoloCommunicator solo;
    job(solo);
    return;
  }
  MpiRuntime runtime(nullptr, nullptr);
  const auto world = MpiCommunicator::world();
  require(world->size() == env.world_size,
          "the " + env.launcher + " environment says " + std::to_string(env.world_size) + " ranks but MPI started " +
              std::to_string(world->size()) +
              "; start every rank with the launcher (mpirun -np N, or srun inside the allocation; see "
              "jobs/launch/ and jobs/slurm/)");
  if (world->size() == 1) {
    job(*world);
    return;
  }
  try {
    job(*world);
  } catch (const UserError& e) {
    abort_job(2, std::string("error: ") + e.what());
  } catch (const CommTimeout& e) {
    abort_job(3, std::string("error: ") + e.what());
  } catch (const std::exception& e) {
    abort_job(3, std::string("internal error: ") + e.what());
  }
}

}  // namespace mom::jobs
