// Causal multi-head self-attention on the GPU, standard (qkv [B,T,3C], q | k | v) and shaped
// (MODELS.md §4: qk [B,T,2C] and v [B,T,C] apart, A = β·P + α·I − γ·C), training forms and
// the KV-cached decoding forms. The CPU backend (cpu/attention.cpp) defines the semantics.
//
// Why materialised (first correct, then fast): the training forms store the whole softmax
// anyway (probs [B,nh,T,T] is part of the Backend contract, and backward consumes it), so
// the scores are computed by one strided-batched GEMM over all B·nh heads into probs, the
// causal softmax runs in place, and the weighted sum is a second batched GEMM. cuBLAS needs
// one fixed stride between the matrices of a batch, which the [B,T,C] layout does not have
// across (b, h); so q, k, v are first permuted into [B,nh,T,hd] scratch (one cheap pass over
// B·T·C, small beside the T² work) and the heads' outputs permuted back. The GEMMs compute
// the masked upper triangle too (twice the needed flops); the softmax writes it to exact 0,
// as the CPU's probs hold, so the products see exact zeros there.
//
// Why one code path for both kinds: head_forward / head_backward below take the q|k block and
// the v block as (pointer, leading dimension), like the CPU's HeadOperands, so standard
// attention passes views into qkv and shaped attention its two tensors; the shaped kind only
// adds the step from P to A (build_shaped) and the scalar gradients (inside the softmax
// backward's row kernel).
//
// Why A is built explicitly for shaped attention (as the CPU does): at init (q = 0,
// α = β = γ = 1) the sub-block must return v bit for bit. The softmax of zero scores is
// exp(0)·(1/(i+1)) and C is written with the same 1/(i+1), so β·P − γ·C is exactly 0, A is
// exactly I and the GEMM adds only exact zeros to each v. (nvcc may contract β·p − γ·c into
// an FMA; with β = γ = 1 and p = c either contraction still gives exactly 0.)
//
// Backward needs one [B,nh,T,T] scratch besides probs: it first holds A (shaped) for
// dv += Aᵀ·dout (standard uses probs itself), then dA = dout·vᵀ overwrites it; the row
// kernel reads P and dA and writes the scores' gradient over probs.
//
// Determinism: the softmax rows are one warp each, lanes striding the row and a butterfly
// (xor-shuffle) reduction: a fixed order, and every lane gets the same bits. The scalar
// gradients of shaped attention are per-row partials in double (one slot per (b, h, i)), then
// one block per head sums its B·T slots with block_sum: fixed order, no atomics. cuBLAS
// GEMMs give the same bits run after run on one GPU model.
//
// Cached forms: one kernel writes every row's k and v into the caches first (a separate
// launch, so that a row attends to its own fresh key and value and to those of earlier rows
// of its sequence in the same step), then one block per (row, head) computes the scores over
// cache rows 0..pos[m] (a warp per key, lanes over the head dimension: coalesced), softmax with
// block_max / block_sum, and the weighted sum over the keys with one thread per output element
// in key order. Everything a row computes depends only on its own q and its own sequence's
// cache, with a geometry fixed by n_ctx and hd, so its bits do not depend on the other rows
// (serving's batch invariance). Scores live in shared memory (opting into more than 48 KiB
// where the device allows it), and past that in a global scratch of one n_ctx row per block.
#include <algorithm>
#include <cmath>

#include "core/backend/cuda/cuda_common.cuh"

