// The elementwise kernels of the router networks: ReLU (mlp router) and the GRU cell (gru
// router). The cell's two projections are ordinary matmul_forward calls made by the caller;
// this op is only the gate arithmetic, so it stays one pass over [N, r] with each element's
// three gates side by side, and its backward needs no reduction (the weight and bias
// gradients come from matmul_backward). Every output element depends on its own inputs only,
// so the loops parallelise without affecting the bits.
#include <cmath>

#include "core/backend/cpu/cpu_backend.h"

namespace mom {

namespace {
template <class T>
T sigmoid(T v) {
  return T(1) / (T(1) + std::exp(-v));
}
}  // namespace

void CpuBackend::relu_forward(const Tensor& out, const Tensor& inp) {
  cpu::dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* x = inp.ptr<T>();
    T* o = out.ptr<T>();
    const int64_t n = inp.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) o[i] = x[i] > T(0) ? x[i] : T(0);
  });
}

void CpuBackend::relu_backward(const Tensor& dinp, const Tensor& inp, const Tensor& dout) {
  cpu::dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* x = inp.ptr<T>();
    const T* d = dout.ptr<T>();
    T* dx = dinp.ptr<T>();
    const int64_t n = inp.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) dx[i] += x[i] > T(0) ? d[i] : T(0);
  });
}

void CpuBackend::gru_cell_forward(const Tensor& s_new, const Tensor& gates, const Tensor& gx, const Tensor& gh,
                                  const Tensor& s) {
  const int64_t r = s.shape[s.shape.rank - 1], N = s.numel() / r;
  cpu::dispatch_float(s.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* x = gx.ptr<T>();
    const T* h = gh.ptr<T>();
    const T* sp = s.ptr<T>();
    T* g = gates.ptr<T>();
    T* out = s_new.ptr<T>();
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < N; ++t) {
      const T* xt = x + t * 3 * r;
      const T* ht = h + t * 3 * r;
      T* gt = g + t * 3 * r;
      for (int64_t i = 0; i < r; ++i) {
        const T rg = sigmoid(xt[i] + ht[i]);
        const T zg = sigmoid(xt[r + i] + ht[r + i]);
        const T ng = std::tanh(xt[2 * r + i] + rg * ht[2 * r + i]);
        gt[i] = rg, gt[r + i] = zg, gt[2 * r + i] = ng;
        out[t * r + i] = ng + zg * (sp[t * r + i] - ng);
      }
    }
  });
}

void CpuBackend::gru_cell_backward(const Tensor& dgx, const Tensor& dgh, const Tensor& ds, const Tensor& ds_new,
                                   const Tensor& gates, const Tensor& gh, const Tensor& s) {
  const int64_t r = s.shape[s.shape.rank - 1], N = s.numel() / r;
  cpu::dispatch_float(s.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* g = gates.ptr<T>();
    const T* h = gh.ptr<T>();
    const T* sp = s.ptr<T>();
    const T* d = ds_new.ptr<T>();
    T* dx = dgx.ptr<T>();
    T* dh = dgh.ptr<T>();
    T* dsp = ds.ptr<T>();
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < N; ++t) {
      const T* gt = g + t * 3 * r;
      const T* ht = h + t * 3 * r;
      T* dxt = dx + t * 3 * r;
      T* dht = dh + t * 3 * r;
      for (int64_t i = 0; i < r; ++i) {
        const T rg = gt[i], zg = gt[r + i], ng = gt[2 * r + i];
        const T dout = d[t * r + i];
        // s' = n + z·(s − n) = (1 − z)·n + z·s.
        dsp[t * r + i] += dout * zg;
        const T dz = dout * (sp[t * r + i] - ng) * zg * (T(1) - zg);  // through σ'
        const T dn = dout * (T(1) - zg) * (T(1) - ng * ng);           // through tanh'
        // n's pre-activation is gx_n + r·gh_n: gx_n gets dn, gh_n gets r·dn, r gets gh_n·dn.
        const T dr = dn * ht[2 * r + i] * rg * (T(1) - rg);
        dxt[i] += dr, dht[i] += dr;
        dxt[r + i] += dz, dht[r + i] += dz;
        dxt[2 * r + i] += dn, dht[2 * r + i] += dn * rg;
      }
    }
  });
}

}  // namespace mom
