// StagedCommunicator: device buffers through a host communicator, by way of host memory.
//
// Why: NCCL refuses two ranks on one GPU (and a build may lack NCCL), but ranks sharing a GPU
// are normal on a workstation or in tests. This decorator gives such ranks the device-buffer
// contract of parallel/communicator.h over the wrapped (MPI) communicator: each device buffer
// of a collective is copied to host memory, the wrapped collective runs there, and the results
// are copied back (synchronously: complete when the call returns). Host buffers pass straight
// through, so the trainer's scalars and strings cost nothing extra. With one rank, a device
// allreduce is the identity and costs no copy.
//
// Timeouts are the wrapped communicator's (kept equal to this one's timeout_s()), so a peer that
// stops answering gives CommTimeout as it does on CPU.
#pragma once
#include <memory>
#include <vector>

#include "parallel/communicator.h"

namespace mom::parallel {

class StagedCommunicator final : public Communicator {
 public:
  explicit StagedCommunicator(std::unique_ptr<Communicator> inner);
  Communicator& inner() { return *inner_; }
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }

  void allreduce_sum(float* data, size_t count) override;
  void allreduce_sum(double* data, size_t count) override;
  void allreduce_sum(int64_t* data, size_t count) override;
  void reduce_scatter_sum(const float* send, float* recv, size_t block) override;
  void allgather_bytes(const void* send, void* recv, size_t bytes) override;
  void alltoallv_bytes(const void* send, const int64_t* send_counts, const int64_t* send_displs, void* recv,
                       const int64_t* recv_counts, const int64_t* recv_displs) override;
  void broadcast_bytes(void* data, size_t bytes, int root) override;
  void barrier() override;
  std::unique_ptr<Communicator> split(int color, int key) override;
  DeviceMemory* device_memory() override;

 private:
  template <class T>
  void allreduce(T* data, size_t count);
  Communicator& in();  // the wrapped communicator, its timeout brought up to date

  std::unique_ptr<Communicator> inner_;
  std::vector<char> send_host_, recv_host_;  // staging, reused across calls
};

}  // namespace mom::parallel