namespace mom {

namespace {

// ---- shared helpers

constexpr int kWarpsPerBlock = cuda::kThreads / 32;

// Grid for one warp per row.
unsigned grid_for_rows(int64_t rows) { return cuda::grid_for(rows, kWarpsPerBlock); }

// [B,T,ld] with `parts` blocks of C columns from column 0 (each block nh heads of hd) →
// dst[p] = [B,nh,T,hd] for p < parts, the blocks B·T·C elements apart. Reads run along the
// rows (coalesced), writes in runs of hd.
template <class T>
__global__ void to_heads_kernel(T* dst, const T* src, int64_t ld, int parts, int64_t B, int64_t Tn, int64_t C,
                                int64_t nh) {
  const int64_t hd = C / nh, width = parts * C, n = B * Tn * width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / width, col = i % width;  // row = b·T + t
    const int64_t p = col / C, c = col % C, b = row / Tn, t = row % Tn, h = c / hd, d = c % hd;
    dst[p * B * Tn * C + ((b * nh + h) * Tn + t) * hd + d] = src[row * ld + col];
  }
}

// The inverse: dst[b, t, p·C + h·hd + d] (+)= src[p][b, h, t, d].
template <class T>
__global__ void from_heads_kernel(T* dst, int64_t ld, const T* src, int parts, int64_t B, int64_t Tn, int64_t C,
                                  int64_t nh, bool accumulate) {
  const int64_t hd = C / nh, width = parts * C, n = B * Tn * width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / width, col = i % width;
    const int64_t p = col / C, c = col % C, b = row / Tn, t = row % Tn, h = c / hd, d = c % hd;
    const T x = src[p * B * Tn * C + ((b * nh + h) * Tn + t) * hd + d];
    T& y = dst[row * ld + col];
    y = accumulate ? y + x : x;
  }
}

// In place over rows of length Tn (row r is query i = r mod Tn): p_j = exp(s_j − max)·(1/Σ)
// for j ≤ i, exactly 0 for j > i. One warp per row.
template <class T>
__global__ void causal_softmax_kernel(T* p, int64_t rows, int64_t Tn) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + (threadIdx.x >> 5); r < rows; r += warps) {
    T* row = p + r * Tn;
    const int64_t i = r % Tn;
    T mx = row[0];
    for (int64_t j = lane; j <= i; j += 32) mx = max(mx, row[j]);
    mx = cuda::warp_max(mx);
    T sum = 0;
    for (int64_t j = lane; j <= i; j += 32) {
      const T e = exp(row[j] - mx);
      row[j] = e;
      sum += e;
    }
    const T norm = T(1) / cuda::warp_sum(sum);
    for (int64_t j = lane; j < Tn; j += 32) row[j] = j <= i ? row[j] * norm : T(0);
  }
}

// a = β·P + α·I − γ·C over [B·nh] matrices [Tn,Tn], zero above the diagonal (head h =
// matrix mod nh).
template <class T>
__global__ void build_shaped_kernel(T* a, const T* p, int64_t mats, int64_t Tn, int64_t nh, const T* alpha,
                                    const T* beta, const T* gamma) {
  const int64_t n = mats * Tn * Tn;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = idx % Tn, i = (idx / Tn) % Tn, h = (idx / (Tn * Tn)) % nh;
    T x = 0;
    if (j <= i) {
      const T c = T(1) / static_cast<T>(i + 1);
      x = beta[h] * p[idx] - gamma[h] * c;
      if (j == i) x += alpha[h];
    }
    a[idx] = x;
  }
}

