// Causal multi-head self-attention, standard (qkv [B,T,3C], q | k | v) and shaped (MODELS.md
// §4: qk [B,T,2C] and v [B,T,C] apart, A = β·P + α·I − γ·C). Head h uses columns
// h·hd..(h+1)·hd of each part. Work is split over (batch, head) pairs; one kernel per pair,
// head_forward / head_backward, serves both kinds: it takes pointers and leading dimensions,
// so it runs its GEMMs on strided views of the caller's layout (no permute copies), and the
// shaped kind only adds the step from P to A. OpenBLAS's OpenMP build runs the GEMMs
// single-threaded inside the parallel loop. The softmax is saved in probs for backward.
//
// Shaped attention builds A in a per-thread [T,T] scratch and multiplies it with v by GEMM.
// Why not fold α and γ into extra terms: at init (q = 0, α = β = γ = 1) the sub-block must
// return v bit for bit. The softmax of all-zero scores is exp(0)·inv(i+1), and C is written
// with the same inv(), so β·P − γ·C is exactly 0 and A is exactly I; a GEMM of an exact I
// then adds only zeros to each v. α is added to the diagonal in its own pass over memory,
// after β·P − γ·C is stored, so that -ffast-math (this file has it, for the vector exp)
// cannot reassociate the three terms. The per-head scalar gradients are reductions over
// the batch: each pair writes its partials to its own slot, summed over b in order after
// the parallel loop (no atomics, independent of the thread count).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/backend/cpu/cpu_backend.h"

