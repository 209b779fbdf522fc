// CUDA memory helpers (see the header).
#include "parallel/cuda/cuda_memory.h"

#include <stdexcept>
#include <string>

namespace mom::parallel {

bool is_device_memory(const void* p) {
  if (!p) return false;
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();  // an unknown host pointer on old drivers: clear the sticky-free error
    return false;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

void check_cuda(cudaError_t rc, const char* what) {
  if (rc == cudaSuccess) return;
  throw std::runtime_error(std::string("CUDA ") + what + " failed: " + cudaGetErrorString(rc));
}

CudaDeviceMemory& CudaDeviceMemory::instance() {
  static CudaDeviceMemory memory;
  return memory;
}

cudaStream_t CudaDeviceMemory::stream() {
  if (!stream_) check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  return stream_;
}

CudaDeviceMemory::~CudaDeviceMemory() {
  // At process exit the driver may already be shutting down; nothing to report then.
  if (stream_) cudaStreamDestroy(stream_);
}

void* CudaDeviceMemory::allocate(size_t bytes) {
  void* p = nullptr;
  check_cuda(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc (communicator staging)");
  return p;
}

void CudaDeviceMemory::release(void* p) {
  if (p) cudaFree(p);
}

void CudaDeviceMemory::copy(void* dst, const void* src, size_t bytes) {
  if (bytes) check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream()), "cudaMemcpyAsync");
}

void CudaDeviceMemory::wait() {
  if (stream_) check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
}

}  // namespace mom::parallel
