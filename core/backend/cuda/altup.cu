// Alternating Updates (MODELS.md §5) on the GPU: predict and correct over a stream of K
// blocks, x [K, N, C] block-major (block i is the contiguous [N, C] slab i), with the CPU
// backend's math (core/backend/cpu/altup.cpp). Coefficients are static (p [K,K], g [K]) or per
// token (p [N,K,K], g [N,K]), told apart by their element count as on the CPU; every kernel
// reads a token's coefficients through `coef + n·stride` (stride 0 when static), so both
// kinds share the code.
//
// Why one thread per (token, channel) for the elementwise parts, looping over the K blocks:
// adjacent threads touch adjacent channels of every slab (coalesced), a token's coefficients
// are the same for a whole row (broadcast loads), and each output element is produced by one
// thread in the CPU's order: sums over the stream's blocks start from the first term (j = 0
// or i = 0) and run ascending, so p = I gives x back exactly. correct evaluates
// (pred[i] − g_i·pred[a]) + g_i·y in that order, so K = 1 with g = 1 gives y bit for bit
// (nvcc may contract a product and a sum into an FMA; both exactness properties survive
// that, and the results stay within rounding of the CPU's). correct's thread reads pred[a]
// into a register before it writes any block and writes the active block last, so `out` may
// be `pred` itself, as on the CPU.
//
// Why a warp per dot product for the coefficient gradients: dp[i][j] and dg_i are dots over
// C per token (K² or K of them per token, C ≈ 64..768), a good size for one warp: lanes read
// 32 consecutive channels (coalesced), accumulate in double like the CPU's dot_double, and
// combine by a fixed xor-shuffle tree. Per-token gradients are then added in place (each
// element has one owner). Static coefficients' gradients sum those per-token dots over the
// tokens: the dots go to a [N, K²] (or [N, K]) double scratch, cuda::column_sums reduces it
// in a fixed order (row blocks, then blocks in order), and one small kernel adds the double
// totals, rounded to T once, into the gradient, as the CPU rounds its double total once. No
// atomics anywhere: the bits depend on the sizes only.
#include <stdexcept>
#include <string>

#include "core/backend/cuda/cuda_common.cuh"

namespace mom {

namespace {

constexpr int kWarpsPerBlock = cuda::kThreads / 32;

// The stream's sizes from a [K, ..., C] tensor; N = 0 when the tensor has no elements.
struct Stream {
  int64_t K = 0, N = 0, C = 0;
  explicit Stream(const Tensor& x) : K(x.shape[0]), C(x.shape[x.shape.rank - 1]) {
    N = x.numel() ? x.numel() / (K * C) : 0;
  }
  int64_t NC() const { return N * C; }
};

// Elements per token of a coefficient tensor with `per` elements per set: 0 when static,
// `per` when per token (with N = 1 both readings agree), as the CPU backend decides.
int64_t coef_stride(const Tensor& c, int64_t per, int64_t N, const char* what) {
  if (c.numel() == per) return 0;
  if (c.numel() == N * per) return per;
  throw std::logic_error(std::string(what) + ": coefficient tensor " + c.shape.str() +
                         " is neither static nor per token");
}

void check_active(int active, int64_t K, const char* what) {
  if (active < 0 || active >= K)
    throw std::logic_error(std::string(what) + ": active block " + std::to_string(active) + " is outside 0.." +
                           std::to_string(K - 1));
}

template <class T>
T* ptr_or_null(const Tensor& t) {
  return t.empty() ? nullptr : t.ptr<T>();
}

// out[i] = Σ_j p[i][j]·x[j] for one (n, c) per thread.
template <class T>
__global__ void predict_forward_kernel(T* out, const T* x, const T* p, int64_t K, int64_t NC, int64_t C,
                                       int64_t stride) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < NC;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T* pn = p + (e / C) * stride;
    for (int64_t i = 0; i < K; ++i) {
      T acc = pn[i * K] * x[e];
      for (int64_t j = 1; j < K; ++j) acc += pn[i * K + j] * x[j * NC + e];
      out[i * NC + e] = acc;
    }
  }
}

