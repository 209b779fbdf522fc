// Alternating Updates (MODELS.md §5): predict and correct over a stream of K blocks, x [K, N, C]
// block-major (block i is the contiguous [N, C] slab i). The coefficients are static (p [K,K],
// g [K]: one set for every token) or per token (p [N,K,K], g [N,K]: Gemma 3n's router),
// told apart by their element count; every loop reads the token's coefficients through one
// pointer, so both kinds share the code.
//
// Work is split over fixed blocks of kTokenBlock tokens. Every output and activation gradient
// element depends on its own token only; the static coefficients' gradients are sums over all
// tokens: each row contributes a dot product over C (double, eight interleaved partial sums
// combined in lane order), rows add into their block's partial in row order, and the blocks
// are summed in block order after the parallel loop: thread-count independent, no atomics.
// Per-token coefficient gradients need no reduction across tokens.
//
// Sums over the stream's blocks run j (or i) ascending from the first term, not from 0, and correct
// evaluates (pred[i] − g_i·pred[a]) + g_i·y in that order: with p = I, predict returns x, and
// with K = 1, g = 1, correct returns y, bit for bit. No -ffast-math here, so GCC keeps that
// order.
#include <algorithm>
#include <stdexcept>
#include <vector>

#include "core/backend/cpu/cpu_backend.h"

namespace mom {

namespace {

constexpr int64_t kTokenBlock = 32;

// The stream's sizes from a [K, ..., C] tensor.
struct Stream {
  int64_t K, N, C;
  explicit Stream(const Tensor& x)
      : K(x.shape[0]), N(x.numel() / (x.shape[0] * x.shape[x.shape.rank - 1])), C(x.shape[x.shape.rank - 1]) {}
  int64_t blocks() const { return (N + kTokenBlock - 1) / kTokenBlock; }
};

// Elements per token of a coefficient tensor with `per` elements per set: 0 when static (one
// set for all tokens; with N = 1 both readings agree), `per` when per token.
int64_t coef_stride(const Tensor& c, int64_t per, int64_t N, const char* what) {
  if (c.numel() == per) return 0;
  if (c.numel() == N * per) return per;
  throw std::logic_error(std::string(what) + ": coefficient tensor " + c.shape.str() +
                         " is neither static nor per token");
}

template <class T>
T* ptr_or_null(const Tensor& t) {
  return t.empty() ? nullptr : t.ptr<T>();
}

}  // namespace

void CpuBackend::altup_predict_forward(const Tensor& out, const Tensor& x, const Tensor& p) {
  const Stream s(x);
  const int64_t K = s.K, N = s.N, C = s.C, NC = N * C;
  const int64_t stride = coef_stride(p, K * K, N, "altup_predict_forward");
  cpu::dispatch_float(x.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* xs = x.ptr<T>();
    const T* ps = p.ptr<T>();
    T* o = out.ptr<T>();
#pragma omp parallel for schedule(static)
    for (int64_t blk = 0; blk < s.blocks(); ++blk)
      for (int64_t n = blk * kTokenBlock; n < std::min(N, (blk + 1) * kTokenBlock); ++n) {
        const T* pn = ps + n * stride;
        for (int64_t i = 0; i < K; ++i) {
          T* orow = o + i * NC + n * C;
          const T* x0 = xs + n * C;
          for (int64_t c = 0; c < C; ++c) orow[c] = pn[i * K] * x0[c];
          for (int64_t j = 1; j < K; ++j) {
            const T* xj = xs + j * NC + n * C;
            for (int64_t c = 0; c < C; ++c) orow[c] += pn[i * K + j] * xj[c];
          }
        }
      }
  });
}

void CpuBackend::altup_predict_backward(const Tensor& dx, const Tensor& dp, const Tensor& dout, const Tensor& x,
                                        const Tensor& p) {
  const Stream s(dout);
  const int64_t K = s.K, N = s.N, C = s.C, NC = N * C, KK = K * K;
  const int64_t stride = coef_stride(p, KK, N, "altup_predict_backward");
  // Static dp: one partial set per token block, summed in block order below.
  std::vector<double> partial(stride == 0 && !dp.empty() ? static_cast<size_t>(s.blocks() * KK) : 0);
  cpu::dispatch_float(dout.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* d = dout.ptr<T>();
    const T* ps = p.ptr<T>();
    T* dxs = ptr_or_null<T>(dx);
    T* dps = ptr_or_null<T>(dp);
    const T* xs = dps ? x.ptr<T>() : nullptr;
#pragma omp parallel
    {
      std::vector<T> acc(static_cast<size_t>(C));
#pragma omp for schedule(static)
      for (int64_t blk = 0; blk < s.blocks(); ++blk)
        for (int64_t n = blk * kTokenBlock; n < std::min(N, (blk + 1) * kTokenBlock); ++n) {
          const T* pn = ps + n * stride;
          if (dxs)  // dx[j] += Σ_i p[i][j]·dout[i]
            for (int64_t j = 0; j < K; ++j) {
              const T* d0 = d + n * C;
              for (int64_t c = 0; c < C; ++c) acc[c] = pn[j] * d0[c];
              for (int64_t i = 1; i < K; ++i) {
                const T* di = d + i * NC + n * C;
                for (int64_t c = 0; c < C; ++c) acc[c] += pn[i * K + j] * di[c];
              }
              T* dxj = dxs + j * NC + n * C;
              for (int64_t c = 0; c < C; ++c) dxj[c] += acc[c];
            }
          if (dps)  // dp[i][j] += Σ_c dout[i]·x[j]
            for (int64_t i = 0; i < K; ++i)
              for (int64_t j = 0; j < K; ++j) {
                const double v = cpu::dot_double(d + i * NC + n * C, xs + j * NC + n * C, C);
                if (stride == 0)
                  partial[static_cast<size_t>(blk * KK + i * K + j)] += v;
                else
                  dps[n * KK + i * K + j] += static_cast<T>(v);
              }
        }
    }
    if (dps && stride == 0)
      for (int64_t ij = 0; ij < KK; ++ij) {
        double total = 0;
        for (int64_t blk = 0; blk < s.blocks(); ++blk) total += partial[static_cast<size_t>(blk * KK + ij)];
        dps[ij] += static_cast<T>(total);
      }
  });
}

