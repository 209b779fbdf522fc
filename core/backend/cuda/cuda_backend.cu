// CudaBackend: device selection, memory, copies, the small elementwise ops, and the shared
// helpers of cuda_common.cuh (checks, column sums, the double dot product).
#include <algorithm>
#include <cstdint>
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

bool launch_check_needed() { return cudaPeekAtLastError() != cudaSuccess || sync_each_op(); }

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
// thread per column (adjacent threads read adjacent columns: coalesced). grid.y strides over
// the row blocks (it is capped at 65535).
template <class T>
__global__ void column_partials(T* partial, const T* in, int64_t rows, int64_t cols, int64_t blocks) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  for (int64_t b = blockIdx.y; b < blocks; b += gridDim.y) {
    const int64_t r0 = b * kColumnBlockRows;
    const int64_t r1 = min(rows, r0 + kColumnBlockRows);
    T s = 0;
    for (int64_t r = r0; r < r1; ++r) s += in[r * cols + c];
    partial[b * cols + c] = s;
  }
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
  const auto what = [&] { return "column sums of [" + std::to_string(rows) + ", " + std::to_string(cols) + "]"; };
  if (rows == 0) {
    MOM_CUDA_CHECK(cudaMemsetAsync(partial.as<T>(), 0, static_cast<size_t>(cols) * sizeof(T), be.stream()), op, what());
  } else {
    const dim3 grid(static_cast<unsigned>((cols + kThreads - 1) / kThreads),
                    static_cast<unsigned>(std::min<int64_t>(blocks, 65535)));
    column_partials<<<grid, kThreads, 0, be.stream()>>>(partial.as<T>(), in, rows, cols, blocks);
    MOM_CUDA_CHECK_LAUNCH(op, what(), be.stream());
  }
  column_finish<<<grid_for(cols), kThreads, 0, be.stream()>>>(out, partial.as<T>(), blocks, cols, accumulate);
  MOM_CUDA_CHECK_LAUNCH(op, what(), be.stream());
}
template void column_sums<float>(const CudaBackend&, const char*, float*, const float*, int64_t, int64_t, bool);
template void column_sums<double>(const CudaBackend&, const char*, double*, const double*, int64_t, int64_t, bool);

template <class T>
void dot_sum(const CudaBackend& be, const char* op, double* out, const T* a, const T* b, int64_t n) {
  Scratch partial(be, kDotBlocks * sizeof(double), op);
  const auto what = [&] { return "a sum over " + std::to_string(n) + " elements"; };
  dot_partials<<<kDotBlocks, kThreads, 0, be.stream()>>>(partial.as<double>(), a, b, n);
  MOM_CUDA_CHECK_LAUNCH(op, what(), be.stream());
  dot_finish<<<1, 1024, 0, be.stream()>>>(out, partial.as<double>(), kDotBlocks);
  MOM_CUDA_CHECK_LAUNCH(op, what(), be.stream());
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
  MOM_CUDA_CHECK(cudaSetDevice(device_), "CudaBackend", what);
  MOM_CUDA_CHECK(cublasLtCreate(&lt_), "CudaBackend", what);
  // Scratch comes from the device's default pool (cudaMallocAsync); its default release
  // threshold (0) hands all free pool memory back to the OS at every synchronisation
  // (copy_to_host, each step), so every step would map its scratch afresh. Keep it pooled.
  cudaMemPool_t pool = nullptr;
  MOM_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device_), "CudaBackend", what);
  uint64_t keep = UINT64_MAX;
  MOM_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), "CudaBackend", what);
  lt_workspace_bytes_ = size_t{32} << 20;  // what NVIDIA recommends for Hopper
  main_ = make_lane(false);
  use_lane(main_);
  if (const char* v = std::getenv("MOM_CUDA_POOL_STREAMS"); v && *v) {
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    require(*end == '\0' && n >= 0 && n <= 64,
            "MOM_CUDA_POOL_STREAMS=" + std::string(v) + " is not a stream count: use 0..64 (0 or 1: no side streams)");
    side_count_ = static_cast<int>(n);
  }
}

