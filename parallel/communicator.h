// Communicator: the collective operations the trainer needs, behind one interface.
//
// The trainer calls these at the points where ranks must agree (gradient all-reduce, metric
// reduction, the expert all-to-all); a single process uses SoloCommunicator, where each
// collective is the identity, and a job started by mpirun/srun uses MpiCommunicator
// (parallel/mpi_communicator.h). On CUDA devices the world is an NCCL communicator, or MPI with
// host staging where ranks share a GPU (parallel/device_communicator.h), with no changes above
// this interface.
//
// Why every collective has a timeout: one rank that crashes, deadlocks or takes a different
// branch leaves its peers waiting forever inside a collective, and a hung job burns its whole
// allocation without a word. With a deadline the waiting ranks throw CommTimeout naming the
// operation, the rank and the limit; the caller then ends the whole job (abort_job) so that
// the peers end too. The deadline is a member (timeout_s), set from MOM_COMM_TIMEOUT_S
// (seconds, default 300) so a slow filesystem or a long first step can be given more room.
//
// Buffers are host memory, or, for a communicator made for a CUDA device
// (communicator_for_device, parallel/device_communicator.h), host or device memory: such a
// communicator sends device buffers through NCCL (or stages them through host memory) and host
// buffers (scalars, strings) through MPI. Which path a collective takes follows from its buffers,
// so every rank must pass the same kind of memory to the same call (an empty buffer still needs
// a pointer of that kind, not null); the caller has finished writing device buffers (its
// stream synchronised) before the call, and the results are complete when it returns.
// Collectives must be called by every rank of the communicator in the same order with matching
// sizes, as in MPI.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

namespace mom {

// A collective did not complete within the communicator's timeout. After this the
// communicator is unusable (the operation may still be pending inside MPI): end the job.
struct CommTimeout : std::runtime_error {
  explicit CommTimeout(const std::string& what) : std::runtime_error(what) {}
};

// Polls done() until it returns true (then true) or timeout_s seconds pass (then false). It
// spins first (small collectives finish in microseconds), then sleeps in steps growing to
// 200 us, so that a rank waiting on a slow peer leaves its core to the ranks doing the work,
// while a collective that only advances when polled (MPI_Test, NCCL's non-blocking calls) is
// still polled often: the token exchange runs dozens of them a step.
bool poll_until(double timeout_s, const std::function<bool()>& done);

// Seconds from MOM_COMM_TIMEOUT_S when set (a positive number; anything else is a UserError
// naming the variable), else 300.
double default_comm_timeout_s();

// Device memory for callers that need scratch beside a communicator's buffers and copies within
// it (the token exchange reorders rows through a buffer of its own). A communicator that takes
// device buffers returns one from device_memory(); host-only communicators return null.
class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;
  virtual bool is_device(const void* p) const = 0;
  virtual void* allocate(size_t bytes) = 0;  // never null (at least one byte is allocated)
  virtual void release(void* p) = 0;
  // Ordered copies between any two buffers, device or host; complete once wait() returns.
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Deadline for each collective, in seconds (> 0).
  double timeout_s() const { return timeout_s_; }
  void set_timeout_s(double seconds);

  // In-place sum over all ranks of `count` elements.
  virtual void allreduce_sum(float* data, size_t count) = 0;
  virtual void allreduce_sum(double* data, size_t count) = 0;
  virtual void allreduce_sum(int64_t* data, size_t count) = 0;
  // send holds size()·block floats; rank r receives into recv (block floats) the sum over all
  // ranks of send[r·block, (r+1)·block).
  virtual void reduce_scatter_sum(const float* send, float* recv, size_t block) = 0;
  // Each rank contributes `bytes` bytes; recv (size()·bytes) holds them in rank order.
  virtual void allgather_bytes(const void* send, void* recv, size_t bytes) = 0;
  template <class T>
  void allgather(const T* send, T* recv, size_t count) {
    allgather_bytes(send, recv, count * sizeof(T));
  }
  // Personalised exchange of bytes: to peer p this rank sends send_counts[p] bytes from
  // send + send_displs[p] and receives recv_counts[p] bytes at recv + recv_displs[p]. Arrays
  // have size() entries; zero counts are normal. Each count and displacement must fit in an
  // int (MPI's limit), else std::length_error.
  virtual void alltoallv_bytes(const void* send, const int64_t* send_counts, const int64_t* send_displs, void* recv,
                               const int64_t* recv_counts, const int64_t* recv_displs) = 0;
  // Each rank contributes `bytes` bytes; on `root`, recv (size()·bytes) holds them in rank
  // order (recv is unused elsewhere). Built on alltoallv_bytes.
  void gather_bytes(const void* send, void* recv, size_t bytes, int root);
  // `bytes` bytes of `data` on `root` are copied to every rank.
  virtual void broadcast_bytes(void* data, size_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // Ranks with the same `color` (>= 0) form a new communicator, ranked by (key, old rank).
  // Collective over this communicator. The child starts with this communicator's timeout.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
  // Null unless this communicator takes device buffers (see DeviceMemory).
  virtual DeviceMemory* device_memory() { return nullptr; }

 protected:
  double timeout_s_ = default_comm_timeout_s();
};

// One process: every collective is the identity (allgather, alltoallv and reduce_scatter copy
// the one rank's part), and split gives another single-rank communicator.
class SoloCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void allreduce_sum(float*, size_t) override {}
  void allreduce_sum(double*, size_t) override {}
  void allreduce_sum(int64_t*, size_t) override {}
  void reduce_scatter_sum(const float* send, float* recv, size_t block) override;
  void allgather_bytes(const void* send, void* recv, size_t bytes) override;
  void alltoallv_bytes(const void* send, const int64_t* send_counts, const int64_t* send_displs, void* recv,
                       const int64_t* recv_counts, const int64_t* recv_displs) override;
  void broadcast_bytes(void*, size_t, int root) override;
  void barrier() override {}
  std::unique_ptr<Communicator> split(int color, int key) override;
};

}  // namespace mom
