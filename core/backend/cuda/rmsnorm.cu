// RMSNorm over the last axis on the GPU (MODELS.md §4), forward beside backward, with the
// CPU backend's math (core/backend/cpu/rmsnorm.cpp): out = w ⊙ (x·s), s = 1/(ρ + eps),
// ρ = sqrt(mean(x²)) with the eps OUTSIDE the root, ρ itself saved per row (backward needs it
// for the root's derivative), and a zero row (ρ = 0) dropping the 0/0 term of dx exactly as
// the CPU does.
//
// Why one warp per row, and why dweight through cuda::column_sums: as for LayerNorm
// (layernorm.cu): short rows read coalesced by one warp, a fixed shuffle tree per row (the
// same bits every run), and the weight gradient as the deterministic column sum of the
// per-row products dout·(x·s), written by the row kernel into a stream-ordered scratch
// [N, C]. dinp and dweight may each be empty, as on the CPU.
#include "core/backend/cuda/cuda_common.cuh"

namespace mom {

namespace {

constexpr int kRowsPerBlock = cuda::kThreads / 32;

template <class T>
__global__ void rmsnorm_forward_kernel(T* out, T* rms, const T* inp, const T* weight, int64_t N, int64_t C, T eps) {
  const int lane = threadIdx.x & 31;
  for (int64_t n = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + (threadIdx.x >> 5); n < N;
       n += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const T* x = inp + n * C;
    T ss = 0;
    for (int64_t c = lane; c < C; c += 32) ss += x[c] * x[c];
    const T r = sqrt(cuda::warp_sum(ss) / static_cast<T>(C));
    const T s = T(1) / (r + eps);
    T* o = out + n * C;
    for (int64_t c = lane; c < C; c += 32) o[c] = weight[c] * (x[c] * s);
    if (lane == 0) rms[n] = r;
  }
}

// dinp (may be null) += the input gradient; prod (may be null) = dout·(x·s) per element, for
// dweight's column sums.
template <class T>
__global__ void rmsnorm_backward_kernel(T* dinp, T* prod, const T* dout, const T* inp, const T* weight, const T* rms,
                                        int64_t N, int64_t C, T eps) {
  const int lane = threadIdx.x & 31;
  for (int64_t n = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + (threadIdx.x >> 5); n < N;
       n += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const T* x = inp + n * C;
    const T* d = dout + n * C;
    const T rho = rms[n];
    const T s = T(1) / (rho + eps);
    if (prod) {
      T* p = prod + n * C;
      for (int64_t c = lane; c < C; c += 32) p[c] = d[c] * (x[c] * s);
    }
    if (!dinp) continue;
    // dx = s·(w⊙d) − x·s²·Σ(w⊙d⊙x)/(C·ρ)
    T dot = 0;
    for (int64_t c = lane; c < C; c += 32) dot += weight[c] * d[c] * x[c];
    dot = cuda::warp_sum(dot);
    const T k = rho > T(0) ? s * s * dot / (static_cast<T>(C) * rho) : T(0);
    T* dx = dinp + n * C;
    for (int64_t c = lane; c < C; c += 32) dx[c] += s * (weight[c] * d[c]) - k * x[c];
  }
}

}  // namespace

void CudaBackend::rmsnorm_forward(const Tensor& out, const Tensor& rms, const Tensor& inp, const Tensor& weight,
                                  double eps) {
  const int64_t C = inp.shape[inp.shape.rank - 1];
  if (C == 0 || inp.numel() == 0) return;
  const int64_t N = inp.numel() / C;
  dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    rmsnorm_forward_kernel<<<cuda::grid_for(N * 32), cuda::kThreads, 0, stream_>>>(
        out.ptr<T>(), rms.ptr<T>(), inp.ptr<T>(), weight.ptr<T>(), N, C, static_cast<T>(eps));
  });
  MOM_CUDA_CHECK_LAUNCH("rmsnorm_forward",
                        cuda::shapes({{"out", &out}, {"rms", &rms}, {"inp", &inp}, {"weight", &weight}}), stream_);
}

void CudaBackend::rmsnorm_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dout, const Tensor& inp,
                                   const Tensor& weight, const Tensor& rms, double eps) {
  const int64_t C = inp.shape[inp.shape.rank - 1];
  if (C == 0 || inp.numel() == 0 || (dinp.empty() && dweight.empty())) return;
  const int64_t N = inp.numel() / C;
  dispatch_float(inp.dtype, [&](auto zero) {
    using T = decltype(zero);
    const bool want_dw = !dweight.empty();
    cuda::Scratch prod(*this, want_dw ? static_cast<size_t>(N * C) * sizeof(T) : 0, "rmsnorm_backward");
    rmsnorm_backward_kernel<<<cuda::grid_for(N * 32), cuda::kThreads, 0, stream_>>>(
        dinp.empty() ? nullptr : dinp.ptr<T>(), want_dw ? prod.as<T>() : nullptr, dout.ptr<T>(), inp.ptr<T>(),
        weight.ptr<T>(), rms.ptr<T>(), N, C, static_cast<T>(eps));
    MOM_CUDA_CHECK_LAUNCH("rmsnorm_backward",
                          cuda::shapes({{"dinp", &dinp},
                                        {"dweight", &dweight},
                                        {"dout", &dout},
                                        {"inp", &inp},
                                        {"weight", &weight},
                                        {"rms", &rms}}),
                          stream_);
    if (want_dw) cuda::column_sums(*this, "rmsnorm_backward", dweight.ptr<T>(), prod.as<T>(), N, C, true);
  });
}

}  // namespace mom
