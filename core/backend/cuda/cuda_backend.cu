// CudaBackend: device selection, memory, copies, the small elementwise ops, and the shared
// helpers of cuda_common.cuh (checks, column sums, the double dot product).
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>

#include "core/backend/cuda/cuda_common.cuh"
#include "core/error.h"
#include "parallel/launch_env.h"

namespace mom {
namespace cuda {

std::string describe(const Tensor& t) {
  if (t.empty()) return "-";
  return std::string(dtype_name(t.dtype)) + t.shape.str();
}

std::string shapes(std::initializer_list<std::pair<const char*, const Tensor*>> named) {
  std::string s;
  for (const auto& [name, t] : named) {
    if (!s.empty()) s += ", ";
    s += std::string(name) + " " + describe(*t);
  }
  return s;
}

namespace {

const char* hint_for(cudaError_t e) {
  switch (e) {
    case cudaErrorMemoryAllocation:
      return "The GPU is out of memory: lower train.batch_size or model.n_ctx, or use more ranks.";
    case cudaErrorNoDevice:
    case cudaErrorInvalidDevice:
      return "Check nvidia-smi and CUDA_VISIBLE_DEVICES / MOM_CUDA_DEVICE.";
    case cudaErrorInsufficientDriver:
      return "The NVIDIA driver is older than this build's CUDA 13 runtime: update the driver.";
    case cudaErrorNoKernelImageForDevice:
      return "This build has no code for this GPU: rebuild with -DCMAKE_CUDA_ARCHITECTURES=<its sm>.";
    default:
      return "Rerun with MOM_CUDA_SYNC=1 so that the op that faulted reports it (or under compute-sanitizer); "
             "a fault inside a kernel is a bug in mom: please report it with this message.";
  }
}

bool sync_each_op() {
  static const bool on = [] {
    const char* v = std::getenv("MOM_CUDA_SYNC");
    return v && *v && std::string(v) != "0";
  }();
  return on;
}

}  // namespace

void check(cudaError_t e, const char* op, const std::string& what) {
  if (e == cudaSuccess) return;
  const std::string msg =
      std::string("CUDA error in ") + op + " (" + what + "): " + cudaGetErrorString(e) + ". " + hint_for(e);
  if (e == cudaErrorMemoryAllocation) throw UserError(msg);
  throw std::runtime_error(msg);
}

void check(cublasStatus_t s, const char* op, const std::string& what) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  const std::string msg = std::string("cuBLAS error in ") + op + " (" + what + "): " + cublasGetStatusString(s) +
                          (s == CUBLAS_STATUS_ALLOC_FAILED ? ". The GPU is out of memory: lower train.batch_size."
                                                           : ". Rerun with MOM_CUDA_SYNC=1 to locate the op.");
  if (s == CUBLAS_STATUS_ALLOC_FAILED) throw UserError(msg);
  throw std::runtime_error(msg);
}

void check_launch(const char* op, const std::string& what, cudaStream_t stream) {
  check(cudaGetLastError(), op, what);
  if (sync_each_op()) check(cudaStreamSynchronize(stream), op, what);
}

Scratch::Scratch(const CudaBackend& be, size_t bytes, const char* op) : stream_(be.stream()) {
  if (bytes) check(cudaMallocAsync(&p_, bytes, stream_), op, "scratch of " + std::to_string(bytes) + " bytes");
}

Scratch::~Scratch() {
  if (p_) cudaFreeAsync(p_, stream_);
}

namespace {

constexpr int kColumnBlockRows = 256;

// Stage 1: partial[b, c] = Σ over rows [b·256, (b+1)·256) of in[n, c], in row order; one
// thread per column (adjacent threads read adjacent columns: coalesced).
template <class T>
__global__ void column_partials(T* partial, const T* in, int64_t rows, int64_t cols) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  const int64_t r0 = blockIdx.y * static_cast<int64_t>(kColumnBlockRows);
  const int64_t r1 = min(rows, r0 + kColumnBlockRows);
  T s = 0;
  for (int64_t r = r0; r < r1; ++r) s += in[r * cols + c];
  partial[blockIdx.y * cols + c] = s;
}

// Stage 2: out[c] (+)= Σ_b partial[b, c] in block order.
template <class T>
__global__ void column_finish(T* out, const T* partial, int64_t blocks, int64_t cols, bool accumulate) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  T s = 0;
  for (int64_t b = 0; b < blocks; ++b) s += partial[b * cols + c];
  out[c] = accumulate ? out[c] + s : s;
}

constexpr int kDotBlocks = 512;

template <class T>
__global__ void dot_partials(double* partial, const T* a, const T* b, int64_t n) {
  double s = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    s += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  s = cuda::block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void dot_finish(double* out, const double* partial, int blocks) {
  double s = 0;
  for (int b = threadIdx.x; b < blocks; b += blockDim.x) s += partial[b];
  s = cuda::block_sum(s);
  if (threadIdx.x == 0) *out = s;
}

}  // namespace