// The softmax backward, one warp per row, written over P: dS = P ⊙ (dP − Σ_j P·dP)·scale for
// j ≤ i, 0 above. Standard: dP = d (beta null). Shaped: d is dA, dP = β·dA, and
// partial[3r..3r+2] = (dA_ii, Σ_j dA·P, −Σ_j dA·(1/(i+1))), the row's shares of dα, dβ, dγ.
template <class T>
__global__ void softmax_backward_kernel(T* p, const T* d, int64_t rows, int64_t Tn, int64_t nh, T scale, const T* beta,
                                        double* partial) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + (threadIdx.x >> 5); r < rows; r += warps) {
    T* prow = p + r * Tn;
    const T* drow = d + r * Tn;
    const int64_t i = r % Tn;
    T b = 1;
    if (beta) {
      b = beta[(r / Tn) % nh];
      double row_p = 0, row_c = 0;
      for (int64_t j = lane; j <= i; j += 32) {
        row_p += static_cast<double>(drow[j]) * static_cast<double>(prow[j]);
        row_c += static_cast<double>(drow[j]);
      }
      row_p = cuda::warp_sum(row_p);
      row_c = cuda::warp_sum(row_c);
      if (lane == 0) {
        partial[3 * r] = static_cast<double>(drow[i]);
        partial[3 * r + 1] = row_p;
        partial[3 * r + 2] = -row_c * static_cast<double>(T(1) / static_cast<T>(i + 1));
      }
    }
    T dot = 0;
    for (int64_t j = lane; j <= i; j += 32) dot += prow[j] * (beta ? b * drow[j] : drow[j]);
    dot = cuda::warp_sum(dot);
    for (int64_t j = lane; j < Tn; j += 32)
      prow[j] = j <= i ? prow[j] * ((beta ? b * drow[j] : drow[j]) - dot) * scale : T(0);
  }
}

// grad[k][h] += Σ over (b, i) of partial[((b·nh + h)·Tn + i)·3 + k], one block per head, in
// a fixed tree (block_sum). A null grad[k] is skipped.
template <class T>
__global__ void shaped_scalar_grads_kernel(T* dalpha, T* dbeta, T* dgamma, const double* partial, int64_t B, int64_t Tn,
                                           int64_t nh) {
  const int64_t h = blockIdx.x;
  T* grads[3] = {dalpha, dbeta, dgamma};
  for (int k = 0; k < 3; ++k) {
    if (!grads[k]) continue;  // uniform over the block
    double s = 0;
    for (int64_t bi = threadIdx.x; bi < B * Tn; bi += blockDim.x) {
      const int64_t b = bi / Tn, i = bi % Tn;
      s += partial[((b * nh + h) * Tn + i) * 3 + k];
    }
    s = cuda::block_sum(s);
    if (threadIdx.x == 0) grads[k][h] += static_cast<T>(s);
  }
}

// A head's shaped-attention coefficients (device pointers, [nh]); standard passes none.
template <class T>
struct Shaping {
  const T *alpha, *beta, *gamma;
};

// Sizes shared by the training forms.
struct Dims {
  int64_t B, Tn, C, nh, hd;
  int64_t btc() const { return B * Tn * C; }
  int64_t mats() const { return B * nh; }
  int64_t probs() const { return B * nh * Tn * Tn; }
};

// The operands of the training forms: the q | k block (ld_qk) and the v block (ld_v), both
// with nh heads of hd columns from column 0.
template <class T>
struct Operands {
  const T* qk;
  int64_t ld_qk;
  const T* v;
  int64_t ld_v;
};

template <class T>
void to_heads(const CudaBackend& be, const char* op, const std::string& what, T* dst, const T* src, int64_t ld,
              int parts, const Dims& d) {
  to_heads_kernel<<<cuda::grid_for(d.btc() * parts), cuda::kThreads, 0, be.stream()>>>(dst, src, ld, parts, d.B, d.Tn,
                                                                                       d.C, d.nh);
  MOM_CUDA_CHECK_LAUNCH(op, what, be.stream());
}

template <class T>
void from_heads(const CudaBackend& be, const char* op, const std::string& what, T* dst, int64_t ld, const T* src,
                int parts, const Dims& d, bool accumulate) {
  from_heads_kernel<<<cuda::grid_for(d.btc() * parts), cuda::kThreads, 0, be.stream()>>>(dst, ld, src, parts, d.B, d.Tn,
                                                                                         d.C, d.nh, accumulate);
  MOM_CUDA_CHECK_LAUNCH(op, what, be.stream());
}

