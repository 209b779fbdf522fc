// MpiCommunicator: the Communicator over an MPI communicator (CPU, host buffers).
//
// Why non-blocking collectives polled by hand: a blocking MPI_Allreduce has no deadline, so
// one lost rank hangs the job. Each collective here is posted non-blocking (MPI_Iallreduce,
// MPI_Ireduce_scatter_block, MPI_Iallgather, MPI_Ialltoallv, MPI_Ibcast, MPI_Ibarrier) and
// driven with MPI_Test until it completes or timeout_s() passes; then CommTimeout is thrown,
// naming the operation, the rank and the limit.
//
// What a timeout means: MPI cannot cancel a collective, so the operation stays pending and
// this communicator is marked broken (every later call throws). The caller must end the job
// with abort_job(), which calls MPI_Abort on MPI_COMM_WORLD: mpirun (or srun) then kills every
// rank, so the peers that are still waiting end too instead of hanging until their own
// deadline. The `mom` binary does this at its top level; tests call it directly.
//
// MPI errors are reported, not fatal: the communicator uses MPI_ERRORS_RETURN, and a failing
// call throws std::runtime_error with MPI's error string.
#pragma once
#include <mpi.h>

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace mom {

// Initialises MPI for the life of the object (MPI_THREAD_FUNNELED: only the main thread
// communicates; OpenMP threads compute) and finalises it after, unless MPI was already
// initialised by someone else, in which case both are left to them.
class MpiRuntime {
 public:
  MpiRuntime(int* argc, char*** argv);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

 private:
  bool owns_ = false;
};

class MpiCommunicator final : public Communicator {
 public:
  // Wraps `comm` (MPI must be initialised). With `owned`, MPI_Comm_free runs in the destructor.
  MpiCommunicator(MPI_Comm comm, bool owned);
  // MPI_COMM_WORLD, not owned.
  static std::unique_ptr<MpiCommunicator> world();
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  MPI_Comm comm() const { return comm_; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void allreduce_sum(float* data, size_t count) override;
  void allreduce_sum(double* data, size_t count) override;
  void allreduce_sum(int64_t* data, size_t count) override;
  void reduce_scatter_sum(const float* send, float* recv, size_t block) override;
  void allgather_bytes(const void* send, void* recv, size_t bytes) override;
  void alltoallv_bytes(const void* send, const int64_t* send_counts, const int64_t* send_displs, void* recv,
                       const int64_t* recv_counts, const int64_t* recv_displs) override;
  void broadcast_bytes(void* data, size_t bytes, int root) override;
  void barrier() override;
  // MPI_Comm_split has no non-blocking form, so a timed barrier runs first: a peer that never
  // arrives is caught there, and once all have passed it the blocking split cannot wait long.
  std::unique_ptr<Communicator> split(int color, int key) override;

 private:
  void allreduce(void* data, size_t count, MPI_Datatype type, const char* op);
  // Drives `req` to completion or throws CommTimeout after timeout_s().
  void wait(MPI_Request& req, const char* op);
  // Throws std::runtime_error with MPI's error string when rc is not MPI_SUCCESS.
  void check(int rc, const char* op) const;
  void check_usable(const char* op) const;

  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
  bool broken_ = false;  // a collective timed out and may still be pending
};

// Prints "mom: rank R: <message>" to stderr and ends the whole job with MPI_Abort(world, code),
// so every rank ends (mpirun exits non-zero). Without an initialised MPI it exits the process.
[[noreturn]] void abort_job(int code, const std::string& message);
// This process's rank in MPI_COMM_WORLD, or -1 when MPI is not running (error messages).
int mpi_world_rank();

}  // namespace mom