// dx[j] += Σ_i p[i][j]·dout[i] for one (n, c) per thread.
template <class T>
__global__ void predict_dx_kernel(T* dx, const T* d, const T* p, int64_t K, int64_t NC, int64_t C, int64_t stride) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < NC;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T* pn = p + (e / C) * stride;
    for (int64_t j = 0; j < K; ++j) {
      T acc = pn[j] * d[e];
      for (int64_t i = 1; i < K; ++i) acc += pn[i * K + j] * d[i * NC + e];
      dx[j * NC + e] += acc;
    }
  }
}

// One warp per (n, i, j): v = Σ_c dout[i][n][c]·x[j][n][c] in double. Per token (dp != null):
// dp[n, i, j] += v; static: partial[n, i·K + j] = v, summed over n afterwards.
template <class T>
__global__ void predict_dp_kernel(T* dp, double* partial, const T* d, const T* x, int64_t N, int64_t K, int64_t C) {
  const int64_t KK = K * K, NC = N * C, dots = N * KK;
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t q = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5; q < dots; q += warps) {
    const int64_t n = q / KK, ij = q % KK, i = ij / K, j = ij % K;
    const T* di = d + i * NC + n * C;
    const T* xj = x + j * NC + n * C;
    double s = 0;
    for (int64_t c = lane; c < C; c += 32) s += static_cast<double>(di[c]) * static_cast<double>(xj[c]);
    s = cuda::warp_sum(s);
    if (lane == 0) {
      if (dp)
        dp[q] += static_cast<T>(s);
      else
        partial[q] = s;
    }
  }
}

// out[i] = (pred[i] − g_i·pred[a]) + g_i·y for one (n, c) per thread, the active block last.
template <class T>
__global__ void correct_forward_kernel(T* out, const T* pred, const T* y, const T* g, int64_t K, int64_t a, int64_t NC,
                                       int64_t C, int64_t stride) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < NC;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T* gn = g + (e / C) * stride;
    const T pa = pred[a * NC + e], yv = y[e];
    for (int64_t k = 0; k < K; ++k) {
      const int64_t i = (a + 1 + k) % K;
      const T gi = gn[i];
      out[i * NC + e] = (pred[i * NC + e] - gi * pa) + gi * yv;
    }
  }
}

// acc = Σ_i g_i·dout[i]; dpred[i] += dout[i], then dpred[a] −= acc; dy += acc (either may be
// null), one (n, c) per thread.
template <class T>
__global__ void correct_dpred_dy_kernel(T* dpred, T* dy, const T* d, const T* g, int64_t K, int64_t a, int64_t NC,
                                        int64_t C, int64_t stride) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < NC;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T* gn = g + (e / C) * stride;
    T acc = gn[0] * d[e];
    for (int64_t i = 1; i < K; ++i) acc += gn[i] * d[i * NC + e];
    if (dpred) {
      for (int64_t i = 0; i < K; ++i) dpred[i * NC + e] += d[i * NC + e];
      dpred[a * NC + e] -= acc;
    }
    if (dy) dy[e] += acc;
  }
}

// One warp per (n, i): v = Σ_c dout[i][n][c]·(y[n][c] − pred[a][n][c]), the difference rounded
// to T first as on the CPU, the dot in double. Per token (dg != null): dg[n, i] += v; static:
// partial[n, i] = v.
template <class T>
__global__ void correct_dg_kernel(T* dg, double* partial, const T* d, const T* pred, const T* y, int64_t N, int64_t K,
                                  int64_t a, int64_t C) {
  const int64_t NC = N * C, dots = N * K;
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t q = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5; q < dots; q += warps) {
    const int64_t n = q / K, i = q % K;
    const T* di = d + i * NC + n * C;
    const T* pa = pred + a * NC + n * C;
    const T* yr = y + n * C;
    double s = 0;
    for (int64_t c = lane; c < C; c += 32) {
      const T diff = yr[c] - pa[c];
      s += static_cast<double>(di[c]) * static_cast<double>(diff);
    }
    s = cuda::warp_sum(s);
    if (lane == 0) {
      if (dg)
        dg[q] += static_cast<T>(s);
      else
        partial[q] = s;
    }
  }
}