void CpuBackend::altup_correct_forward(const Tensor& out, const Tensor& pred, const Tensor& y, const Tensor& g,
                                       int active) {
  const Stream s(pred);
  const int64_t K = s.K, N = s.N, C = s.C, NC = N * C, a = active;
  const int64_t stride = coef_stride(g, K, N, "altup_correct_forward");
  cpu::dispatch_float(pred.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* pr = pred.ptr<T>();
    const T* ys = y.ptr<T>();
    const T* gs = g.ptr<T>();
    T* o = out.ptr<T>();
#pragma omp parallel for schedule(static)
    for (int64_t blk = 0; blk < s.blocks(); ++blk)
      for (int64_t n = blk * kTokenBlock; n < std::min(N, (blk + 1) * kTokenBlock); ++n) {
        const T* gn = gs + n * stride;
        const T* pa = pr + a * NC + n * C;
        const T* yr = ys + n * C;
        // The active block last, so that out may be pred itself.
        for (int64_t k = 0; k < K; ++k) {
          const int64_t i = (a + 1 + k) % K;
          const T gi = gn[i];
          const T* pi = pr + i * NC + n * C;
          T* orow = o + i * NC + n * C;
          for (int64_t c = 0; c < C; ++c) orow[c] = (pi[c] - gi * pa[c]) + gi * yr[c];
        }
      }
  });
}

void CpuBackend::altup_correct_backward(const Tensor& dpred, const Tensor& dy, const Tensor& dg, const Tensor& dout,
                                        const Tensor& pred, const Tensor& y, const Tensor& g, int active) {
  const Stream s(dout);
  const int64_t K = s.K, N = s.N, C = s.C, NC = N * C, a = active;
  const int64_t stride = coef_stride(g, K, N, "altup_correct_backward");
  std::vector<double> partial(stride == 0 && !dg.empty() ? static_cast<size_t>(s.blocks() * K) : 0);
  cpu::dispatch_float(dout.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* d = dout.ptr<T>();
    const T* gs = g.ptr<T>();
    T* dpr = ptr_or_null<T>(dpred);
    T* dys = ptr_or_null<T>(dy);
    T* dgs = ptr_or_null<T>(dg);
    const T* pr = dgs ? pred.ptr<T>() : nullptr;
    const T* ys = dgs ? y.ptr<T>() : nullptr;
#pragma omp parallel
    {
      std::vector<T> acc(static_cast<size_t>(C));
#pragma omp for schedule(static)
      for (int64_t blk = 0; blk < s.blocks(); ++blk)
        for (int64_t n = blk * kTokenBlock; n < std::min(N, (blk + 1) * kTokenBlock); ++n) {
          const T* gn = gs + n * stride;
          if (dpr || dys) {
            // acc = Σ_i g_i·dout[i]; dpred[i] += dout[i], dpred[a] −= acc, dy += acc
            const T* d0 = d + n * C;
            for (int64_t c = 0; c < C; ++c) acc[c] = gn[0] * d0[c];
            for (int64_t i = 1; i < K; ++i) {
              const T* di = d + i * NC + n * C;
              for (int64_t c = 0; c < C; ++c) acc[c] += gn[i] * di[c];
            }
            if (dpr) {
              for (int64_t i = 0; i < K; ++i) {
                const T* di = d + i * NC + n * C;
                T* dpi = dpr + i * NC + n * C;
                for (int64_t c = 0; c < C; ++c) dpi[c] += di[c];
              }
              T* dpa = dpr + a * NC + n * C;
              for (int64_t c = 0; c < C; ++c) dpa[c] -= acc[c];
            }
            if (dys) {
              T* dyr = dys + n * C;
              for (int64_t c = 0; c < C; ++c) dyr[c] += acc[c];
            }
          }
          if (dgs) {
            // dg_i += Σ_c dout[i]·(y − pred[a])
            const T* pa = pr + a * NC + n * C;
            const T* yr = ys + n * C;
            for (int64_t c = 0; c < C; ++c) acc[c] = yr[c] - pa[c];
            for (int64_t i = 0; i < K; ++i) {
              const double v = cpu::dot_double(d + i * NC + n * C, acc.data(), C);
              if (stride == 0)
                partial[static_cast<size_t>(blk * K + i)] += v;
              else
                dgs[n * K + i] += static_cast<T>(v);
            }
          }
        }
    }
    if (dgs && stride == 0)
      for (int64_t i = 0; i < K; ++i) {
        double total = 0;
        for (int64_t blk = 0; blk < s.blocks(); ++blk) total += partial[static_cast<size_t>(blk * K + i)];
        dgs[i] += static_cast<T>(total);
      }
  });
}

}  // namespace mom
