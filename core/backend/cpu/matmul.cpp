// Linear layer: out = inp·Wᵀ + b with W [out, in]. Both directions are GEMMs; the bias
// gradient is a column sum partitioned by columns (deterministic at any thread count).
#include <algorithm>

#include "core/backend/cpu/cpu_backend.h"

namespace mom {

void CpuBackend::matmul_forward(const Tensor& out, const Tensor& inp, const Tensor& weight, const Tensor& bias) {
  const int64_t N = inp.numel() / inp.shape[inp.shape.rank - 1];
  const int64_t IC = inp.shape[inp.shape.rank - 1], OC = weight.shape[0];
  cpu::dispatch_float(out.dtype, [&](auto zero) {
    using T = decltype(zero);
    T* o = out.ptr<T>();
    cpu::gemm<T>(false, true, N, OC, IC, T(1), inp.ptr<T>(), IC, weight.ptr<T>(), IC, T(0), o, OC);
    if (!bias.empty()) {
      const T* b = bias.ptr<T>();
#pragma omp parallel for schedule(static)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < OC; ++c) o[n * OC + c] += b[c];
    }
  });
}

void CpuBackend::matmul_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                                 const Tensor& inp, const Tensor& weight) {
  const int64_t N = inp.numel() / inp.shape[inp.shape.rank - 1];
  const int64_t IC = inp.shape[inp.shape.rank - 1], OC = weight.shape[0];
  cpu::dispatch_float(dout.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* d = dout.ptr<T>();
    if (!dinp.empty()) cpu::gemm<T>(false, false, N, IC, OC, T(1), d, OC, weight.ptr<T>(), IC, T(1), dinp.ptr<T>(), IC);
    if (!dweight.empty())
      cpu::gemm<T>(true, false, OC, IC, N, T(1), d, OC, inp.ptr<T>(), IC, T(1), dweight.ptr<T>(), IC);
    if (!dbias.empty()) {
      T* db = dbias.ptr<T>();
      constexpr int64_t kCols = 64;
      const int64_t blocks = (OC + kCols - 1) / kCols;
#pragma omp parallel for schedule(static)
      for (int64_t cb = 0; cb < blocks; ++cb) {
        const int64_t c0 = cb * kCols, c1 = std::min(OC, c0 + kCols);
        T acc[kCols] = {};
        for (int64_t n = 0; n < N; ++n)
          for (int64_t c = c0; c < c1; ++c) acc[c - c0] += d[n * OC + c];
        for (int64_t c = c0; c < c1; ++c) db[c] += acc[c - c0];
      }
    }
  });
}

}  // namespace mom
