// The elementwise kernels of the router networks on the GPU: ReLU (mlp router) and the GRU
// cell's gate arithmetic (gru router), forward beside backward, with the CPU backend's math
// (core/backend/cpu/router_ops.cpp): gates in (r | z | n) order, r = σ(gx_r + gh_r),
// z = σ(gx_z + gh_z), n = tanh(gx_n + r·gh_n), s' = n + z·(s − n).
//
// Why one thread per state element (t, i) of [N, r], grid-strided: each element reads its
// three gates at i, r + i, 2r + i of its row, so a warp's 32 consecutive i read three
// contiguous runs (coalesced), writes only its own outputs, and needs no reduction: the
// weight and bias gradients of the projections come from matmul_backward. The bits do not
// depend on the launch geometry. σ(v) = 1/(1 + exp(−v)) with the accurate exp/expf, as on the
// CPU (no fast-math intrinsics).
#include "core/backend/cuda/cuda_common.cuh"

namespace mom {

namespace {

template <class T>
__device__ T sigmoid(T v) {
  return T(1) / (T(1) + exp(-v));
}

template <class T>
__global__ void relu_forward_kernel(T* out, const T* inp, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = inp[i] > T(0) ? inp[i] : T(0);
}

template <class T>
__global__ void relu_backward_kernel(T* dinp, const T* inp, const T* dout, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dinp[i] += inp[i] > T(0) ? dout[i] : T(0);
}

template <class T>
__global__ void gru_forward_kernel(T* s_new, T* gates, const T* gx, const T* gh, const T* s, int64_t N, int64_t r) {
  const int64_t total = N * r;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = e / r, i = e - t * r;
    const T* xt = gx + t * 3 * r;
    const T* ht = gh + t * 3 * r;
    T* gt = gates + t * 3 * r;
    const T rg = sigmoid(xt[i] + ht[i]);
    const T zg = sigmoid(xt[r + i] + ht[r + i]);
    const T ng = tanh(xt[2 * r + i] + rg * ht[2 * r + i]);
    gt[i] = rg;
    gt[r + i] = zg;
    gt[2 * r + i] = ng;
    s_new[e] = ng + zg * (s[e] - ng);
  }
}

template <class T>
__global__ void gru_backward_kernel(T* dgx, T* dgh, T* ds, const T* ds_new, const T* gates, const T* gh, const T* s,
                                    int64_t N, int64_t r) {
  const int64_t total = N * r;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = e / r, i = e - t * r;
    const T* gt = gates + t * 3 * r;
    const T* ht = gh + t * 3 * r;
    T* dxt = dgx + t * 3 * r;
    T* dht = dgh + t * 3 * r;
    const T rg = gt[i], zg = gt[r + i], ng = gt[2 * r + i];
    const T dout = ds_new[e];
    // s' = n + z·(s − n) = (1 − z)·n + z·s.
    ds[e] += dout * zg;
    const T dz = dout * (s[e] - ng) * zg * (T(1) - zg);  // through σ'
    const T dn = dout * (T(1) - zg) * (T(1) - ng * ng);  // through tanh'
    // n's pre-activation is gx_n + r·gh_n: gx_n gets dn, gh_n gets r·dn, r gets gh_n·dn.
    const T dr = dn * ht[2 * r + i] * rg * (T(1) - rg);
    dxt[i] += dr;
    dht[i] += dr;
    dxt[r + i] += dz;
    dht[r + i] += dz;
    dxt[2 * r + i] += dn;
    dht[2 * r + i] += dn * rg;
  }
}

}  // namespace

void CudaBackend::relu_forward(const Tensor& out, const Tensor& inp) {
  const int64_t n = inp.numel();
  if (!n) return;
  dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    relu_forward_kernel<<<cuda::grid_for(n), cuda::kThreads, 0, stream_>>>(out.ptr<T>(), inp.ptr<T>(), n);
  });
  MOM_CUDA_CHECK_LAUNCH("relu_forward", cuda::shapes({{"out", &out}, {"inp", &inp}}), stream_);
}

void CudaBackend::relu_backward(const Tensor& dinp, const Tensor& inp, const Tensor& dout) {
  const int64_t n = inp.numel();
  if (!n) return;
  dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    relu_backward_kernel<<<cuda::grid_for(n), cuda::kThreads, 0, stream_>>>(dinp.ptr<T>(), inp.ptr<T>(), dout.ptr<T>(),
                                                                            n);
  });
  MOM_CUDA_CHECK_LAUNCH("relu_backward", cuda::shapes({{"dinp", &dinp}, {"inp", &inp}, {"dout", &dout}}), stream_);
}

void CudaBackend::gru_cell_forward(const Tensor& s_new, const Tensor& gates, const Tensor& gx, const Tensor& gh,
                                   const Tensor& s) {
  const int64_t n = s.numel();
  const int64_t r = s.shape[s.shape.rank - 1];
  if (!n || !r) return;
  dispatch_float(s.dtype, [&](auto zero) {
    using T = decltype(zero);
    gru_forward_kernel<<<cuda::grid_for(n), cuda::kThreads, 0, stream_>>>(s_new.ptr<T>(), gates.ptr<T>(), gx.ptr<T>(),
                                                                          gh.ptr<T>(), s.ptr<T>(), n / r, r);
  });
  MOM_CUDA_CHECK_LAUNCH("gru_cell_forward",
                        cuda::shapes({{"s_new", &s_new}, {"gates", &gates}, {"gx", &gx}, {"gh", &gh}, {"s", &s}}),
                        stream_);
}

void CudaBackend::gru_cell_backward(const Tensor& dgx, const Tensor& dgh, const Tensor& ds, const Tensor& ds_new,
                                    const Tensor& gates, const Tensor& gh, const Tensor& s) {
  const int64_t n = s.numel();
  const int64_t r = s.shape[s.shape.rank - 1];
  if (!n || !r) return;
  dispatch_float(s.dtype, [&](auto zero) {
    using T = decltype(zero);
    gru_backward_kernel<<<cuda::grid_for(n), cuda::kThreads, 0, stream_>>>(
        dgx.ptr<T>(), dgh.ptr<T>(), ds.ptr<T>(), ds_new.ptr<T>(), gates.ptr<T>(), gh.ptr<T>(), s.ptr<T>(), n / r, r);
  });
  MOM_CUDA_CHECK_LAUNCH(
      "gru_cell_backward",
      cuda::shapes(
          {{"dgx", &dgx}, {"dgh", &dgh}, {"ds", &ds}, {"ds_new", &ds_new}, {"gates", &gates}, {"gh", &gh}, {"s", &s}}),
      stream_);
}

}  // namespace mom
