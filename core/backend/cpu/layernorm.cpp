// LayerNorm over the last axis (eps from the model config, 1e-5 for GPT-2).
// Forward saves mean and 1/std per row. Backward: the input gradient is row-parallel; the
// weight and bias gradients are column sums, computed in a second pass partitioned by columns
// so that no two threads add into the same element (deterministic, no atomics).
#include <algorithm>
#include <cmath>

#include "core/backend/cpu/cpu_backend.h"

namespace mom {

void CpuBackend::layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& inp,
                                   const Tensor& weight, const Tensor& bias, double eps) {
  const int64_t C = inp.shape[inp.shape.rank - 1], N = inp.numel() / C;
  cpu::dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* x = inp.ptr<T>();
    const T* w = weight.ptr<T>();
    const T* b = bias.ptr<T>();
    T* o = out.ptr<T>();
    T* mu = mean.ptr<T>();
    T* rs = rstd.ptr<T>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = x + n * C;
      T m = 0;
      for (int64_t c = 0; c < C; ++c) m += xr[c];
      m /= static_cast<T>(C);
      T v = 0;
      for (int64_t c = 0; c < C; ++c) v += (xr[c] - m) * (xr[c] - m);
      v /= static_cast<T>(C);
      const T s = T(1) / std::sqrt(v + static_cast<T>(eps));
      T* orow = o + n * C;
      for (int64_t c = 0; c < C; ++c) orow[c] = (xr[c] - m) * s * w[c] + b[c];
      mu[n] = m;
      rs[n] = s;
    }
  });
}

void CpuBackend::layernorm_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                                    const Tensor& inp, const Tensor& weight, const Tensor& mean, const Tensor& rstd) {
  const int64_t C = inp.shape[inp.shape.rank - 1], N = inp.numel() / C;
  cpu::dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* x = inp.ptr<T>();
    const T* w = weight.ptr<T>();
    const T* d = dout.ptr<T>();
    const T* mu = mean.ptr<T>();
    const T* rs = rstd.ptr<T>();
    // Any gradient may be empty (the CUDA backend's contract too): each is skipped whole.
    T* dx = dinp.empty() ? nullptr : dinp.ptr<T>();
    T* dw = dweight.empty() ? nullptr : dweight.ptr<T>();
    T* db = dbias.empty() ? nullptr : dbias.ptr<T>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < (dx ? N : 0); ++n) {
      const T* xr = x + n * C;
      const T* dr = d + n * C;
      T dnorm_mean = 0, dnorm_norm_mean = 0;
      for (int64_t c = 0; c < C; ++c) {
        const T norm = (xr[c] - mu[n]) * rs[n];
        const T dnorm = dr[c] * w[c];
        dnorm_mean += dnorm;
        dnorm_norm_mean += dnorm * norm;
      }
      dnorm_mean /= static_cast<T>(C);
      dnorm_norm_mean /= static_cast<T>(C);
      T* dxr = dx + n * C;
      for (int64_t c = 0; c < C; ++c) {
        const T norm = (xr[c] - mu[n]) * rs[n];
        const T dnorm = dr[c] * w[c];
        dxr[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * rs[n];
      }
    }
    constexpr int64_t kCols = 64;
    const int64_t blocks = dw || db ? (C + kCols - 1) / kCols : 0;
#pragma omp parallel for schedule(static)
    for (int64_t cb = 0; cb < blocks; ++cb) {
      const int64_t c0 = cb * kCols, c1 = std::min(C, c0 + kCols);
      T acc_w[kCols] = {}, acc_b[kCols] = {};
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = c0; c < c1; ++c) {
          acc_w[c - c0] += d[n * C + c] * (x[n * C + c] - mu[n]) * rs[n];
          acc_b[c - c0] += d[n * C + c];
        }
      for (int64_t c = c0; c < c1; ++c) {
        if (dw) dw[c] += acc_w[c - c0];
        if (db) db[c] += acc_b[c - c0];
      }
    }
  });
}

}  // namespace mom