template <class T>
void build_shaped(const CudaBackend& be, const char* op, const std::string& what, T* a, const T* p, const Dims& d,
                  const Shaping<T>& s) {
  build_shaped_kernel<<<cuda::grid_for(d.probs()), cuda::kThreads, 0, be.stream()>>>(a, p, d.mats(), d.Tn, d.nh,
                                                                                     s.alpha, s.beta, s.gamma);
  MOM_CUDA_CHECK_LAUNCH(op, what, be.stream());
}

// probs = softmax(q·kᵀ·scale + causal mask); out = M·v with M = probs (standard) or A
// (shaped).
template <class T>
void head_forward(CudaBackend& be, const char* op, const std::string& what, T* out, T* probs, const Operands<T>& x,
                  const Dims& d, const Shaping<T>* shaping) {
  const T scale = T(1) / std::sqrt(static_cast<T>(d.hd));
  const int64_t mat = d.Tn * d.hd, sq = d.Tn * d.Tn;
  cuda::Scratch heads(be, static_cast<size_t>(4 * d.btc()) * sizeof(T), op);  // q, k, v, out as [B,nh,T,hd]
  T* qh = heads.as<T>();
  T *kh = qh + d.btc(), *vh = kh + d.btc(), *oh = vh + d.btc();
  to_heads(be, op, what, qh, x.qk, x.ld_qk, 2, d);
  to_heads(be, op, what, vh, x.v, x.ld_v, 1, d);
  be.gemm_strided_batched<T>(op, false, true, d.Tn, d.Tn, d.hd, scale, qh, d.hd, mat, kh, d.hd, mat, T(0), probs, d.Tn,
                             sq, d.mats());
  causal_softmax_kernel<<<grid_for_rows(d.mats() * d.Tn), cuda::kThreads, 0, be.stream()>>>(probs, d.mats() * d.Tn,
                                                                                            d.Tn);
  MOM_CUDA_CHECK_LAUNCH(op, what, be.stream());
  const T* m = probs;
  cuda::Scratch a(be, shaping ? static_cast<size_t>(d.probs()) * sizeof(T) : 0, op);
  if (shaping) {
    build_shaped(be, op, what, a.as<T>(), probs, d, *shaping);
    m = a.as<T>();
  }
  be.gemm_strided_batched<T>(op, false, false, d.Tn, d.hd, d.Tn, T(1), m, d.Tn, sq, vh, d.hd, mat, T(0), oh, d.hd, mat,
                             d.mats());
  from_heads(be, op, what, out, d.C, oh, 1, d, false);
}