template <class T>
void column_sums(const CudaBackend& be, const char* op, T* out, const T* in, int64_t rows, int64_t cols,
                 bool accumulate) {
  if (cols == 0) return;
  const int64_t blocks = std::max<int64_t>(1, (rows + kColumnBlockRows - 1) / kColumnBlockRows);
  Scratch partial(be, static_cast<size_t>(blocks * cols) * sizeof(T), op);
  const std::string what = "column sums of [" + std::to_string(rows) + ", " + std::to_string(cols) + "]";
  if (rows == 0) {
    check(cudaMemsetAsync(partial.as<T>(), 0, static_cast<size_t>(cols) * sizeof(T), be.stream()), op, what);
  } else {
    const dim3 grid(static_cast<unsigned>((cols + kThreads - 1) / kThreads), static_cast<unsigned>(blocks));
    column_partials<<<grid, kThreads, 0, be.stream()>>>(partial.as<T>(), in, rows, cols);
    check_launch(op, what, be.stream());
  }
  column_finish<<<grid_for(cols), kThreads, 0, be.stream()>>>(out, partial.as<T>(), blocks, cols, accumulate);
  check_launch(op, what, be.stream());
}
template void column_sums<float>(const CudaBackend&, const char*, float*, const float*, int64_t, int64_t, bool);
template void column_sums<double>(const CudaBackend&, const char*, double*, const double*, int64_t, int64_t, bool);

template <class T>
void dot_sum(const CudaBackend& be, const char* op, double* out, const T* a, const T* b, int64_t n) {
  Scratch partial(be, kDotBlocks * sizeof(double), op);
  const std::string what = "a sum over " + std::to_string(n) + " elements";
  dot_partials<<<kDotBlocks, kThreads, 0, be.stream()>>>(partial.as<double>(), a, b, n);
  check_launch(op, what, be.stream());
  dot_finish<<<1, 1024, 0, be.stream()>>>(out, partial.as<double>(), kDotBlocks);
  check_launch(op, what, be.stream());
}
template void dot_sum<float>(const CudaBackend&, const char*, double*, const float*, const float*, int64_t);
template void dot_sum<double>(const CudaBackend&, const char*, double*, const double*, const double*, int64_t);

}  // namespace cuda

namespace {

// MOM_CUDA_DEVICE, else the local rank modulo the visible devices.
int pick_device(int count) {
  if (const char* v = std::getenv("MOM_CUDA_DEVICE"); v && *v) {
    char* end = nullptr;
    const long d = std::strtol(v, &end, 10);
    require(*end == '\0' && d >= 0 && d < count,
            "MOM_CUDA_DEVICE=" + std::string(v) + " is not a device index: " + std::to_string(count) +
                " CUDA device(s) are visible (0.." + std::to_string(count - 1) + ")");
    return static_cast<int>(d);
  }
  return parallel::detect_launch_env().local_rank % count;
}

}  // namespace

CudaBackend::CudaBackend() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0)
    throw UserError(std::string("device 'cuda' is not usable here: ") +
                    (e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device is visible") +
                    ". Run on a GPU node (nvidia-smi should list one; check CUDA_VISIBLE_DEVICES) or set device "
                    "to \"cpu\"");
  device_ = pick_device(count);
  const std::string what = "device " + std::to_string(device_);
  cuda::check(cudaSetDevice(device_), "CudaBackend", what);
  cuda::check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "CudaBackend", what);
  cuda::check(cublasLtCreate(&lt_), "CudaBackend", what);
  cuda::check(cublasCreate(&blas_), "CudaBackend", what);
  cuda::check(cublasSetStream(blas_, stream_), "CudaBackend", what);
  // Plain f32 arithmetic (no TF32): f32 results must stay within float rounding of the CPU's.
  cuda::check(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH), "CudaBackend", what);
  lt_workspace_bytes_ = size_t{32} << 20;  // what NVIDIA recommends for Hopper
  cuda::check(cudaMalloc(&lt_workspace_, lt_workspace_bytes_), "CudaBackend", what);
}

CudaBackend::~CudaBackend() {
  // Process exit: errors here have nowhere to go and must not throw from a destructor.
  if (stream_) cudaStreamSynchronize(stream_);
  if (lt_workspace_) cudaFree(lt_workspace_);
  if (blas_) cublasDestroy(blas_);
  if (lt_) cublasLtDestroy(lt_);
  if (stream_) cudaStreamDestroy(stream_);
}

std::string CudaBackend::name() const {
  cudaDeviceProp p{};
  cudaGetDeviceProperties(&p, device_);
  return std::string("cuda (") + p.name + ", sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", device " +
         std::to_string(device_) + "; cuBLASLt + kernels)";
}

