// RMSNorm over the last axis (MODELS.md §4): out = w ⊙ x / (ρ + eps), ρ = sqrt(mean(x²)), the
// eps outside the root as the SAS code has it. Forward saves ρ per row (not 1/(ρ + eps):
// backward needs ρ itself for the derivative of the root). Backward: the input gradient is
// row-parallel; the weight gradient is a column sum, computed in a second pass partitioned by
// columns so that no two threads add into the same element (deterministic, no atomics), as
// layernorm_backward does.
//
// A zero row (ρ = 0) has out = 0 and dx = w ⊙ dout / eps: the root's derivative x/(C·ρ) is
// 0/0 there, but it multiplies Σ w·dout·x = 0, so that term is dropped rather than computed.
#include <algorithm>
#include <cmath>

#include "core/backend/cpu/cpu_backend.h"

namespace mom {

void CpuBackend::rmsnorm_forward(const Tensor& out, const Tensor& rms, const Tensor& inp, const Tensor& weight,
                                 double eps) {
  const int64_t C = inp.shape[inp.shape.rank - 1], N = inp.numel() / C;
  cpu::dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* x = inp.ptr<T>();
    const T* w = weight.ptr<T>();
    T* o = out.ptr<T>();
    T* rho = rms.ptr<T>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = x + n * C;
      T ss = 0;
      for (int64_t c = 0; c < C; ++c) ss += xr[c] * xr[c];
      const T r = std::sqrt(ss / static_cast<T>(C));
      const T s = T(1) / (r + static_cast<T>(eps));
      T* orow = o + n * C;
      for (int64_t c = 0; c < C; ++c) orow[c] = w[c] * (xr[c] * s);
      rho[n] = r;
    }
  });
}

void CpuBackend::rmsnorm_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dout, const Tensor& inp,
                                  const Tensor& weight, const Tensor& rms, double eps) {
  const int64_t C = inp.shape[inp.shape.rank - 1], N = inp.numel() / C;
  cpu::dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* x = inp.ptr<T>();
    const T* w = weight.ptr<T>();
    const T* d = dout.ptr<T>();
    const T* rho = rms.ptr<T>();
    const T e = static_cast<T>(eps);
    if (!dinp.empty()) {
      T* dx = dinp.ptr<T>();
      // dx = s·(w⊙d) − x·s²·Σ(w⊙d⊙x)/(C·ρ), s = 1/(ρ + eps)
#pragma omp parallel for schedule(static)
      for (int64_t n = 0; n < N; ++n) {
        const T* xr = x + n * C;
        const T* dr = d + n * C;
        const T s = T(1) / (rho[n] + e);
        T dot = 0;
        for (int64_t c = 0; c < C; ++c) dot += w[c] * dr[c] * xr[c];
        const T k = rho[n] > T(0) ? s * s * dot / (static_cast<T>(C) * rho[n]) : T(0);
        T* dxr = dx + n * C;
        for (int64_t c = 0; c < C; ++c) dxr[c] += s * (w[c] * dr[c]) - k * xr[c];
      }
    }
    if (dweight.empty()) return;
    T* dw = dweight.ptr<T>();
    constexpr int64_t kCols = 64;
    const int64_t blocks = (C + kCols - 1) / kCols;
#pragma omp parallel for schedule(static)
    for (int64_t cb = 0; cb < blocks; ++cb) {
      const int64_t c0 = cb * kCols, c1 = std::min(C, c0 + kCols);
      T acc[kCols] = {};
      for (int64_t n = 0; n < N; ++n) {
        const T s = T(1) / (rho[n] + e);
        for (int64_t c = c0; c < c1; ++c) acc[c - c0] += d[n * C + c] * (x[n * C + c] * s);
      }
      for (int64_t c = c0; c < c1; ++c) dw[c] += acc[c - c0];
    }
  });
}

}  // namespace mom