// From dout: dv += Mᵀ·dout, dM = dout·vᵀ, through the softmax (over probs) into dq, dk (+=).
// The q | k gradient block is dqk (ld_dqk), v's is dv (ld_dv; null: not wanted). Shaped:
// dalpha/dbeta/dgamma (each may be null) += the scalar gradients.
template <class T>
void head_backward(CudaBackend& be, const char* op, const std::string& what, T* dqk, int64_t ld_dqk, T* dv,
                   int64_t ld_dv, const T* dout, T* probs, const Operands<T>& x, const Dims& d,
                   const Shaping<T>* shaping, T* dalpha, T* dbeta, T* dgamma) {
  const T scale = T(1) / std::sqrt(static_cast<T>(d.hd));
  const int64_t mat = d.Tn * d.hd, sq = d.Tn * d.Tn, rows = d.mats() * d.Tn;
  // q, k, v, dout, then dq, dk, dv, all [B,nh,T,hd]
  cuda::Scratch heads(be, static_cast<size_t>(7 * d.btc()) * sizeof(T), op);
  T* qh = heads.as<T>();
  T *kh = qh + d.btc(), *vh = kh + d.btc(), *doh = vh + d.btc();
  T *dqh = doh + d.btc(), *dkh = dqh + d.btc(), *dvh = dkh + d.btc();
  to_heads(be, op, what, qh, x.qk, x.ld_qk, 2, d);
  to_heads(be, op, what, vh, x.v, x.ld_v, 1, d);
  to_heads(be, op, what, doh, dout, d.C, 1, d);
  cuda::Scratch square(be, static_cast<size_t>(d.probs()) * sizeof(T), op);  // A, then dM
  T* sm = square.as<T>();
  const T* m = probs;
  if (shaping) {
    build_shaped(be, op, what, sm, probs, d, *shaping);
    m = sm;
  }
  if (dv) {
    be.gemm_strided_batched<T>(op, true, false, d.Tn, d.hd, d.Tn, T(1), m, d.Tn, sq, doh, d.hd, mat, T(0), dvh, d.hd,
                               mat, d.mats());
    from_heads(be, op, what, dv, ld_dv, dvh, 1, d, true);
  }
  be.gemm_strided_batched<T>(op, false, true, d.Tn, d.Tn, d.hd, T(1), doh, d.hd, mat, vh, d.hd, mat, T(0), sm, d.Tn, sq,
                             d.mats());
  cuda::Scratch partial(be, shaping ? static_cast<size_t>(rows * 3) * sizeof(double) : 0, op);
  softmax_backward_kernel<<<grid_for_rows(rows), cuda::kThreads, 0, be.stream()>>>(
      probs, sm, rows, d.Tn, d.nh, scale, shaping ? shaping->beta : nullptr, partial.as<double>());
  MOM_CUDA_CHECK_LAUNCH(op, what, be.stream());
  if (shaping && (dalpha || dbeta || dgamma)) {
    shaped_scalar_grads_kernel<<<static_cast<unsigned>(d.nh), cuda::kThreads, 0, be.stream()>>>(
        dalpha, dbeta, dgamma, partial.as<double>(), d.B, d.Tn, d.nh);
    MOM_CUDA_CHECK_LAUNCH(op, what, be.stream());
  }
  // dQ = dS·K, dK = dSᵀ·Q (dS already carries the scale)
  be.gemm_strided_batched<T>(op, false, false, d.Tn, d.hd, d.Tn, T(1), probs, d.Tn, sq, kh, d.hd, mat, T(0), dqh, d.hd,
                             mat, d.mats());
  be.gemm_strided_batched<T>(op, true, false, d.Tn, d.hd, d.Tn, T(1), probs, d.Tn, sq, qh, d.hd, mat, T(0), dkh, d.hd,
                             mat, d.mats());
  from_heads(be, op, what, dqk, ld_dqk, dqh, 2, d, true);
}

template <class T>
T* ptr_or_null(const Tensor& t) {
  return t.empty() ? nullptr : t.ptr<T>();
}

// ---- cached forms

constexpr int kCachedThreads = 128;
constexpr int kCachedWarps = kCachedThreads / 32;
constexpr unsigned kCachedGlobalBlocks = 512;  // blocks when the scores live in global scratch
constexpr size_t kStaticSharedReserve = 1024;  // block_sum/block_max's static shared memory

// Every row's k and v into the caches at [slot[m], pos[m]].
template <class T>
__global__ void cache_write_kernel(T* kc, T* vc, const T* k, int64_t ld_k, const T* v, int64_t ld_v,
                                   const int32_t* slot, const int32_t* pos, int64_t M, int64_t C, int64_t n_ctx) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < M * C;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = i / C, c = i % C;
    const int64_t dst = (static_cast<int64_t>(slot[m]) * n_ctx + pos[m]) * C + c;
    kc[dst] = k[m * ld_k + c];
    vc[dst] = v[m * ld_v + c];
  }
}