namespace mom {

namespace {

// The softmax normalisation and C's entries: one expression, so that at q = 0 they agree.
template <class T>
inline T inv(T sum) {
  return T(1) / sum;
}

// A head's shaped-attention coefficients; the standard kind passes none.
template <class T>
struct Shaping {
  T alpha, beta, gamma;
};

// The (batch, head) pair's operands: rows of q, k (leading dimension ld_qk), v (ld_v), out
// or dout (ld_o), and its gradients with the same strides.
template <class T>
struct HeadOperands {
  const T *q, *k;
  int64_t ld_qk;
  const T* v;
  int64_t ld_v;
  int64_t ld_o;
};

// a = β·P + α·I − γ·C over the causal prefix, zero above the diagonal.
template <class T>
void build_shaped(T* a, const T* p, int64_t n, const Shaping<T>& s) {
  for (int64_t i = 0; i < n; ++i) {
    const T c = inv(static_cast<T>(i + 1));
    const T* prow = p + i * n;
    T* arow = a + i * n;
    for (int64_t j = 0; j <= i; ++j) arow[j] = s.beta * prow[j] - s.gamma * c;
    for (int64_t j = i + 1; j < n; ++j) arow[j] = 0;
  }
  for (int64_t i = 0; i < n; ++i) a[i * n + i] += s.alpha;
}

// p = softmax(q·kᵀ·scale + causal mask), out = M·v with M = p (standard) or A (shaped, built
// in a, a per-thread [n,n] scratch).
template <class T>
void head_forward(const HeadOperands<T>& h, T* out, T* p, int64_t n, int64_t hd, const Shaping<T>* shaping, T* a) {
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  cpu::gemm<T>(false, true, n, n, hd, scale, h.q, h.ld_qk, h.k, h.ld_qk, T(0), p, n);
  for (int64_t i = 0; i < n; ++i) {
    T* row = p + i * n;
    T mx = row[0];
    for (int64_t j = 1; j <= i; ++j) mx = std::max(mx, row[j]);
    T sum = 0;
    for (int64_t j = 0; j <= i; ++j) {
      row[j] = std::exp(row[j] - mx);
      sum += row[j];
    }
    const T r = inv(sum);
    for (int64_t j = 0; j <= i; ++j) row[j] *= r;
    for (int64_t j = i + 1; j < n; ++j) row[j] = 0;
  }
  const T* m = p;
  if (shaping) {
    build_shaped(a, p, n, *shaping);
    m = a;
  }
  cpu::gemm<T>(false, false, n, hd, n, T(1), m, n, h.v, h.ld_v, T(0), out, h.ld_o);
}

// From dout: dv += Mᵀ·dout, then through the softmax into dq and dk. dp and a are per-thread
// [n,n] scratch; p (the saved softmax) is overwritten with the scores' gradient. Shaped:
// partial[0..2] = (dα, dβ, dγ) of this pair.
template <class T>
void head_backward(const HeadOperands<T>& h, const T* dout, T* dq, T* dk, T* dv, int64_t ld_dv, T* p, int64_t n,
                   int64_t hd, const Shaping<T>* shaping, T* dp, T* a, double* partial) {
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  // dM = dO·Vᵀ, dV += Mᵀ·dO
  cpu::gemm<T>(false, true, n, n, hd, T(1), dout, h.ld_o, h.v, h.ld_v, T(0), dp, n);
  const T* m = p;
  if (shaping) {
    build_shaped(a, p, n, *shaping);
    m = a;
  }
  cpu::gemm<T>(true, false, n, hd, n, T(1), m, n, dout, h.ld_o, T(1), dv, ld_dv);
  if (shaping) {
    // dα = Σ_i dA_ii, dβ = Σ dA ⊙ P, dγ = −Σ dA ⊙ C; then dP = β·dA.
    double da = 0, db = 0, dg = 0;
    for (int64_t i = 0; i < n; ++i) {
      const T* prow = p + i * n;
      T* drow = dp + i * n;
      double row_p = 0, row_c = 0;
      for (int64_t j = 0; j <= i; ++j) {
        row_p += static_cast<double>(drow[j]) * static_cast<double>(prow[j]);
        row_c += static_cast<double>(drow[j]);
      }
      da += static_cast<double>(drow[i]);
      db += row_p;
      dg -= row_c * static_cast<double>(inv(static_cast<T>(i + 1)));
      for (int64_t j = 0; j <= i; ++j) drow[j] *= shaping->beta;
    }
    partial[0] = da, partial[1] = db, partial[2] = dg;
  }
  // Through the softmax, written over P (no longer needed): dS = P ⊙ (dP − Σ_j P·dP),
  // scaled; zero above the diagonal.
  for (int64_t i = 0; i < n; ++i) {
    T* prow = p + i * n;
    const T* drow = dp + i * n;
    T dot = 0;
    for (int64_t j = 0; j <= i; ++j) dot += prow[j] * drow[j];
    for (int64_t j = 0; j <= i; ++j) prow[j] = prow[j] * (drow[j] - dot) * scale;
    for (int64_t j = i + 1; j < n; ++j) prow[j] = 0;
  }
  // dQ += dS·K, dK += dSᵀ·Q
  cpu::gemm<T>(false, false, n, hd, n, T(1), p, n, h.k, h.ld_qk, T(1), dq, h.ld_qk);
  cpu::gemm<T>(true, false, n, hd, n, T(1), p, n, h.q, h.ld_qk, T(1), dk, h.ld_qk);
}

}  // namespace

void CpuBackend::attention_forward(const Tensor& out, const Tensor& probs, const Tensor& qkv, int n_head) {
  const int64_t B = qkv.shape[0], T = qkv.shape[1], C3 = qkv.shape[2], C = C3 / 3, hd = C / n_head;
  cpu::dispatch_float(qkv.dtype, [&](auto zero) {
    using T_ = decltype(zero);
    const T_* base = qkv.ptr<T_>();
    T_* o = out.ptr<T_>();
    T_* pr = probs.ptr<T_>();
#pragma omp parallel for schedule(static)
    for (int64_t bh = 0; bh < B * n_head; ++bh) {
      const int64_t b = bh / n_head, h = bh % n_head;
      const T_* q = base + b * T * C3 + h * hd;
      const HeadOperands<T_> ops{q, q + C, C3, q + 2 * C, C3, C};
      head_forward<T_>(ops, o + b * T * C + h * hd, pr + bh * T * T, T, hd, nullptr, nullptr);
    }
  });
}

void CpuBackend::attention_backward(const Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& probs,
                                    int n_head) {
  const int64_t B = qkv.shape[0], T = qkv.shape[1], C3 = qkv.shape[2], C = C3 / 3, hd = C / n_head;
  cpu::dispatch_float(qkv.dtype, [&](auto zero) {
    using T_ = decltype(zero);
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
        T_* dq = dbase + b * T * C3 + h * hd;
        const HeadOperands<T_> ops{q, q + C, C3, q + 2 * C, C3, C};
        head_backward<T_>(ops, d + b * T * C + h * hd, dq, dq + C, dq + 2 * C, C3, pr + bh * T * T, T, hd, nullptr,
                          dp.data(), nullptr, nullptr);
      }
    }
  });
}

