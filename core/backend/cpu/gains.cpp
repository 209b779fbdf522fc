// Scalar gains (SAS's β_SA, α_FF, β_FF; block 0's α_V, β_V) and the elementwise ops of
// Gemma 3n's AltUp coefficient router (tanh, clamp). Elementwise loops run in cpu::parallel_blocks'
// fixed blocks. The one reduction, a gain's gradient Σ dout ⊙ x, is accumulated in double per
// fixed block (eight interleaved partial sums, combined in lane order) and the blocks are summed
// in block order, as sum_squares does: the bits do not depend on the thread count.
//
// Why this file is not built with -ffast-math (gelu.cpp is): the tanh here runs on the
// router's K coefficients per token, not on activations, so the vector tanh would save nothing
// worth having, while fast-math would let GCC reassociate the double reduction and drop the
// NaN semantics of clamp's min/max. Plain libm tanh is one scalar path for every element.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/backend/cpu/cpu_backend.h"

namespace mom {

void CpuBackend::scaled_accumulate(const Tensor& out, const Tensor& x, const Tensor& gain) {
  cpu::dispatch_float(x.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* xs = x.ptr<T>();
    const T g = gain.ptr<T>()[0];
    T* o = out.ptr<T>();
    cpu::parallel_blocks(x.numel(), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) o[i] += g * xs[i];
    });
  });
}

void CpuBackend::scaled_accumulate_backward(const Tensor& dx, const Tensor& dgain, const Tensor& dout, const Tensor& x,
                                            const Tensor& gain) {
  const int64_t n = dout.numel();
  cpu::dispatch_float(dout.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* d = dout.ptr<T>();
    if (!dx.empty()) {
      const T g = gain.ptr<T>()[0];
      T* dxs = dx.ptr<T>();
      cpu::parallel_blocks(n, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) dxs[i] += g * d[i];
      });
    }
    if (dgain.empty()) return;
    const T* xs = x.ptr<T>();
    std::vector<double> partial(static_cast<size_t>((n + cpu::kElementBlock - 1) / cpu::kElementBlock));
    cpu::parallel_blocks(n, [&](int64_t i0, int64_t i1) {
      partial[static_cast<size_t>(i0 / cpu::kElementBlock)] = cpu::dot_double(d + i0, xs + i0, i1 - i0);
    });
    double total = 0;
    for (double s : partial) total += s;
    dgain.ptr<T>()[0] += static_cast<T>(total);
  });
}

void CpuBackend::tanh_forward(const Tensor& out, const Tensor& inp) {
  cpu::dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* x = inp.ptr<T>();
    T* o = out.ptr<T>();
    cpu::parallel_blocks(inp.numel(), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) o[i] = std::tanh(x[i]);
    });
  });
}

void CpuBackend::tanh_backward(const Tensor& dinp, const Tensor& out, const Tensor& dout) {
  cpu::dispatch_float(out.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* y = out.ptr<T>();
    const T* d = dout.ptr<T>();
    T* dx = dinp.ptr<T>();
    cpu::parallel_blocks(out.numel(), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) dx[i] += (T(1) - y[i] * y[i]) * d[i];
    });
  });
}

void CpuBackend::clamp_forward(const Tensor& out, const Tensor& inp, double limit) {
  cpu::dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* x = inp.ptr<T>();
    T* o = out.ptr<T>();
    const T lim = static_cast<T>(limit);
    cpu::parallel_blocks(inp.numel(), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) o[i] = std::min(std::max(x[i], -lim), lim);
    });
  });
}

void CpuBackend::clamp_backward(const Tensor& dinp, const Tensor& inp, const Tensor& dout, double limit) {
  cpu::dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* x = inp.ptr<T>();
    const T* d = dout.ptr<T>();
    T* dx = dinp.ptr<T>();
    const T lim = static_cast<T>(limit);
    cpu::parallel_blocks(inp.numel(), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) dx[i] += std::abs(x[i]) <= lim ? d[i] : T(0);
    });
  });
}

}  // namespace mom