CudaBackend::Lane CudaBackend::make_lane(bool side) const {
  const std::string what = "device " + std::to_string(device_) + (side ? ", a side stream" : "");
  Lane lane;
  MOM_CUDA_CHECK(cudaStreamCreateWithFlags(&lane.stream, cudaStreamNonBlocking), "CudaBackend", what);
  MOM_CUDA_CHECK(cublasCreate(&lane.blas), "CudaBackend", what);
  MOM_CUDA_CHECK(cublasSetStream(lane.blas, lane.stream), "CudaBackend", what);
  // Plain f32 arithmetic (no TF32): f32 results must stay within float rounding of the CPU's.
  MOM_CUDA_CHECK(cublasSetMathMode(lane.blas, CUBLAS_DEFAULT_MATH), "CudaBackend", what);
  MOM_CUDA_CHECK(cudaMalloc(&lane.workspace, lt_workspace_bytes_), "CudaBackend", what);
  if (side) MOM_CUDA_CHECK(cudaEventCreateWithFlags(&lane.done, cudaEventDisableTiming), "CudaBackend", what);
  return lane;
}

void CudaBackend::destroy_lane(Lane& lane) {
  if (lane.stream) cudaStreamSynchronize(lane.stream);
  if (lane.done) cudaEventDestroy(lane.done);
  if (lane.workspace) cudaFree(lane.workspace);
  if (lane.blas) cublasDestroy(lane.blas);
  if (lane.stream) cudaStreamDestroy(lane.stream);
  lane = Lane{};
}

void CudaBackend::use_lane(const Lane& lane) {
  stream_ = lane.stream;
  blas_ = lane.blas;
  lt_workspace_ = lane.workspace;
}

CudaBackend::~CudaBackend() {
  // Process exit: errors here have nowhere to go and must not throw from a destructor.
  for (Lane& lane : sides_) destroy_lane(lane);
  if (fork_) cudaEventDestroy(fork_);
  destroy_lane(main_);
  if (lt_) cublasLtDestroy(lt_);
}

void CudaBackend::run_modules(int n, const std::function<void(int)>& body) {
  if (n <= 1 || side_count_ <= 1 || stream_ != main_.stream) {  // one module, the loop, or nested
    for (int j = 0; j < n; ++j) body(j);
    return;
  }
  const char* op = "run_modules";
  if (sides_.empty()) {
    MOM_CUDA_CHECK(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming), op, "the fork event");
    for (int i = 0; i < side_count_; ++i) sides_.push_back(make_lane(true));
  }
  const int lanes = std::min<int>(n, static_cast<int>(sides_.size()));
  const std::string what = std::to_string(n) + " modules on " + std::to_string(lanes) + " side streams";
  // Fork: each side stream starts after everything queued on the main stream so far.
  MOM_CUDA_CHECK(cudaEventRecord(fork_, main_.stream), op, what);
  for (int i = 0; i < lanes; ++i) MOM_CUDA_CHECK(cudaStreamWaitEvent(sides_[i].stream, fork_, 0), op, what);
  // Join, also when a module throws: the main stream waits for every side stream, and ops go
  // back to the main lane.
  struct Join {
    CudaBackend& be;
    int lanes;
    ~Join() {
      for (int i = 0; i < lanes; ++i) {
        cudaEventRecord(be.sides_[i].done, be.sides_[i].stream);
        cudaStreamWaitEvent(be.main_.stream, be.sides_[i].done, 0);
      }
      be.use_lane(be.main_);
    }
  } join{*this, lanes};
  for (int j = 0; j < n; ++j) {
    use_lane(sides_[j % lanes]);
    body(j);
  }
}

void CudaBackend::set_num_threads(int n) {
  threads_ = n > 0 ? n : 1;
  MOM_CUDA_CHECK(cudaSetDevice(device_), "set_num_threads", "device " + std::to_string(device_));
}

std::string CudaBackend::name() const {
  cudaDeviceProp p{};
  cudaGetDeviceProperties(&p, device_);
  return std::string("cuda (") + p.name + ", sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", device " +
         std::to_string(device_) + "; cuBLASLt + kernels)";
}