void CpuBackend::shaped_attention_forward(const Tensor& out, const Tensor& probs, const Tensor& qk, const Tensor& v,
                                          const Tensor& alpha, const Tensor& beta, const Tensor& gamma, int n_head) {
  const int64_t B = qk.shape[0], T = qk.shape[1], C2 = qk.shape[2], C = C2 / 2, hd = C / n_head;
  cpu::dispatch_float(qk.dtype, [&](auto zero) {
    using T_ = decltype(zero);
    const T_* base = qk.ptr<T_>();
    const T_* vb = v.ptr<T_>();
    const T_ *al = alpha.ptr<T_>(), *be = beta.ptr<T_>(), *ga = gamma.ptr<T_>();
    T_* o = out.ptr<T_>();
    T_* pr = probs.ptr<T_>();
#pragma omp parallel
    {
      std::vector<T_> a(static_cast<size_t>(T * T));  // one (batch, head)'s A at a time
#pragma omp for schedule(static)
      for (int64_t bh = 0; bh < B * n_head; ++bh) {
        const int64_t b = bh / n_head, h = bh % n_head;
        const T_* q = base + b * T * C2 + h * hd;
        const HeadOperands<T_> ops{q, q + C, C2, vb + b * T * C + h * hd, C, C};
        const Shaping<T_> s{al[h], be[h], ga[h]};
        head_forward<T_>(ops, o + b * T * C + h * hd, pr + bh * T * T, T, hd, &s, a.data());
      }
    }
  });
}

void CpuBackend::shaped_attention_backward(const Tensor& dqk, const Tensor& dv, const Tensor& dalpha,
                                           const Tensor& dbeta, const Tensor& dgamma, const Tensor& dout,
                                           const Tensor& qk, const Tensor& v, const Tensor& probs, const Tensor& alpha,
                                           const Tensor& beta, const Tensor& gamma, int n_head) {
  const int64_t B = qk.shape[0], T = qk.shape[1], C2 = qk.shape[2], C = C2 / 2, hd = C / n_head;
  std::vector<double> partial(static_cast<size_t>(B * n_head * 3));  // (dα, dβ, dγ) per (b, h)
  cpu::dispatch_float(qk.dtype, [&](auto zero) {
    using T_ = decltype(zero);
    const T_* base = qk.ptr<T_>();
    const T_* vb = v.ptr<T_>();
    const T_ *al = alpha.ptr<T_>(), *be = beta.ptr<T_>(), *ga = gamma.ptr<T_>();
    T_* dbase = dqk.ptr<T_>();
    T_* dvb = dv.ptr<T_>();
    const T_* d = dout.ptr<T_>();
    T_* pr = probs.ptr<T_>();
#pragma omp parallel
    {
      std::vector<T_> dp(static_cast<size_t>(T * T)), a(static_cast<size_t>(T * T));
#pragma omp for schedule(static)
      for (int64_t bh = 0; bh < B * n_head; ++bh) {
        const int64_t b = bh / n_head, h = bh % n_head;
        const T_* q = base + b * T * C2 + h * hd;
        T_* dq = dbase + b * T * C2 + h * hd;
        const HeadOperands<T_> ops{q, q + C, C2, vb + b * T * C + h * hd, C, C};
        const Shaping<T_> s{al[h], be[h], ga[h]};
        head_backward<T_>(ops, d + b * T * C + h * hd, dq, dq + C, dvb + b * T * C + h * hd, C, pr + bh * T * T, T, hd,
                          &s, dp.data(), a.data(), partial.data() + bh * 3);
      }
    }
    T_* grads[3] = {dalpha.empty() ? nullptr : dalpha.ptr<T_>(), dbeta.empty() ? nullptr : dbeta.ptr<T_>(),
                    dgamma.empty() ? nullptr : dgamma.ptr<T_>()};
    for (int64_t h = 0; h < n_head; ++h)
      for (int k = 0; k < 3; ++k) {
        if (!grads[k]) continue;
        double sum = 0;
        for (int64_t b = 0; b < B; ++b) sum += partial[static_cast<size_t>((b * n_head + h) * 3 + k)];
        grads[k][h] += static_cast<T_>(sum);
      }
  });
}

