// Scalar gains (SAS's β_SA, α_FF, β_FF; block 0's α_V, β_V) and the elementwise ops of Gemma
// 3n's AltUp coefficient router (tanh, clamp) on the GPU, forward beside backward, with the
// CPU backend's math (core/backend/cpu/gains.cpp).
//
// Why the gain is read inside the kernels: it is a one-element DEVICE tensor, a parameter the
// optimizer updates on the device; reading it on the host would cost a synchronising copy per
// call and stall the stream. Every thread loads it once (a broadcast from L1/L2).
//
// Why the gain's gradient goes through cuda::dot_sum: Σ dout ⊙ x is a reduction over the whole
// tensor. dot_sum accumulates in double (as the CPU's reduction does) in a fixed tree over a
// fixed grid, so the bits do not depend on anything but the sizes; a one-thread kernel then
// adds the double, rounded to T, into dgain (stream-ordered, so no host round trip).
//
// NaN semantics of clamp, as the CPU's std::min(std::max(x, −lim), lim): std::max(a, b) is
// (a < b) ? b : a and std::min(a, b) is (b < a) ? b : a, so a NaN input propagates to the
// output. Those ternaries are written out here rather than fmin/fmax, which would return the
// limit for a NaN. The backward passes dout where |x| ≤ lim, which is false for a NaN.
#include "core/backend/cuda/cuda_common.cuh"

namespace mom {

namespace {

template <class T>
__global__ void scaled_accumulate_kernel(T* out, const T* x, const T* gain, int64_t n) {
  const T g = *gain;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] += g * x[i];
}

template <class T>
__global__ void add_double_kernel(T* dst, const double* v) {
  if (blockIdx.x == 0 && threadIdx.x == 0) dst[0] += static_cast<T>(*v);
}

template <class T>
__global__ void tanh_forward_kernel(T* out, const T* inp, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = tanh(inp[i]);
}

template <class T>
__global__ void tanh_backward_kernel(T* dinp, const T* out, const T* dout, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dinp[i] += (T(1) - out[i] * out[i]) * dout[i];
}

template <class T>
__global__ void clamp_forward_kernel(T* out, const T* inp, T lim, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T x = inp[i];
    const T lo = x < -lim ? -lim : x;  // std::max(x, -lim)
    out[i] = lim < lo ? lim : lo;      // std::min(lo, lim)
  }
}

template <class T>
__global__ void clamp_backward_kernel(T* dinp, const T* inp, const T* dout, T lim, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dinp[i] += fabs(inp[i]) <= lim ? dout[i] : T(0);
}

}  // namespace

void CudaBackend::scaled_accumulate(const Tensor& out, const Tensor& x, const Tensor& gain) {
  const int64_t n = x.numel();
  if (!n) return;
  dispatch_float(x.dtype, [&](auto zero) {
    using T = decltype(zero);
    scaled_accumulate_kernel<<<cuda::grid_for(n), cuda::kThreads, 0, stream_>>>(out.ptr<T>(), x.ptr<T>(), gain.ptr<T>(),
                                                                                n);
  });
  MOM_CUDA_CHECK_LAUNCH("scaled_accumulate", cuda::shapes({{"out", &out}, {"x", &x}, {"gain", &gain}}), stream_);
}

void CudaBackend::scaled_accumulate_backward(const Tensor& dx, const Tensor& dgain, const Tensor& dout, const Tensor& x,
                                             const Tensor& gain) {
  const int64_t n = dout.numel();
  if (!n) return;
  const std::string what = cuda::shapes({{"dx", &dx}, {"dgain", &dgain}, {"dout", &dout}, {"x", &x}, {"gain", &gain}});
  dispatch_float(dout.dtype, [&](auto zero) {
    using T = decltype(zero);
    if (!dx.empty()) {
      // dx += g·dout: the forward's kernel with the roles of out and x taken by dx and dout.
      scaled_accumulate_kernel<<<cuda::grid_for(n), cuda::kThreads, 0, stream_>>>(dx.ptr<T>(), dout.ptr<T>(),
                                                                                  gain.ptr<T>(), n);
      MOM_CUDA_CHECK_LAUNCH("scaled_accumulate_backward", what, stream_);
    }
    if (dgain.empty()) return;
    cuda::Scratch total(*this, sizeof(double), "scaled_accumulate_backward");
    cuda::dot_sum(*this, "scaled_accumulate_backward", total.as<double>(), dout.ptr<T>(), x.ptr<T>(), n);
    add_double_kernel<<<1, 32, 0, stream_>>>(dgain.ptr<T>(), total.as<double>());
    MOM_CUDA_CHECK_LAUNCH("scaled_accumulate_backward", what, stream_);
  });
}

void CudaBackend::tanh_forward(const Tensor& out, const Tensor& inp) {
  const int64_t n = inp.numel();
  if (!n) return;
  dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    tanh_forward_kernel<<<cuda::grid_for(n), cuda::kThreads, 0, stream_>>>(out.ptr<T>(), inp.ptr<T>(), n);
  });
  MOM_CUDA_CHECK_LAUNCH("tanh_forward", cuda::shapes({{"out", &out}, {"inp", &inp}}), stream_);
}

void CudaBackend::tanh_backward(const Tensor& dinp, const Tensor& out, const Tensor& dout) {
  const int64_t n = out.numel();
  if (!n) return;
  dispatch_float(out.dtype, [&](auto zero) {
    using T = decltype(zero);
    tanh_backward_kernel<<<cuda::grid_for(n), cuda::kThreads, 0, stream_>>>(dinp.ptr<T>(), out.ptr<T>(), dout.ptr<T>(),
                                                                            n);
  });
  MOM_CUDA_CHECK_LAUNCH("tanh_backward", cuda::shapes({{"dinp", &dinp}, {"out", &out}, {"dout", &dout}}), stream_);
}

void CudaBackend::clamp_forward(const Tensor& out, const Tensor& inp, double limit) {
  const int64_t n = inp.numel();
  if (!n) return;
  dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    clamp_forward_kernel<<<cuda::grid_for(n), cuda::kThreads, 0, stream_>>>(out.ptr<T>(), inp.ptr<T>(),
                                                                            static_cast<T>(limit), n);
  });
  MOM_CUDA_CHECK_LAUNCH("clamp_forward", cuda::shapes({{"out", &out}, {"inp", &inp}}), stream_);
}

void CudaBackend::clamp_backward(const Tensor& dinp, const Tensor& inp, const Tensor& dout, double limit) {
  const int64_t n = inp.numel();
  if (!n) return;
  dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    clamp_backward_kernel<<<cuda::grid_for(n), cuda::kThreads, 0, stream_>>>(dinp.ptr<T>(), inp.ptr<T>(), dout.ptr<T>(),
                                                                             static_cast<T>(limit), n);
  });
  MOM_CUDA_CHECK_LAUNCH("clamp_backward", cuda::shapes({{"dinp", &dinp}, {"inp", &inp}, {"dout", &dout}}), stream_);
}

}  // namespace mom
