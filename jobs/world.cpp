#include "jobs/world.h"

#include <exception>
#include <memory>
#include <string>

#include "core/error.h"
#include "parallel/device_communicator.h"
#include "parallel/launch_env.h"
#include "parallel/mpi_communicator.h"

namespace mom::jobs {

void run_on_world(Device device, const std::function<void(Communicator&)>& job) {
  const parallel::LaunchEnv env = parallel::detect_launch_env();
  if (env.launcher == "none") {
    const auto solo = parallel::communicator_for_device(std::make_unique<SoloCommunicator>(), device);
    job(*solo);
    return;
  }
  MpiRuntime runtime(nullptr, nullptr);
  auto mpi_world = MpiCommunicator::world();
  require(mpi_world->size() == env.world_size,
          "the " + env.launcher + " environment says " + std::to_string(env.world_size) + " ranks but MPI started " +
              std::to_string(mpi_world->size()) +
              "; start every rank with the launcher (mpirun -np N, or srun inside the allocation; see "
              "jobs/launch/ and jobs/slurm/)");
  if (mpi_world->size() == 1) {
    const auto world = parallel::communicator_for_device(std::move(mpi_world), device);
    job(*world);
    return;
  }
  try {
    // Made inside the try: a rank without a usable GPU, or a failed NCCL init, ends the job.
    const auto world = parallel::communicator_for_device(std::move(mpi_world), device);
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
