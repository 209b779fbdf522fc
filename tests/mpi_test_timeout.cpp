// A collective that a peer never joins times out instead of hanging, and abort_job then ends
// the whole job, the stuck peer included.
//
// Rank 0 skips a barrier on a sub-communicator that the other ranks enter with a 2 s timeout;
// they must throw CommTimeout after 2 s (not much later) with a message naming the operation,
// the rank and the limit, and the communicator must refuse further use. The verdict is summed
// over the world communicator, which stays healthy. Then rank 0 plays a hung rank (sleeps for
// far longer than the ctest TIMEOUT) and rank 1 calls abort_job with the verdict as the exit
// code: the test only ends in time, with status 0, if MPI_Abort really takes rank 0 down too.
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "mpi_test_support.h"

using namespace mom;

int main(int argc, char** argv) {
  MpiRuntime mpi(&argc, &argv);
  auto world = MpiCommunicator::world();
  world->set_timeout_s(60);
  const int r = world->rank();
  auto sub = world->split(0, r);
  sub->set_timeout_s(2.0);

  if (r != 0) {
    const auto t0 = std::chrono::steady_clock::now();
    bool timed_out = false;
    try {
      sub->barrier();
    } catch (const CommTimeout& e) {
      timed_out = true;
      const std::string msg = e.what();
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("rank %d observed after %.2f s: %s\n", r, waited, msg.c_str());
      MPI_CHECK_MSG(waited >= 2.0 && waited < 10.0, std::to_string(waited));
      MPI_CHECK_MSG(msg.find("barrier") != std::string::npos, msg);
      MPI_CHECK_MSG(msg.find("rank " + std::to_string(r)) != std::string::npos, msg);
      MPI_CHECK_MSG(msg.find("after 2 s") != std::string::npos, msg);
    }
    MPI_CHECK(timed_out);
    bool refused = false;
    try {
      float x = 1;
      sub->allreduce_sum(&x, 1);
    } catch (const std::logic_error&) {
      refused = true;
    }
    MPI_CHECK(refused);
  }

  int64_t total = mpitest::failures();
  world->allreduce_sum(&total, 1);
  if (r == 0) {
    std::printf("mpi_test_timeout on %d ranks: %s (%lld failed checks); rank 0 now hangs until aborted\n",
                world->size(), total ? "FAIL" : "PASS", static_cast<long long>(total));
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::seconds(600));
    std::fprintf(stderr, "rank 0 was not ended by abort_job\n");
    return 1;
  }
  if (r == 1) abort_job(total ? 1 : 0, "ending the job after the expected timeout");
  // Other ranks wait to be taken down by rank 1's abort.
  std::this_thread::sleep_for(std::chrono::seconds(600));
  return 1;
}
