// StagedCommunicator: device buffers copied to host, through the wrapped communicator, and back.
#include "parallel/cuda/staged_communicator.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "parallel/cuda/cuda_memory.h"

namespace mom::parallel {

namespace {

void to_host(void* host, const void* device, size_t bytes) {
  if (bytes) check_cuda(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy (staging to host)");
}

// A cudaMemcpy from pageable host memory may return before its DMA has reached the device, and
// the default stream it runs on does not order the backend's (non-blocking) stream or the
// DeviceMemory stream after it: synchronise, so the results are in place when the call returns.
void to_device(void* device, const void* host, size_t bytes) {
  if (!bytes) return;
  check_cuda(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy (staging to device)");
  check_cuda(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize (staging to device)");
}

// The extent of an alltoallv buffer: one past the last byte any peer's slice touches.
size_t extent(const int64_t* counts, const int64_t* displs, int n) {
  int64_t end = 0;
  for (int p = 0; p < n; ++p)
    if (counts[p] > 0) end = std::max(end, displs[p] + counts[p]);
  return static_cast<size_t>(end);
}

}  // namespace

StagedCommunicator::StagedCommunicator(std::unique_ptr<Communicator> inner) : inner_(std::move(inner)) {
  if (!inner_) throw std::logic_error("StagedCommunicator: no communicator to wrap");
  timeout_s_ = inner_->timeout_s();
}

Communicator& StagedCommunicator::in() {
  if (inner_->timeout_s() != timeout_s_) inner_->set_timeout_s(timeout_s_);
  return *inner_;
}

template <class T>
void StagedCommunicator::allreduce(T* data, size_t count) {
  if (!is_device_memory(data)) return in().allreduce_sum(data, count);
  if (size() == 1) return;  // the sum over one rank
  const size_t bytes = count * sizeof(T);
  send_host_.resize(bytes);
  to_host(send_host_.data(), data, bytes);
  in().allreduce_sum(reinterpret_cast<T*>(send_host_.data()), count);
  to_device(data, send_host_.data(), bytes);
}

void StagedCommunicator::allreduce_sum(float* data, size_t count) { allreduce(data, count); }
void StagedCommunicator::allreduce_sum(double* data, size_t count) { allreduce(data, count); }
void StagedCommunicator::allreduce_sum(int64_t* data, size_t count) { allreduce(data, count); }

void StagedCommunicator::reduce_scatter_sum(const float* send, float* recv, size_t block) {
  const bool ds = is_device_memory(send), dr = is_device_memory(recv);
  if (!ds && !dr) return in().reduce_scatter_sum(send, recv, block);
  const size_t send_bytes = static_cast<size_t>(size()) * block * sizeof(float), recv_bytes = block * sizeof(float);
  const float* s = send;
  if (ds) {
    send_host_.resize(send_bytes);
    to_host(send_host_.data(), send, send_bytes);
    s = reinterpret_cast<const float*>(send_host_.data());
  }
  float* r = recv;
  if (dr) {
    recv_host_.resize(recv_bytes);
    r = reinterpret_cast<float*>(recv_host_.data());
  }
  in().reduce_scatter_sum(s, r, block);
  if (dr) to_device(recv, r, recv_bytes);
}

void StagedCommunicator::allgather_bytes(const void* send, void* recv, size_t bytes) {
  const bool ds = is_device_memory(send), dr = is_device_memory(recv);
  if (!ds && !dr) return in().allgather_bytes(send, recv, bytes);
  const size_t recv_bytes = static_cast<size_t>(size()) * bytes;
  const void* s = send;
  if (ds) {
    send_host_.resize(bytes);
    to_host(send_host_.data(), send, bytes);
    s = send_host_.data();
  }
  void* r = recv;
  if (dr) {
    recv_host_.resize(recv_bytes);
    r = recv_host_.data();
  }
  in().allgather_bytes(s, r, bytes);
  if (dr) to_device(recv, r, recv_bytes);
}

void StagedCommunicator::alltoallv_bytes(const void* send, const int64_t* send_counts, const int64_t* send_displs,
                                         void* recv, const int64_t* recv_counts, const int64_t* recv_displs) {
  const bool ds = is_device_memory(send), dr = is_device_memory(recv);
  if (!ds && !dr) return in().alltoallv_bytes(send, send_counts, send_displs, recv, recv_counts, recv_displs);
  const int n = size();
  const void* s = send;
  if (ds) {
    const size_t bytes = extent(send_counts, send_displs, n);
    send_host_.resize(std::max<size_t>(bytes, 1));
    to_host(send_host_.data(), send, bytes);
    s = send_host_.data();
  }
  void* r = recv;
  const size_t recv_bytes = extent(recv_counts, recv_displs, n);
  if (dr) {
    // Bytes outside the received slices must come back unchanged, as they would with MPI.
    recv_host_.resize(std::max<size_t>(recv_bytes, 1));
    to_host(recv_host_.data(), recv, recv_bytes);
    r = recv_host_.data();
  }
  in().alltoallv_bytes(s, send_counts, send_displs, r, recv_counts, recv_displs);
  if (dr) to_device(recv, r, recv_bytes);
}

void StagedCommunicator::broadcast_bytes(void* data, size_t bytes, int root) {
  if (!is_device_memory(data)) return in().broadcast_bytes(data, bytes, root);
  send_host_.resize(std::max<size_t>(bytes, 1));
  if (rank() == root) to_host(send_host_.data(), data, bytes);
  in().broadcast_bytes(send_host_.data(), bytes, root);
  if (rank() != root) to_device(data, send_host_.data(), bytes);
}

void StagedCommunicator::barrier() { in().barrier(); }

std::unique_ptr<Communicator> StagedCommunicator::split(int color, int key) {
  auto child = std::make_unique<StagedCommunicator>(in().split(color, key));
  child->set_timeout_s(timeout_s_);
  return child;
}

DeviceMemory* StagedCommunicator::device_memory() { return &CudaDeviceMemory::instance(); }

}  // namespace mom::parallel
