// GELU in GPT-2's tanh form: 0.5·z·(1 + tanh(sqrt(2/π)·(z + 0.044715·z³))).
#include <cmath>

#include "core/backend/cpu/cpu_backend.h"

namespace mom {

namespace {
constexpr double kSqrt2OverPi = 0.7978845608028654;
}

void CpuBackend::gelu_forward(const Tensor& out, const Tensor& inp) {
  cpu::dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* x = inp.ptr<T>();
    T* o = out.ptr<T>();
    const int64_t n = inp.numel();
    const T k = static_cast<T>(kSqrt2OverPi);
    cpu::parallel_blocks(n, [&](int64_t i0, int64_t i1) {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) {
        const T z = x[i];
        o[i] = T(0.5) * z * (T(1) + std::tanh(k * (z + T(0.044715) * z * z * z)));
      }
    });
  });
}

void CpuBackend::gelu_backward(const Tensor& dinp, const Tensor& inp, const Tensor& dout) {
  cpu::dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* x = inp.ptr<T>();
    const T* d = dout.ptr<T>();
    T* dx = dinp.ptr<T>();
    const int64_t n = inp.numel();
    const T k = static_cast<T>(kSqrt2OverPi);
    cpu::parallel_blocks(n, [&](int64_t i0, int64_t i1) {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) {
        const T z = x[i];
        const T u = k * (z + T(0.044715) * z * z * z);
        const T th = std::tanh(u);
        const T sech2 = T(1) - th * th;
        const T grad = T(0.5) * (T(1) + th) + T(0.5) * z * sech2 * k * (T(1) + T(3) * T(0.044715) * z * z);
        dx[i] += grad * d[i];
      }
    });
  });
}

}  // namespace mom
