// LayerNorm over the last axis on the GPU, forward beside backward; the math is the CPU
// backend's (core/backend/cpu/layernorm.cpp) term for term: a two-pass mean and variance (the
// variance from the centred values, not E[x²] − m², which cancels badly in f32), rstd =
// 1/sqrt(var + eps), and mean and rstd saved per row for backward.
//
// Why one warp per row: the rows are short (C = 64..a few thousand), so a block per row would
// leave most of its threads idle at C = 64, while a warp per row keeps every lane busy, reads
// the row coalesced (lane l takes columns l, l+32, ...) and reduces with shuffles alone, no
// shared memory or __syncthreads. The reduction order is fixed (each lane sums its columns in
// order, then an xor-shuffle tree whose shape depends on nothing but the warp size), so the
// bits are the same on every run. Rows are grid-strided; the loop bound is the same for the
// whole warp, so the full-mask shuffles are always reached by all 32 lanes.
//
// Why the weight and bias gradients go through cuda::column_sums: they are sums over rows,
// and a deterministic column reduction already exists. dbias is the column sum of dout
// itself; dweight is the column sum of the per-row products dout·x̂, which the row kernel
// writes into a scratch [N, C] (stream-ordered, from the pool) while it computes dinp. The
// scratch costs one extra write and read of an [N, C] array, small beside the GEMMs around a
// LayerNorm, and keeps this file free of its own cross-block reduction. Any of dinp, dweight,
// dbias may be empty (Backend contract); what is absent is skipped.
#include "core/backend/cuda/cuda_common.cuh"

namespace mom {

namespace {

constexpr int kRowsPerBlock = cuda::kThreads / 32;

template <class T>
__global__ void layernorm_forward_kernel(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias,
                                         int64_t N, int64_t C, T eps) {
  const int lane = threadIdx.x & 31;
  for (int64_t n = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + (threadIdx.x >> 5); n < N;
       n += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const T* x = inp + n * C;
    T s = 0;
    for (int64_t c = lane; c < C; c += 32) s += x[c];
    const T m = cuda::warp_sum(s) / static_cast<T>(C);
    T v = 0;
    for (int64_t c = lane; c < C; c += 32) {
      const T xc = x[c] - m;
      v += xc * xc;
    }
    v = cuda::warp_sum(v) / static_cast<T>(C);
    const T r = T(1) / sqrt(v + eps);
    T* o = out + n * C;
    for (int64_t c = lane; c < C; c += 32) o[c] = (x[c] - m) * r * weight[c] + bias[c];
    if (lane == 0) {
      mean[n] = m;
      rstd[n] = r;
    }
  }
}

// dinp (may be null) += the input gradient; prod (may be null) = dout·x̂ per element, for
// dweight's column sums.
template <class T>
__global__ void layernorm_backward_kernel(T* dinp, T* prod, const T* dout, const T* inp, const T* weight, const T* mean,
                                          const T* rstd, int64_t N, int64_t C) {
  const int lane = threadIdx.x & 31;
  for (int64_t n = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + (threadIdx.x >> 5); n < N;
       n += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const T* x = inp + n * C;
    const T* d = dout + n * C;
    const T m = mean[n], r = rstd[n];
    if (prod) {
      T* p = prod + n * C;
      for (int64_t c = lane; c < C; c += 32) p[c] = d[c] * (x[c] - m) * r;
    }
    if (!dinp) continue;
    T dnorm_mean = 0, dnorm_norm_mean = 0;
    for (int64_t c = lane; c < C; c += 32) {
      const T norm = (x[c] - m) * r;
      const T dnorm = d[c] * weight[c];
      dnorm_mean += dnorm;
      dnorm_norm_mean += dnorm * norm;
    }
    dnorm_mean = cuda::warp_sum(dnorm_mean) / static_cast<T>(C);
    dnorm_norm_mean = cuda::warp_sum(dnorm_norm_mean) / static_cast<T>(C);
    T* dx = dinp + n * C;
    for (int64_t c = lane; c < C; c += 32) {
      const T norm = (x[c] - m) * r;
      const T dnorm = d[c] * weight[c];
      dx[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * r;
    }
  }
}

}  // namespace

void CudaBackend::layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& inp,
                                    const Tensor& weight, const Tensor& bias, double eps) {
  const int64_t C = inp.shape[inp.shape.rank - 1];
  if (C == 0 || inp.numel() == 0) return;
  const int64_t N = inp.numel() / C;
  dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    layernorm_forward_kernel<<<cuda::grid_for(N * 32), cuda::kThreads, 0, stream_>>>(
        out.ptr<T>(), mean.ptr<T>(), rstd.ptr<T>(), inp.ptr<T>(), weight.ptr<T>(), bias.ptr<T>(), N, C,
        static_cast<T>(eps));
  });
  MOM_CUDA_CHECK_LAUNCH(
      "layernorm_forward",
      cuda::shapes(
          {{"out", &out}, {"mean", &mean}, {"rstd", &rstd}, {"inp", &inp}, {"weight", &weight}, {"bias", &bias}}),
      stream_);
}

void CudaBackend::layernorm_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                                     const Tensor& inp, const Tensor& weight, const Tensor& mean, const Tensor& rstd) {
  const int64_t C = inp.shape[inp.shape.rank - 1];
  if (C == 0 || inp.numel() == 0) return;
  const int64_t N = inp.numel() / C;
  const std::string what = cuda::shapes({{"dinp", &dinp},
                                         {"dweight", &dweight},
                                         {"dbias", &dbias},
                                         {"dout", &dout},
                                         {"inp", &inp},
                                         {"weight", &weight},
                                         {"mean", &mean},
                                         {"rstd", &rstd}});
  dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    const bool want_dw = !dweight.empty();
    if (!dinp.empty() || want_dw) {
      cuda::Scratch prod(*this, want_dw ? static_cast<size_t>(N * C) * sizeof(T) : 0, "layernorm_backward");
      layernorm_backward_kernel<<<cuda::grid_for(N * 32), cuda::kThreads, 0, stream_>>>(
          dinp.empty() ? nullptr : dinp.ptr<T>(), want_dw ? prod.as<T>() : nullptr, dout.ptr<T>(), inp.ptr<T>(),
          weight.ptr<T>(), mean.ptr<T>(), rstd.ptr<T>(), N, C);
      MOM_CUDA_CHECK_LAUNCH("layernorm_backward", what, stream_);
      if (want_dw) cuda::column_sums(*this, "layernorm_backward", dweight.ptr<T>(), prod.as<T>(), N, C, true);
    }
    if (!dbias.empty()) cuda::column_sums(*this, "layernorm_backward", dbias.ptr<T>(), dout.ptr<T>(), N, C, true);
  });
}

}  // namespace mom