bool CudaBackend::is_device_pointer(const void* p) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so the next check does not see it
    return false;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

void* CudaBackend::allocate(size_t bytes) {
  void* p = nullptr;
  cuda::check(cudaMalloc(&p, bytes ? bytes : 1), "allocate", std::to_string(bytes) + " bytes");
  return p;
}

void CudaBackend::release(void* p) {
  if (!p) return;
  cudaStreamSynchronize(stream_);
  cudaFree(p);
}

void CudaBackend::memset_zero(void* p, size_t bytes) {
  if (bytes) cuda::check(cudaMemsetAsync(p, 0, bytes, stream_), "memset_zero", std::to_string(bytes) + " bytes");
}

void CudaBackend::copy_from_host(const Tensor& dst, const void* src) {
  if (!dst.bytes()) return;
  // Synchronous with respect to the host: src may be a temporary the caller frees next.
  cuda::check(cudaMemcpyAsync(dst.data, src, dst.bytes(), cudaMemcpyHostToDevice, stream_), "copy_from_host",
              cuda::describe(dst));
  cuda::check(cudaStreamSynchronize(stream_), "copy_from_host", cuda::describe(dst));
}

void CudaBackend::copy_to_host(void* dst, const Tensor& src) {
  if (!src.bytes()) return;
  cuda::check(cudaMemcpyAsync(dst, src.data, src.bytes(), cudaMemcpyDeviceToHost, stream_), "copy_to_host",
              cuda::describe(src));
  cuda::check(cudaStreamSynchronize(stream_), "copy_to_host", cuda::describe(src));
}

void CudaBackend::copy(const Tensor& dst, const Tensor& src) {
  if (dst.bytes() != src.bytes()) throw std::logic_error("copy: sizes differ");
  if (!src.bytes()) return;
  cuda::check(cudaMemcpyAsync(dst.data, src.data, src.bytes(), cudaMemcpyDeviceToDevice, stream_), "copy",
              cuda::shapes({{"dst", &dst}, {"src", &src}}));
}

void CudaBackend::synchronize() { cuda::check(cudaStreamSynchronize(stream_), "synchronize", "the backend's stream"); }

namespace {

template <class T>
__global__ void add_kernel(T* out, const T* a, const T* b, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = a[i] + b[i];
}

template <class T>
__global__ void accumulate_kernel(T* dst, const T* src, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] += src[i];
}

template <class T>
__global__ void scale_kernel(T* t, T factor, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    t[i] *= factor;
}

}  // namespace

void CudaBackend::add(const Tensor& out, const Tensor& a, const Tensor& b) {
  const int64_t n = out.numel();
  if (!n) return;
  dispatch_float(out.dtype, [&](auto zero) {
    using T = decltype(zero);
    add_kernel<<<cuda::grid_for(n), cuda::kThreads, 0, stream_>>>(out.ptr<T>(), a.ptr<T>(), b.ptr<T>(), n);
  });
  cuda::check_launch("add", cuda::shapes({{"out", &out}, {"a", &a}, {"b", &b}}), stream_);
}

void CudaBackend::accumulate(const Tensor& dst, const Tensor& src) {
  const int64_t n = dst.numel();
  if (!n) return;
  dispatch_float(dst.dtype, [&](auto zero) {
    using T = decltype(zero);
    accumulate_kernel<<<cuda::grid_for(n), cuda::kThreads, 0, stream_>>>(dst.ptr<T>(), src.ptr<T>(), n);
  });
  cuda::check_launch("accumulate", cuda::shapes({{"dst", &dst}, {"src", &src}}), stream_);
}

void CudaBackend::scale(const Tensor& t, double factor) {
  const int64_t n = t.numel();
  if (!n) return;
  dispatch_float(t.dtype, [&](auto zero) {
    using T = decltype(zero);
    scale_kernel<<<cuda::grid_for(n), cuda::kThreads, 0, stream_>>>(t.ptr<T>(), static_cast<T>(factor), n);
  });
  cuda::check_launch("scale", cuda::describe(t), stream_);
}

double CudaBackend::sum_squares(const Tensor& t) {
  if (!t.numel()) return 0.0;
  cuda::Scratch result(*this, sizeof(double), "sum_squares");
  dispatch_float(t.dtype, [&](auto zero) {
    using T = decltype(zero);
    cuda::dot_sum(*this, "sum_squares", result.as<double>(), t.ptr<T>(), t.ptr<T>(), t.numel());
  });
  double host = 0;
  cuda::check(cudaMemcpyAsync(&host, result.as<double>(), sizeof host, cudaMemcpyDeviceToHost, stream_), "sum_squares",
              cuda::describe(t));
  cuda::check(cudaStreamSynchronize(stream_), "sum_squares", cuda::describe(t));
  return host;
}

}  // namespace mom