// Decoding: a handful of new rows, each of its own sequence, against that sequence's cache.
// Plain loops over (row, head) beat GEMM set-up here, and each (row, head) is computed whole
// by one thread from its own sequence's rows, so a row's bits do not depend on which other
// rows share the step (the batch-invariance serving needs). Each new token costs one pass
// over its cache, not over the prefix.
namespace {

template <class T>
void cached_rows(T* out, const T* q, const T* k, int64_t ld_qk, const T* v, int64_t ld_v, T* kc, T* vc,
                 const int32_t* slot, const int32_t* pos, int64_t M, int64_t C, int64_t n_ctx, int n_head,
                 const T* alpha, const T* beta, const T* gamma) {
  const int64_t hd = C / n_head;
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  auto cache_row = [&](T* cache, int64_t m) { return cache + (static_cast<int64_t>(slot[m]) * n_ctx + pos[m]) * C; };
  // Every row's key and value first: a later row of the same sequence attends to them.
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    std::copy(k + m * ld_qk, k + m * ld_qk + C, cache_row(kc, m));
    std::copy(v + m * ld_v, v + m * ld_v + C, cache_row(vc, m));
  }
#pragma omp parallel
  {
    std::vector<T> score(static_cast<size_t>(n_ctx));
#pragma omp for schedule(static)
    for (int64_t mh = 0; mh < M * n_head; ++mh) {
      const int64_t m = mh / n_head, h = mh % n_head, last = pos[m];
      const T* kseq = kc + static_cast<int64_t>(slot[m]) * n_ctx * C + h * hd;
      const T* vseq = vc + static_cast<int64_t>(slot[m]) * n_ctx * C + h * hd;
      const T* qi = q + m * ld_qk + h * hd;
      T mx = std::numeric_limits<T>::lowest();  // finite: this file builds with -ffast-math
      for (int64_t j = 0; j <= last; ++j) {
        T s = 0;
        for (int64_t d = 0; d < hd; ++d) s += qi[d] * kseq[j * C + d];
        score[j] = s * scale;
        mx = std::max(mx, score[j]);
      }
      T sum = 0;
      for (int64_t j = 0; j <= last; ++j) sum += score[j] = std::exp(score[j] - mx);
      const T norm = inv(sum), b = beta ? beta[h] : T(1);
      T* oi = out + m * C + h * hd;
      for (int64_t d = 0; d < hd; ++d) oi[d] = 0;
      for (int64_t j = 0; j <= last; ++j) {
        const T p = b * score[j] * norm;
        for (int64_t d = 0; d < hd; ++d) oi[d] += p * vseq[j * C + d];
      }
      if (!alpha) continue;
      // Shaped: + α·v_i − γ·mean of the prefix's values.
      const T g = gamma[h] * inv(static_cast<T>(last + 1));
      for (int64_t j = 0; j <= last; ++j)
        for (int64_t d = 0; d < hd; ++d) oi[d] -= g * vseq[j * C + d];
      for (int64_t d = 0; d < hd; ++d) oi[d] += alpha[h] * vseq[last * C + d];
    }
  }
}

}  // namespace

void CpuBackend::attention_forward_cached(const Tensor& out, const Tensor& qkv, const Tensor& kcache,
                                          const Tensor& vcache, const Tensor& slot, const Tensor& pos, int n_head) {
  const int64_t M = qkv.shape[0], C = qkv.shape[1] / 3, n_ctx = kcache.shape[1];
  cpu::dispatch_float(qkv.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* q = qkv.ptr<T>();
    cached_rows<T>(out.ptr<T>(), q, q + C, 3 * C, q + 2 * C, 3 * C, kcache.ptr<T>(), vcache.ptr<T>(),
                   slot.ptr<int32_t>(), pos.ptr<int32_t>(), M, C, n_ctx, n_head, nullptr, nullptr, nullptr);
  });
}

void CpuBackend::shaped_attention_forward_cached(const Tensor& out, const Tensor& qk, const Tensor& v,
                                                 const Tensor& kcache, const Tensor& vcache, const Tensor& slot,
                                                 const Tensor& pos, const Tensor& alpha, const Tensor& beta,
                                                 const Tensor& gamma, int n_head) {
  const int64_t M = qk.shape[0], C = qk.shape[1] / 2, n_ctx = kcache.shape[1];
  cpu::dispatch_float(qk.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* q = qk.ptr<T>();
    cached_rows<T>(out.ptr<T>(), q, q + C, 2 * C, v.ptr<T>(), C, kcache.ptr<T>(), vcache.ptr<T>(), slot.ptr<int32_t>(),
                   pos.ptr<int32_t>(), M, C, n_ctx, n_head, alpha.ptr<T>(), beta.ptr<T>(), gamma.ptr<T>());
  });
}

}  // namespace mom
