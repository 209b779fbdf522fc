// What every CUDA op file shares: error checks whose message names the op, the shapes and a
// hint; launch geometry; a deterministic block reduction; stream-ordered scratch memory.
//
// Why the checks carry shapes: "an illegal memory access was encountered" alone says
// nothing; with the op and its tensors a user (or we) can tell a bad config from a kernel
// bug. Kernel faults are asynchronous and surface at a later call, so with MOM_CUDA_SYNC=1
// every op synchronises after its launches and a fault is reported by the op that caused it.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/backend/cuda/cuda_backend.h"
#include "core/backend/op_support.h"
#include "core/tensor.h"

namespace mom::cuda {

// "f32[2, 3]" for a tensor, "-" for an empty one.
std::string describe(const Tensor& t);
// The op's tensors, described and joined: "out f32[4, 8], inp f32[4, 16]".
std::string shapes(std::initializer_list<std::pair<const char*, const Tensor*>> named);

// Throws (std::runtime_error; mom::UserError for out-of-memory, which a smaller batch fixes)
// when e is not cudaSuccess: "CUDA error in <op> (<what>): <reason>. <hint>".
void check(cudaError_t e, const char* op, const std::string& what);
void check(cublasStatus_t s, const char* op, const std::string& what);
// After a kernel launch: a bad launch configuration now, or (with MOM_CUDA_SYNC=1) any fault
// of the kernel itself.
void check_launch(const char* op, const std::string& what, cudaStream_t stream);

// The checks above as macros that evaluate their description (`what`, often a formatted list
// of shapes) only when there is something to report: every op checks its launches, and
// formatting shapes on the success path would cost microseconds per op, a real share of a
// decoding step.
inline bool ok(cudaError_t e) { return e == cudaSuccess; }
inline bool ok(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS; }
// A launch error is pending, or MOM_CUDA_SYNC asks for a synchronisation after every op.
bool launch_check_needed();
#define MOM_CUDA_CHECK(call, op, what)                                                \
  do {                                                                                \
    const auto mom_status_ = (call);                                                  \
    if (!::mom::cuda::ok(mom_status_)) ::mom::cuda::check(mom_status_, (op), (what)); \
  } while (0)
#define MOM_CUDA_CHECK_LAUNCH(op, what, stream)                                                \
  do {                                                                                         \
    if (::mom::cuda::launch_check_needed()) ::mom::cuda::check_launch((op), (what), (stream)); \
  } while (0)

// Threads per block for the elementwise kernels, and a grid that covers n elements with
// grid-stride loops (capped: beyond a few waves more blocks only cost scheduling).
inline constexpr int kThreads = 256;
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks > 65535 ? 65535 : blocks);
}

// Sum (max) of v over the 32 lanes of a warp, to every lane, by a fixed xor-shuffle tree: the
// same bits on every run. Every lane of the warp must call it.
template <class T>
__device__ inline T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <class T>
__device__ inline T warp_max(T v) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum of v over the block, returned to every thread. The tree (warp shuffles, then the warps'
// partials in warp order) depends only on blockDim, so the bits are the same on every run.
// blockDim.x must be a multiple of 32 and at most 1024; every thread must call it.
template <class T>
__device__ T block_sum(T v) {
  __shared__ T warp_partial[32];
  __shared__ T total;
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // warp_partial may still be read by a previous call
  if (lane == 0) warp_partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x >> 5;
    const T w = warp_sum(lane < warps ? warp_partial[lane] : T(0));
    if (lane == 0) total = w;
  }
  __syncthreads();
  return total;
}

// Maximum of v over the block, to every thread (same rules as block_sum).
template <class T>
__device__ T block_max(T v) {
  __shared__ T warp_partial[32];
  __shared__ T total;
  v = warp_max(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) warp_partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x >> 5;
    const T w = warp_max(lane < warps ? warp_partial[lane] : warp_partial[0]);
    if (lane == 0) total = w;
  }
  __syncthreads();
  return total;
}

// Device scratch for one op, ordered on the backend's stream (cudaMallocAsync/cudaFreeAsync:
// no device-wide synchronisation, and the memory is reused from the stream's pool).
class Scratch {
 public:
  Scratch(const CudaBackend& be, size_t bytes, const char* op);
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  cudaStream_t stream_;
  void* p_ = nullptr;
};

// Column sums: out[c] (+)= Σ_n in[n·cols + c] over n in [0, rows), accumulated in the order
// of n within fixed 256-row blocks and the blocks in order (no atomics; the bits depend on
// the sizes only). accumulate: add into out instead of overwriting. Bias and gain gradients.
template <class T>
void column_sums(const CudaBackend& be, const char* op, T* out, const T* in, int64_t rows, int64_t cols,
                 bool accumulate);

// Σ a[i]·b[i] over [0, n) in double, written to *out (device memory, one double), in a fixed
// tree over a fixed grid: sum_squares (b = a) and the scalar gains' gradients.
template <class T>
void dot_sum(const CudaBackend& be, const char* op, double* out, const T* a, const T* b, int64_t n);

}  // namespace mom::cuda
