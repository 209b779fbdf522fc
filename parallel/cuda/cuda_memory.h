// CUDA memory helpers of the GPU communicators: which pointers are device memory, and the
// DeviceMemory (parallel/communicator.h) that the token exchange stages rows in.
#pragma once
#include <cuda_runtime.h>

#include "parallel/communicator.h"

namespace mom::parallel {

// True for memory of a CUDA device (cudaMalloc'd or managed); false for host memory and null.
bool is_device_memory(const void* p);

// Throws std::runtime_error "CUDA <what> failed: <CUDA's error string>" unless rc is success.
void check_cuda(cudaError_t rc, const char* what);

// Device scratch and device-to-device copies on a stream of its own (one per process, made on
// the current device by the first copy, so that asking for it needs no GPU). Copies are ordered
// among themselves; wait() synchronises.
class CudaDeviceMemory final : public DeviceMemory {
 public:
  static CudaDeviceMemory& instance();
  ~CudaDeviceMemory() override;
  bool is_device(const void* p) const override { return is_device_memory(p); }
  void* allocate(size_t bytes) override;
  void release(void* p) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void wait() override;

 private:
  CudaDeviceMemory() = default;
  cudaStream_t stream();
  cudaStream_t stream_ = nullptr;
};

}  // namespace mom::parallel