// dst[k] += T(src[k]): the static coefficients' double totals, rounded once.
template <class T>
__global__ void add_doubles_kernel(T* dst, const double* src, int64_t n) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[k] += static_cast<T>(src[k]);
}

}  // namespace

void CudaBackend::altup_predict_forward(const Tensor& out, const Tensor& x, const Tensor& p) {
  const Stream s(x);
  const int64_t K = s.K, C = s.C, NC = s.NC();
  if (NC == 0) return;
  const int64_t stride = coef_stride(p, K * K, s.N, "altup_predict_forward");
  dispatch_float(x.dtype, [&](auto zero) {
    using T = decltype(zero);
    predict_forward_kernel<<<cuda::grid_for(NC), cuda::kThreads, 0, stream_>>>(out.ptr<T>(), x.ptr<T>(), p.ptr<T>(), K,
                                                                               NC, C, stride);
  });
  MOM_CUDA_CHECK_LAUNCH("altup_predict_forward", cuda::shapes({{"out", &out}, {"x", &x}, {"p", &p}}), stream_);
}

void CudaBackend::altup_predict_backward(const Tensor& dx, const Tensor& dp, const Tensor& dout, const Tensor& x,
                                         const Tensor& p) {
  const Stream s(dout);
  const int64_t K = s.K, N = s.N, C = s.C, NC = s.NC(), KK = K * K;
  if (NC == 0 || (dx.empty() && dp.empty())) return;
  const int64_t stride = coef_stride(p, KK, N, "altup_predict_backward");
  const char* op = "altup_predict_backward";
  const std::string what = cuda::shapes({{"dx", &dx}, {"dp", &dp}, {"dout", &dout}, {"x", &x}, {"p", &p}});
  dispatch_float(dout.dtype, [&](auto zero) {
    using T = decltype(zero);
    if (!dx.empty()) {
      predict_dx_kernel<<<cuda::grid_for(NC), cuda::kThreads, 0, stream_>>>(dx.ptr<T>(), dout.ptr<T>(), p.ptr<T>(), K,
                                                                            NC, C, stride);
      MOM_CUDA_CHECK_LAUNCH(op, what, stream_);
    }
    if (dp.empty()) return;
    const int64_t dots = N * KK;
    if (stride != 0) {
      predict_dp_kernel<<<cuda::grid_for(dots, kWarpsPerBlock), cuda::kThreads, 0, stream_>>>(
          dp.ptr<T>(), nullptr, dout.ptr<T>(), x.ptr<T>(), N, K, C);
      MOM_CUDA_CHECK_LAUNCH(op, what, stream_);
      return;
    }
    cuda::Scratch partial(*this, static_cast<size_t>(dots) * sizeof(double), op);
    cuda::Scratch total(*this, static_cast<size_t>(KK) * sizeof(double), op);
    predict_dp_kernel<T><<<cuda::grid_for(dots, kWarpsPerBlock), cuda::kThreads, 0, stream_>>>(
        nullptr, partial.as<double>(), dout.ptr<T>(), x.ptr<T>(), N, K, C);
    MOM_CUDA_CHECK_LAUNCH(op, what, stream_);
    cuda::column_sums(*this, op, total.as<double>(), partial.as<double>(), N, KK, false);
    add_doubles_kernel<<<cuda::grid_for(KK), cuda::kThreads, 0, stream_>>>(dp.ptr<T>(), total.as<double>(), KK);
    MOM_CUDA_CHECK_LAUNCH(op, what, stream_);
  });
}