// One block per (row m, head h), grid-strided. Dynamic shared memory: q's head [hd], then
// the scores [n_ctx] unless score_global (then one n_ctx row per block there). Shaped (alpha
// non-null): out = β·Σ_j P_j·v_j − γ·mean_j v_j + α·v_last, in the CPU's order.
template <class T>
__global__ void cached_attention_kernel(T* out, const T* q, int64_t ld_q, const T* kc, const T* vc, const int32_t* slot,
                                        const int32_t* pos, int64_t M, int64_t C, int64_t n_ctx, int64_t nh,
                                        T* score_global, const T* alpha, const T* beta, const T* gamma) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t hd = C / nh;
  T* qs = reinterpret_cast<T*>(smem);
  T* score = score_global ? score_global + blockIdx.x * n_ctx : qs + hd;
  const T scale = T(1) / sqrt(static_cast<T>(hd));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t mh = blockIdx.x; mh < M * nh; mh += gridDim.x) {
    const int64_t m = mh / nh, h = mh % nh, last = pos[m];
    const int64_t seq = static_cast<int64_t>(slot[m]) * n_ctx * C + h * hd;
    const T* ks = kc + seq;
    const T* vs = vc + seq;
    __syncthreads();  // the previous (row, head) is done with qs and score
    for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = q[m * ld_q + h * hd + d];
    __syncthreads();
    for (int64_t j = warp; j <= last; j += kCachedWarps) {
      T s = 0;
      for (int64_t d = lane; d < hd; d += 32) s += qs[d] * ks[j * C + d];
      s = cuda::warp_sum(s);
      if (lane == 0) score[j] = s * scale;
    }
    __syncthreads();
    T mx = score[0];
    for (int64_t j = threadIdx.x; j <= last; j += blockDim.x) mx = max(mx, score[j]);
    mx = cuda::block_max(mx);
    T sum = 0;
    for (int64_t j = threadIdx.x; j <= last; j += blockDim.x) {
      const T e = exp(score[j] - mx);
      score[j] = e;
      sum += e;
    }
    sum = cuda::block_sum(sum);  // its barriers also publish the exp'd scores
    const T norm = T(1) / sum, b = beta ? beta[h] : T(1);
    for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
      T acc = 0;
      for (int64_t j = 0; j <= last; ++j) acc += b * score[j] * norm * vs[j * C + d];
      if (alpha) {
        const T g = gamma[h] * (T(1) / static_cast<T>(last + 1));
        for (int64_t j = 0; j <= last; ++j) acc -= g * vs[j * C + d];
        acc += alpha[h] * vs[last * C + d];
      }
      out[m * C + h * hd + d] = acc;
    }
  }
}

// Writes the caches, then attends: the shared body of both cached ops. q: the q block of
// each row (ld_q), k likewise (ld_k), v (ld_v); alpha/beta/gamma null for standard.
template <class T>
void cached_rows(const CudaBackend& be, const char* op, const std::string& what, T* out, const T* q, int64_t ld_q,
                 const T* k, int64_t ld_k, const T* v, int64_t ld_v, T* kc, T* vc, const int32_t* slot,
                 const int32_t* pos, int64_t M, int64_t C, int64_t n_ctx, int64_t nh, const T* alpha, const T* beta,
                 const T* gamma) {
  const int64_t hd = C / nh;
  cache_write_kernel<<<cuda::grid_for(M * C), cuda::kThreads, 0, be.stream()>>>(kc, vc, k, ld_k, v, ld_v, slot, pos, M,
                                                                                C, n_ctx);
  MOM_CUDA_CHECK_LAUNCH(op, what, be.stream());

  int optin = 0;
  MOM_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, be.device_index()), op, what);
  const size_t q_bytes = static_cast<size_t>(hd) * sizeof(T);
  const size_t all_bytes = q_bytes + static_cast<size_t>(n_ctx) * sizeof(T);
  const size_t default_limit = size_t{48} << 10;
  const bool in_shared = all_bytes + kStaticSharedReserve <= std::max(default_limit, static_cast<size_t>(optin));
  const size_t shared = in_shared ? all_bytes : q_bytes;
  const int64_t work = M * nh;
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>(work, in_shared ? 65535 : static_cast<int64_t>(kCachedGlobalBlocks)));
  cuda::Scratch global(be, in_shared ? 0 : static_cast<size_t>(blocks) * n_ctx * sizeof(T), op);
  if (shared + kStaticSharedReserve > default_limit)
    MOM_CUDA_CHECK(cudaFuncSetAttribute(cached_attention_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared)),
                   op, what);
  cached_attention_kernel<T><<<blocks, kCachedThreads, shared, be.stream()>>>(
      out, q, ld_q, kc, vc, slot, pos, M, C, n_ctx, nh, in_shared ? nullptr : global.as<T>(), alpha, beta, gamma);
  MOM_CUDA_CHECK_LAUNCH(op, what, be.stream());
}

}  // namespace