void* CudaBackend::allocate(size_t bytes) {
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
  if (e == cudaErrorMemoryAllocation) {  // the scratch pool may hold what is missing: return it and retry
    cudaGetLastError();
    cudaMemPool_t pool = nullptr;
    if (cudaStreamSynchronize(stream_) == cudaSuccess && cudaDeviceGetDefaultMemPool(&pool, device_) == cudaSuccess &&
        cudaMemPoolTrimTo(pool, 0) == cudaSuccess)
      e = cudaMalloc(&p, bytes ? bytes : 1);
  }
  MOM_CUDA_CHECK(e, "allocate", std::to_string(bytes) + " bytes");
  return p;
}

void CudaBackend::release(void* p) {
  if (!p) return;
  cudaStreamSynchronize(stream_);
  cudaFree(p);
}

void CudaBackend::memset_zero(void* p, size_t bytes) {
  if (bytes) MOM_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_), "memset_zero", std::to_string(bytes) + " bytes");
}

void CudaBackend::copy_from_host(const Tensor& dst, const void* src) {
  if (!dst.bytes()) return;
  // Synchronous with respect to the host: src may be a temporary the caller frees next.
  MOM_CUDA_CHECK(cudaMemcpyAsync(dst.data, src, dst.bytes(), cudaMemcpyHostToDevice, stream_), "copy_from_host",
                 cuda::describe(dst));
  MOM_CUDA_CHECK(cudaStreamSynchronize(stream_), "copy_from_host", cuda::describe(dst));
}

void CudaBackend::copy_to_host(void* dst, const Tensor& src) {
  if (!src.bytes()) return;
  MOM_CUDA_CHECK(cudaMemcpyAsync(dst, src.data, src.bytes(), cudaMemcpyDeviceToHost, stream_), "copy_to_host",
                 cuda::describe(src));
  MOM_CUDA_CHECK(cudaStreamSynchronize(stream_), "copy_to_host", cuda::describe(src));
}

void CudaBackend::copy(const Tensor& dst, const Tensor& src) {
  if (dst.bytes() != src.bytes()) throw std::logic_error("copy: sizes differ");
  if (!src.bytes()) return;
  MOM_CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, src.bytes(), cudaMemcpyDeviceToDevice, stream_), "copy",
                 cuda::shapes({{"dst", &dst}, {"src", &src}}));
}

void CudaBackend::synchronize() {
  MOM_CUDA_CHECK(cudaStreamSynchronize(stream_), "synchronize", "the backend's stream");
}

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
  MOM_CUDA_CHECK_LAUNCH("add", cuda::shapes({{"out", &out}, {"a", &a}, {"b", &b}}), stream_);
}

void CudaBackend::accumulate(const Tensor& dst, const Tensor& src) {
  const int64_t n = dst.numel();
  if (!n) return;
  dispatch_float(dst.dtype, [&](auto zero) {
    using T = decltype(zero);
    accumulate_kernel<<<cuda::grid_for(n), cuda::kThreads, 0, stream_>>>(dst.ptr<T>(), src.ptr<T>(), n);
  });
  MOM_CUDA_CHECK_LAUNCH("accumulate", cuda::shapes({{"dst", &dst}, {"src", &src}}), stream_);
}

void CudaBackend::scale(const Tensor& t, double factor) {
  const int64_t n = t.numel();
  if (!n) return;
  dispatch_float(t.dtype, [&](auto zero) {
    using T = decltype(zero);
    scale_kernel<<<cuda::grid_for(n), cuda::kThreads, 0, stream_>>>(t.ptr<T>(), static_cast<T>(factor), n);
  });
  MOM_CUDA_CHECK_LAUNCH("scale", cuda::describe(t), stream_);
}

double CudaBackend::sum_squares(const Tensor& t) {
  if (!t.numel()) return 0.0;
  cuda::Scratch result(*this, sizeof(double), "sum_squares");
  dispatch_float(t.dtype, [&](auto zero) {
    using T = decltype(zero);
    cuda::dot_sum(*this, "sum_squares", result.as<double>(), t.ptr<T>(), t.ptr<T>(), t.numel());
  });
  double host = 0;
  MOM_CUDA_CHECK(cudaMemcpyAsync(&host, result.as<double>(), sizeof host, cudaMemcpyDeviceToHost, stream_),
                 "sum_squares", cuda::describe(t));
  MOM_CUDA_CHECK(cudaStreamSynchronize(stream_), "sum_squares", cuda::describe(t));
  return host;
}

}  // namespace mom
