// Causal multi-head self-attention over qkv [B,T,3C] (q | k | v; head h uses columns
// h·hd..(h+1)·hd of each third). Work is split over (batch, head) pairs, each doing three
// GEMMs on strided views of qkv (no permute copies); OpenBLAS's OpenMP build runs them
// single-threaded inside the parallel loop. The softmax is saved in probs for backward.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/backend/cpu/cpu_backend.h"

namespace mom {

void CpuBackend::attention_forward(const Tensor& out, const Tensor& probs, const Tensor& qkv, int n_head) {
  const int64_t B = qkv.shape[0], T = qkv.shape[1], C3 = qkv.shape[2], C = C3 / 3, hd = C / n_head;
  cpu::dispatch_float(qkv.dtype, [&](auto zero) {
    using T_ = decltype(zero);
    const T_ scale = T_(1) / std::sqrt(static_cast<T_>(hd));
    const T_* base = qkv.ptr<T_>();
    T_* o = out.ptr<T_>();
    T_* pr = probs.ptr<T_>();
#pragma omp parallel for schedule(static)
    for (int64_t bh = 0; bh < B * n_head; ++bh) {
      const int64_t b = bh / n_head, h = bh % n_head;
      const T_* q = base + b * T * C3 + h * hd;
      const T_* k = q + C;
      const T_* v = q + 2 * C;
      T_* p = pr + bh * T * T;
      cpu::gemm<T_>(false, true, T, T, hd, scale, q, C3, k, C3, T_(0), p, T);
      for (int64_t i = 0; i < T; ++i) {
        T_* row = p + i * T;
        T_ mx = row[0];
        for (int64_t j = 1; j <= i; ++j) mx = std::max(mx, row[j]);
        T_ sum = 0;
        for (int64_t j = 0; j <= i; ++j) {
          row[j] = std::exp(row[j] - mx);
          sum += row[j];
        }
        const T_ inv = T_(1) / sum;
        for (int64_t j = 0; j <= i; ++j) row[j] *= inv;
        for (int64_t j = i + 1; j < T; ++j) row[j] = 0;
      }
      cpu::gemm<T_>(false, false, T, hd, T, T_(1), p, T, v, C3, T_(0), o + b * T * C + h * hd, C);
    }
  });
}

void CpuBackend::attention_backward(const Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& probs,
                                    int n_head) {
  const int64_t B = qkv.shape[0], T = qkv.shape[1], C3 = qkv.shape[2], C = C3 / 3, hd = C / n_head;
  cpu::dispatch_float(qkv.dtype, [&](auto zero) {
    using T_ = decltype(zero);
    const T_ scale = T_(1) / std::sqrt(static_cast<T_>(hd));
    const T_* base = qkv.ptr<T_>();
    T_* dbase = dqkv.ptr<T_>();
    const T_* d = dout.ptr<T_>();
    T_* pr = probs.ptr<T_>();
#pragma omp parallel
    {
      std::vector<T_> dp(static_cast<size_t>(T * T));  // one (batch, head)'s dP at a time
#pragma omp for schedule(static)
      for (int64_t bh = 0; bh < B * n_head; ++bh) {
        const int64_t b = bh / n_head, h = bh % n_head;
        const T_* q = base + b * T * C3 + h * hd;
        const T_* k = q + C;
        const T_* v = q + 2 * C;
        T_* dq = dbase + b * T * C3 + h * hd;
        T_* dk = dq + C;
        T_* dv = dq + 2 * C;
        const T_* dob = d + b * T * C + h * hd;
        T_* p = pr + bh * T * T;
        // dP = dO·Vᵀ, dV += Pᵀ·dO
        cpu::gemm<T_>(false, true, T, T, hd, T_(1), dob, C, v, C3, T_(0), dp.data(), T);
        cpu::gemm<T_>(true, false, T, hd, T, T_(1), p, T, dob, C, T_(1), dv, C3);
        // Through the softmax, written over P (no longer needed): dS = P ⊙ (dP − Σ_j P·dP),
        // scaled; zero above the diagonal.
        for (int64_t i = 0; i < T; ++i) {
          T_* prow = p + i * T;
          const T_* drow = dp.data() + i * T;
          T_ dot = 0;
          for (int64_t j = 0; j <= i; ++j) dot += prow[j] * drow[j];
          for (int64_t j = 0; j <= i; ++j) prow[j] = prow[j] * (drow[j] - dot) * scale;
          for (int64_t j = i + 1; j < T; ++j) prow[j] = 0;
        }
        // dQ += dS·K, dK += dSᵀ·Q
        cpu::gemm<T_>(false, false, T, hd, T, T_(1), p, T, k, C3, T_(1), dq, C3);
        cpu::gemm<T_>(true, false, T, hd, T, T_(1), p, T, q, C3, T_(1), dk, C3);
      }
    }
  });
}

}  // namespace mom

namespace mom {

// Generation: a handful of new rows against a growing cache, so plain loops over (row,
// head) beat GEMM set-up; each new token costs one pass over the cache, not the prefix.
void CpuBackend::attention_forward_cached(const Tensor& out, const Tensor& qkv, const Tensor& kcache,
                                          const Tensor& vcache, int pos0, int n_head) {
  const int64_t M = qkv.shape[0], C3 = qkv.shape[1], C = C3 / 3, hd = C / n_head;
  cpu::dispatch_float(qkv.dtype, [&](auto zero) {
    using T_ = decltype(zero);
    const T_ scale = T_(1) / std::sqrt(static_cast<T_>(hd));
    const T_* q = qkv.ptr<T_>();
    T_* kc = kcache.ptr<T_>();
    T_* vc = vcache.ptr<T_>();
    T_* o = out.ptr<T_>();
    for (int64_t i = 0; i < M; ++i)
      for (int64_t c = 0; c < C; ++c) {
        kc[(pos0 + i) * C + c] = q[i * C3 + C + c];
        vc[(pos0 + i) * C + c] = q[i * C3 + 2 * C + c];
      }
#pragma omp parallel
    {
      std::vector<T_> score(static_cast<size_t>(pos0 + M));
#pragma omp for schedule(static)
      for (int64_t ih = 0; ih < M * n_head; ++ih) {
        const int64_t i = ih / n_head, h = ih % n_head, last = pos0 + i;
        const T_* qi = q + i * C3 + h * hd;
        T_ mx = std::numeric_limits<T_>::lowest();  // finite: this file builds with -ffast-math
        for (int64_t j = 0; j <= last; ++j) {
          const T_* kj = kc + j * C + h * hd;
          T_ s = 0;
          for (int64_t d = 0; d < hd; ++d) s += qi[d] * kj[d];
          score[j] = s * scale;
          mx = std::max(mx, score[j]);
        }
        T_ sum = 0;
        for (int64_t j = 0; j <= last; ++j) sum += score[j] = std::exp(score[j] - mx);
        T_* oi = o + i * C + h * hd;
        for (int64_t d = 0; d < hd; ++d) oi[d] = 0;
        for (int64_t j = 0; j <= last; ++j) {
          const T_ p = score[j] / sum;
          const T_* vj = vc + j * C + h * hd;
          for (int64_t d = 0; d < hd; ++d) oi[d] += p * vj[d];
        }
      }
    }
  });
}

}  // namespace mom