// ---- standard attention

void CudaBackend::attention_forward(const Tensor& out, const Tensor& probs, const Tensor& qkv, int n_head) {
  const Dims d{qkv.shape[0], qkv.shape[1], qkv.shape[2] / 3, n_head, qkv.shape[2] / 3 / n_head};
  if (d.B == 0 || d.Tn == 0 || d.C == 0) return;
  const char* op = "attention_forward";
  const std::string what =
      cuda::shapes({{"out", &out}, {"probs", &probs}, {"qkv", &qkv}}) + ", n_head " + std::to_string(n_head);
  dispatch_float(qkv.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* base = qkv.ptr<T>();
    head_forward<T>(*this, op, what, out.ptr<T>(), probs.ptr<T>(), {base, 3 * d.C, base + 2 * d.C, 3 * d.C}, d,
                    nullptr);
  });
}

void CudaBackend::attention_backward(const Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& probs,
                                     int n_head) {
  const Dims d{qkv.shape[0], qkv.shape[1], qkv.shape[2] / 3, n_head, qkv.shape[2] / 3 / n_head};
  if (d.B == 0 || d.Tn == 0 || d.C == 0) return;
  const char* op = "attention_backward";
  const std::string what = cuda::shapes({{"dqkv", &dqkv}, {"dout", &dout}, {"qkv", &qkv}, {"probs", &probs}}) +
                           ", n_head " + std::to_string(n_head);
  dispatch_float(qkv.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* base = qkv.ptr<T>();
    T* dbase = dqkv.ptr<T>();
    head_backward<T>(*this, op, what, dbase, 3 * d.C, dbase + 2 * d.C, 3 * d.C, dout.ptr<T>(), probs.ptr<T>(),
                     {base, 3 * d.C, base + 2 * d.C, 3 * d.C}, d, nullptr, nullptr, nullptr, nullptr);
  });
}

void CudaBackend::attention_forward_cached(const Tensor& out, const Tensor& qkv, const Tensor& kcache,
                                           const Tensor& vcache, const Tensor& slot, const Tensor& pos, int n_head) {
  const int64_t M = qkv.shape[0], C = qkv.shape[1] / 3, n_ctx = kcache.shape[1];
  if (M == 0 || C == 0) return;
  const char* op = "attention_forward_cached";
  const std::string what =
      cuda::shapes(
          {{"out", &out}, {"qkv", &qkv}, {"kcache", &kcache}, {"vcache", &vcache}, {"slot", &slot}, {"pos", &pos}}) +
      ", n_head " + std::to_string(n_head);
  dispatch_float(qkv.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* q = qkv.ptr<T>();
    cached_rows<T>(*this, op, what, out.ptr<T>(), q, 3 * C, q + C, 3 * C, q + 2 * C, 3 * C, kcache.ptr<T>(),
                   vcache.ptr<T>(), slot.ptr<int32_t>(), pos.ptr<int32_t>(), M, C, n_ctx, n_head, nullptr, nullptr,
                   nullptr);
  });
}

// ---- shaped attention

