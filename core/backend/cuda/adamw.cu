// AdamW with decoupled weight decay on the GPU, elementwise, in the CPU backend's (and
// PyTorch's) order of operations (core/backend/cpu/adamw.cpp):
//   p ← p·(1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
//   p ← p − (lr/(1−β1ᵗ)) · m / (sqrt(v)/sqrt(1−β2ᵗ) + eps)
//
// Why the constants come from the host: the bias corrections are computed once per step in
// double and rounded to the tensor's type exactly as the CPU does, so both backends feed the
// same scalars to the same per-element formula (sqrt and the division are IEEE-rounded on
// the GPU too); the per-element arithmetic then differs at most by FMA contraction, well
// within float rounding. One thread per element, grid-stride: coalesced and memory bound.
#include <cmath>

#include "core/backend/cuda/cuda_common.cuh"

namespace mom {

namespace {

template <class T>
__global__ void adamw_kernel(T* p, const T* grad, T* m, T* v, int64_t n, T decay, T step, T sqrt_bc2, T b1, T b2, T e) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T g = grad[i];
    T pi = p[i] * decay;
    const T mi = b1 * m[i] + (T(1) - b1) * g;
    const T vi = b2 * v[i] + (T(1) - b2) * g * g;
    pi -= step * mi / (sqrt(vi) / sqrt_bc2 + e);
    m[i] = mi;
    v[i] = vi;
    p[i] = pi;
  }
}

}  // namespace

void CudaBackend::adamw(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, double lr,
                        double beta1, double beta2, double eps, double weight_decay, int64_t t) {
  const int64_t n = param.numel();
  if (n == 0) return;
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(t));
  dispatch_float(param.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T decay = static_cast<T>(1.0 - lr * weight_decay);
    const T step = static_cast<T>(lr / bc1);
    const T sqrt_bc2 = static_cast<T>(std::sqrt(bc2));
    adamw_kernel<T><<<cuda::grid_for(n), cuda::kThreads, 0, stream_>>>(
        param.ptr<T>(), grad.ptr<T>(), m.ptr<T>(), v.ptr<T>(), n, decay, step, sqrt_bc2, static_cast<T>(beta1),
        static_cast<T>(beta2), static_cast<T>(eps));
  });
  MOM_CUDA_CHECK_LAUNCH("adamw", cuda::shapes({{"param", &param}, {"grad", &grad}, {"m", &m}, {"v", &v}}), stream_);
}

}  // namespace mom
