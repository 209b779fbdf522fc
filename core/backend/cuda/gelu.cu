// GELU in GPT-2's tanh form on the GPU, forward beside backward:
// 0.5·z·(1 + tanh(sqrt(2/π)·(z + 0.044715·z³))), with the CPU backend's constants and the same
// expression for the derivative (core/backend/cpu/gelu.cpp).
//
// Why plain grid-stride elementwise kernels: every element depends on its own input only, so
// there is no reduction and no ordering question; adjacent threads touch adjacent elements
// (coalesced). The tanh is the accurate libdevice tanh/tanhf (no fast-math intrinsics), so f32
// results stay within a few ulps of the CPU's.
#include "core/backend/cuda/cuda_common.cuh"

namespace mom {

namespace {

constexpr double kSqrt2OverPi = 0.7978845608028654;

template <class T>
__global__ void gelu_forward_kernel(T* out, const T* inp, int64_t n) {
  const T k = static_cast<T>(kSqrt2OverPi);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T z = inp[i];
    out[i] = T(0.5) * z * (T(1) + tanh(k * (z + T(0.044715) * z * z * z)));
  }
}

template <class T>
__global__ void gelu_backward_kernel(T* dinp, const T* inp, const T* dout, int64_t n) {
  const T k = static_cast<T>(kSqrt2OverPi);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T z = inp[i];
    const T u = k * (z + T(0.044715) * z * z * z);
    const T th = tanh(u);
    const T sech2 = T(1) - th * th;
    const T grad = T(0.5) * (T(1) + th) + T(0.5) * z * sech2 * k * (T(1) + T(3) * T(0.044715) * z * z);
    dinp[i] += grad * dout[i];
  }
}

}  // namespace

void CudaBackend::gelu_forward(const Tensor& out, const Tensor& inp) {
  const int64_t n = inp.numel();
  if (!n) return;
  dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    gelu_forward_kernel<<<cuda::grid_for(n), cuda::kThreads, 0, stream_>>>(out.ptr<T>(), inp.ptr<T>(), n);
  });
  MOM_CUDA_CHECK_LAUNCH("gelu_forward", cuda::shapes({{"out", &out}, {"inp", &inp}}), stream_);
}

void CudaBackend::gelu_backward(const Tensor& dinp, const Tensor& inp, const Tensor& dout) {
  const int64_t n = inp.numel();
  if (!n) return;
  dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    gelu_backward_kernel<<<cuda::grid_for(n), cuda::kThreads, 0, stream_>>>(dinp.ptr<T>(), inp.ptr<T>(), dout.ptr<T>(),
                                                                            n);
  });
  MOM_CUDA_CHECK_LAUNCH("gelu_backward", cuda::shapes({{"dinp", &dinp}, {"inp", &inp}, {"dout", &dout}}), stream_);
}

}  // namespace mom
