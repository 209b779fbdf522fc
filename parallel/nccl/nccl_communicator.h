// NcclCommunicator: device buffers through NCCL, host buffers through a host (MPI) communicator.
//
// Made collectively from the host communicator, which it keeps: rank 0 makes the NCCL unique id
// and broadcasts it over the host communicator, then every rank joins with
// ncclCommInitRankConfig. Each collective looks at its buffers (parallel/communicator.h): device
// memory runs through NCCL on this communicator's own CUDA stream, host memory through the host
// communicator. The caller has synchronised its compute stream before the call, and the call
// returns once the collective is complete on the device.
//
// Why non-blocking NCCL (config.blocking = 0) polled by hand: a blocking NCCL call, and a kernel
// waiting on a peer that never posts, have no deadline. Here initialisation, split and every
// collective are polled (ncclCommGetAsyncError, cudaStreamQuery, short sleeps) against
// timeout_s(), as MpiCommunicator polls MPI_Test; past the deadline, or on an asynchronous
// NCCL error (a dead peer: the network proxy reports it), the communicator is aborted with
// ncclCommAbort (which also ends the kernels still waiting on the device) and CommTimeout or
// std::runtime_error is thrown, naming the operation, the rank, the size and the limit. The
// communicator is then unusable (later calls throw std::logic_error) and the caller ends the job
// (abort_job), as on CPU.
//
// The all-to-all-v is one NCCL group of ncclSend/ncclRecv, one per peer with a nonzero count
// (the counts come from an earlier count exchange, parallel/token_exchange.h). Unlike MPI there
// is no int limit on counts. split() splits the host communicator and the NCCL one
// (ncclCommSplit, non-blocking too); the child keeps the parent's timeout.
//
// NCCL refuses two ranks on one GPU: communicator_for_device (parallel/device_communicator.h)
// only makes this where every rank has a GPU of its own.
#pragma once
#include <cuda_runtime.h>
#include <nccl.h>

#include <memory>

#include "parallel/communicator.h"

namespace mom::parallel {

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `host`; `device` is the CUDA device this rank's buffers live on. Takes the
  // host communicator's timeout.
  NcclCommunicator(std::unique_ptr<Communicator> host, int device);
  // Finalises (bounded by the timeout) and destroys a healthy communicator, aborts a failed
  // one or one destroyed while an exception unwinds; never throws.
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Communicator& host() { return *host_; }
  ncclComm_t nccl() const { return comm_; }
  cudaStream_t stream() const { return stream_; }

  void allreduce_sum(float* data, size_t count) override;
  void allreduce_sum(double* data, size_t count) override;
  void allreduce_sum(int64_t* data, size_t count) override;
  void reduce_scatter_sum(const float* send, float* recv, size_t block) override;
  void allgather_bytes(const void* send, void* recv, size_t bytes) override;
  void alltoallv_bytes(const void* send, const int64_t* send_counts, const int64_t* send_displs, void* recv,
                       const int64_t* recv_counts, const int64_t* recv_displs) override;
  void broadcast_bytes(void* data, size_t bytes, int root) override;
  // Host only (MPI): NCCL work is complete when each collective returns.
  void barrier() override;
  std::unique_ptr<Communicator> split(int color, int key) override;
  DeviceMemory* device_memory() override;

 private:
  struct Adopt {};
  NcclCommunicator(Adopt, std::unique_ptr<Communicator> host, int device, ncclComm_t comm);

  Communicator& host_comm();  // the host communicator, its timeout brought up to date
  // Enqueues the NCCL work (enqueue() returns its ncclResult_t) and waits for it.
  template <class Enqueue>
  void run(const char* op, size_t bytes, Enqueue enqueue);
  void make_stream();
  // Device (true) or host (false) for a collective's buffers; null pointers do not count, and a
  // device buffer beside a non-null host buffer is a std::logic_error.
  bool on_device(const void* a, const void* b, const char* op) const;
  void check_usable(const char* op) const;
  // Throws (after aborting) unless rc is ncclSuccess or ncclInProgress.
  void check(ncclResult_t rc, const char* op, size_t bytes);
  // Polls until `comm` (and this one) leave ncclInProgress, and, with `stream_work`, until the
  // stream has finished; aborts and throws past the deadline or on an error.
  void wait(const char* op, size_t bytes, bool stream_work, ncclComm_t other = nullptr);
  [[noreturn]] void fail(const char* op, size_t bytes, const std::string& reason, bool timeout,
                         ncclComm_t other = nullptr);
  void abort_now();

  std::unique_ptr<Communicator> host_;
  int device_ = 0;
  int rank_ = 0, size_ = 1;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  bool broken_ = false;  // a collective failed or timed out; comm_ was aborted
};

}  // namespace mom::parallel
