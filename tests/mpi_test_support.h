// Shared by the tests/mpi_test_*.cpp programs, which mpirun starts on 2 and 4 ranks.
//
// Why plain main() and not gtest: MPI must be initialised before and finalised after every
// check, and a failing check on one rank must fail the job on all ranks. Each rank counts its
// failed checks; finish() sums them over the world, rank 0 prints the verdict, and every rank
// returns non-zero when any rank failed. An exception escaping a test aborts the whole job
// (abort_job), so a broken rank never leaves the others waiting.
#pragma once
#include <cstdio>
#include <exception>
#include <string>

#include "parallel/mpi_communicator.h"

namespace mom::mpitest {

inline int64_t& failures() {
  static int64_t n = 0;
  return n;
}

inline void check(bool ok, const char* expr, const char* file, int line, const std::string& note = "") {
  if (ok) return;
  ++failures();
  int r = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  std::fprintf(stderr, "rank %d: CHECK failed at %s:%d: %s %s\n", r, file, line, expr, note.c_str());
}

#define MPI_CHECK(cond) ::mom::mpitest::check((cond), #cond, __FILE__, __LINE__)
#define MPI_CHECK_MSG(cond, note) ::mom::mpitest::check((cond), #cond, __FILE__, __LINE__, (note))

// Runs body(world) on every rank and returns the process exit status.
template <class Body>
int run(int argc, char** argv, const char* name, Body body) {
  MpiRuntime mpi(&argc, &argv);
  int status = 0;
  {
    auto world = MpiCommunicator::world();
    world->set_timeout_s(60);
    try {
      body(*world);
    } catch (const std::exception& e) {
      abort_job(3, std::string(name) + ": unexpected exception: " + e.what());
    }
    int64_t total = failures();
    world->allreduce_sum(&total, 1);
    if (world->rank() == 0)
      std::printf("%s on %d ranks: %s (%lld failed checks)\n", name, world->size(), total ? "FAIL" : "PASS",
                  static_cast<long long>(total));
    status = total ? 1 : 0;
  }
  return status;
}

}  // namespace mom::mpitest