void CudaBackend::shaped_attention_forward(const Tensor& out, const Tensor& probs, const Tensor& qk, const Tensor& v,
                                           const Tensor& alpha, const Tensor& beta, const Tensor& gamma, int n_head) {
  const Dims d{qk.shape[0], qk.shape[1], qk.shape[2] / 2, n_head, qk.shape[2] / 2 / n_head};
  if (d.B == 0 || d.Tn == 0 || d.C == 0) return;
  const char* op = "shaped_attention_forward";
  const std::string what = cuda::shapes({{"out", &out},
                                         {"probs", &probs},
                                         {"qk", &qk},
                                         {"v", &v},
                                         {"alpha", &alpha},
                                         {"beta", &beta},
                                         {"gamma", &gamma}}) +
                           ", n_head " + std::to_string(n_head);
  dispatch_float(qk.dtype, [&](auto zero) {
    using T = decltype(zero);
    const Shaping<T> s{alpha.ptr<T>(), beta.ptr<T>(), gamma.ptr<T>()};
    head_forward<T>(*this, op, what, out.ptr<T>(), probs.ptr<T>(), {qk.ptr<T>(), 2 * d.C, v.ptr<T>(), d.C}, d, &s);
  });
}

void CudaBackend::shaped_attention_backward(const Tensor& dqk, const Tensor& dv, const Tensor& dalpha,
                                            const Tensor& dbeta, const Tensor& dgamma, const Tensor& dout,
                                            const Tensor& qk, const Tensor& v, const Tensor& probs, const Tensor& alpha,
                                            const Tensor& beta, const Tensor& gamma, int n_head) {
  const Dims d{qk.shape[0], qk.shape[1], qk.shape[2] / 2, n_head, qk.shape[2] / 2 / n_head};
  if (d.B == 0 || d.Tn == 0 || d.C == 0) return;
  const char* op = "shaped_attention_backward";
  const std::string what = cuda::shapes({{"dqk", &dqk},
                                         {"dv", &dv},
                                         {"dalpha", &dalpha},
                                         {"dbeta", &dbeta},
                                         {"dgamma", &dgamma},
                                         {"dout", &dout},
                                         {"qk", &qk},
                                         {"v", &v},
                                         {"probs", &probs}}) +
                           ", n_head " + std::to_string(n_head);
  dispatch_float(qk.dtype, [&](auto zero) {
    using T = decltype(zero);
    const Shaping<T> s{alpha.ptr<T>(), beta.ptr<T>(), gamma.ptr<T>()};
    head_backward<T>(*this, op, what, dqk.ptr<T>(), 2 * d.C, ptr_or_null<T>(dv), d.C, dout.ptr<T>(), probs.ptr<T>(),
                     {qk.ptr<T>(), 2 * d.C, v.ptr<T>(), d.C}, d, &s, ptr_or_null<T>(dalpha), ptr_or_null<T>(dbeta),
                     ptr_or_null<T>(dgamma));
  });
}

void CudaBackend::shaped_attention_forward_cached(const Tensor& out, const Tensor& qk, const Tensor& v,
                                                  const Tensor& kcache, const Tensor& vcache, const Tensor& slot,
                                                  const Tensor& pos, const Tensor& alpha, const Tensor& beta,
                                                  const Tensor& gamma, int n_head) {
  const int64_t M = qk.shape[0], C = qk.shape[1] / 2, n_ctx = kcache.shape[1];
  if (M == 0 || C == 0) return;
  const char* op = "shaped_attention_forward_cached";
  const std::string what = cuda::shapes({{"out", &out},
                                         {"qk", &qk},
                                         {"v", &v},
                                         {"kcache", &kcache},
                                         {"vcache", &vcache},
                                         {"slot", &slot},
                                         {"pos", &pos}}) +
                           ", n_head " + std::to_string(n_head);
  dispatch_float(qk.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* q = qk.ptr<T>();
    cached_rows<T>(*this, op, what, out.ptr<T>(), q, 2 * C, q + C, 2 * C, v.ptr<T>(), C, kcache.ptr<T>(),
                   vcache.ptr<T>(), slot.ptr<int32_t>(), pos.ptr<int32_t>(), M, C, n_ctx, n_head, alpha.ptr<T>(),
                   beta.ptr<T>(), gamma.ptr<T>());
  });
}

}  // namespace mom
