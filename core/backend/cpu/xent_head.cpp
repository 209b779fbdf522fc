// Tied LM head + softmax cross-entropy, fused and chunked.
//
// Why fused: with V = 50257 the [N,V] logits are by far the largest activation (400 MB for
// N = 2048), and training only needs them long enough to turn into (p − onehot). So rows are
// processed in chunks that fit `scratch`: logits by GEMM, softmax and loss in place, the
// gradient written over the probabilities, then dx and dwte by two GEMMs. Chunks are taken in
// row order, so dwte's accumulation order is fixed.
#include <algorithm>
#include <cmath>

#include "core/backend/cpu/cpu_backend.h"

namespace mom {

void CpuBackend::xent_head(const Tensor& losses, const Tensor& dx, const Tensor& dwte, const Tensor& x,
                           const Tensor& wte, const Tensor& targets, double grad_scale, const Tensor& scratch) {
  const int64_t N = x.shape[0], C = x.shape[1], V = wte.shape[0];
  const int64_t chunk = std::max<int64_t>(1, scratch.numel() / V);
  const bool backward = !dx.empty();
  const int32_t* tgt = targets.ptr<int32_t>();
  cpu::dispatch_float(x.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* xp = x.ptr<T>();
    const T* w = wte.ptr<T>();
    T* lo = losses.ptr<T>();
    T* s = scratch.ptr<T>();
    const T g = static_cast<T>(grad_scale);
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int64_t R = std::min(chunk, N - r0);
      cpu::gemm<T>(false, true, R, V, C, T(1), xp + r0 * C, C, w, C, T(0), s, V);
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < R; ++r) {
        T* row = s + r * V;
        T mx = row[0];
        for (int64_t j = 1; j < V; ++j) mx = std::max(mx, row[j]);
        const int32_t t = tgt[r0 + r];
        const T target_logit = row[t] - mx;  // kept before exp, which may underflow to 0
        T sum = 0;
        for (int64_t j = 0; j < V; ++j) {
          row[j] = std::exp(row[j] - mx);
          sum += row[j];
        }
        lo[r0 + r] = std::log(sum) - target_logit;
        if (backward) {
          const T inv = g / sum;
          for (int64_t j = 0; j < V; ++j) row[j] *= inv;
          row[t] -= g;
        }
      }
      if (backward) {
        cpu::gemm<T>(false, false, R, C, V, T(1), s, V, w, C, T(1), dx.ptr<T>() + r0 * C, C);
        cpu::gemm<T>(true, false, V, C, R, T(1), s, V, xp + r0 * C, C, T(1), dwte.ptr<T>(), C);
      }
    }
  });
}

}  // namespace mom