void CudaBackend::altup_correct_forward(const Tensor& out, const Tensor& pred, const Tensor& y, const Tensor& g,
                                        int active) {
  const Stream s(pred);
  const int64_t K = s.K, C = s.C, NC = s.NC();
  if (NC == 0) return;
  check_active(active, K, "altup_correct_forward");
  const int64_t stride = coef_stride(g, K, s.N, "altup_correct_forward");
  dispatch_float(pred.dtype, [&](auto zero) {
    using T = decltype(zero);
    correct_forward_kernel<<<cuda::grid_for(NC), cuda::kThreads, 0, stream_>>>(out.ptr<T>(), pred.ptr<T>(), y.ptr<T>(),
                                                                               g.ptr<T>(), K, active, NC, C, stride);
  });
  MOM_CUDA_CHECK_LAUNCH("altup_correct_forward", cuda::shapes({{"out", &out}, {"pred", &pred}, {"y", &y}, {"g", &g}}),
                        stream_);
}

void CudaBackend::altup_correct_backward(const Tensor& dpred, const Tensor& dy, const Tensor& dg, const Tensor& dout,
                                         const Tensor& pred, const Tensor& y, const Tensor& g, int active) {
  const Stream s(dout);
  const int64_t K = s.K, N = s.N, C = s.C, NC = s.NC();
  if (NC == 0 || (dpred.empty() && dy.empty() && dg.empty())) return;
  check_active(active, K, "altup_correct_backward");
  const int64_t stride = coef_stride(g, K, N, "altup_correct_backward");
  const char* op = "altup_correct_backward";
  const std::string what = cuda::shapes(
      {{"dpred", &dpred}, {"dy", &dy}, {"dg", &dg}, {"dout", &dout}, {"pred", &pred}, {"y", &y}, {"g", &g}});
  dispatch_float(dout.dtype, [&](auto zero) {
    using T = decltype(zero);
    if (!dpred.empty() || !dy.empty()) {
      correct_dpred_dy_kernel<<<cuda::grid_for(NC), cuda::kThreads, 0, stream_>>>(
          ptr_or_null<T>(dpred), ptr_or_null<T>(dy), dout.ptr<T>(), g.ptr<T>(), K, active, NC, C, stride);
      MOM_CUDA_CHECK_LAUNCH(op, what, stream_);
    }
    if (dg.empty()) return;
    const int64_t dots = N * K;
    if (stride != 0) {
      correct_dg_kernel<<<cuda::grid_for(dots, kWarpsPerBlock), cuda::kThreads, 0, stream_>>>(
          dg.ptr<T>(), nullptr, dout.ptr<T>(), pred.ptr<T>(), y.ptr<T>(), N, K, active, C);
      MOM_CUDA_CHECK_LAUNCH(op, what, stream_);
      return;
    }
    cuda::Scratch partial(*this, static_cast<size_t>(dots) * sizeof(double), op);
    cuda::Scratch total(*this, static_cast<size_t>(K) * sizeof(double), op);
    correct_dg_kernel<T><<<cuda::grid_for(dots, kWarpsPerBlock), cuda::kThreads, 0, stream_>>>(
        nullptr, partial.as<double>(), dout.ptr<T>(), pred.ptr<T>(), y.ptr<T>(), N, K, active, C);
    MOM_CUDA_CHECK_LAUNCH(op, what, stream_);
    cuda::column_sums(*this, op, total.as<double>(), partial.as<double>(), N, K, false);
    add_doubles_kernel<<<cuda::grid_for(K), cuda::kThreads, 0, stream_>>>(dg.ptr<T>(), total.as<double>(), K);
    MOM_CUDA_CHECK_LAUNCH(op, what, stream_);
  });
}

}  // namespace mom
