// AdamW with decoupled weight decay, in PyTorch's order of operations (so that the
// reference comparison over several steps stays within float rounding):
//   p ← p·(1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
//   p ← p − (lr/(1−β1ᵗ)) · m / (sqrt(v)/sqrt(1−β2ᵗ) + eps)
#include <cmath>

#include "core/backend/cpu/cpu_backend.h"

namespace mom {

void CpuBackend::adamw(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, double lr,
                       double beta1, double beta2, double eps, double weight_decay, int64_t t) {
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(t));
  cpu::dispatch_float(param.dtype, [&](auto zero) {
    using T = decltype(zero);
    T* p = param.ptr<T>();
    const T* g = grad.ptr<T>();
    T* mp = m.ptr<T>();
    T* vp = v.ptr<T>();
    const int64_t n = param.numel();
    const T decay = static_cast<T>(1.0 - lr * weight_decay);
    const T step = static_cast<T>(lr / bc1);
    const T sqrt_bc2 = static_cast<T>(std::sqrt(bc2));
    const T b1 = static_cast<T>(beta1), b2 = static_cast<T>(beta2), e = static_cast<T>(eps);
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      p[i] *= decay;
      mp[i] = b1 * mp[i] + (T(1) - b1) * g[i];
      vp[i] = b2 * vp[i] + (T(1) - b2) * g[i] * g[i];
      p[i] -= step * mp[i] / (std::sqrt(vp[i]) / sqrt_bc2 + e);
    }
  });
}

}  // namespace mom
