// Linear layer: out = inp·Wᵀ + b with W [out, in]. Both directions are GEMMs (forward in
// batch-invariant mode: a row-wise kernel, below); the bias gradient is a column sum
// partitioned by columns (deterministic at any thread count).
#include <algorithm>

#include "core/backend/cpu/cpu_backend.h"

namespace mom {

namespace {

// Batch-invariant linear (Backend::set_batch_invariant): out[n][c] = dot(inp[n], W[c]) + b[c],
// each dot as kLanes interleaved partial sums over the input axis (one vector register,
// GCC's vector extension, so it compiles to whatever the CPU has), the lanes then combined in
// order. Tiles of 4 rows × 4 columns share their loads, but every (row, column) keeps its own
// accumulator, and columns are split over threads in fixed blocks: a row's bits depend on
// that row alone, whatever the other rows and the thread count.
constexpr int kLanes = 16;
typedef float v16f __attribute__((vector_size(kLanes * sizeof(float))));

inline v16f load16(const float* p) {
  v16f v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

typedef float v8f __attribute__((vector_size(8 * sizeof(float))));
typedef float v4f __attribute__((vector_size(4 * sizeof(float))));

// The lanes combined by halving (8 + 8, 4 + 4, then pairs): a fixed order, the same for every
// row, in a few vector adds instead of 16 scalar ones (with IC = 256 a dot is only 16 vector
// steps, so the combine would otherwise cost as much as the dot).
inline float finish_dot(v16f acc, const float* x, const float* w, int64_t k, int64_t IC) {
  if (k < IC) {  // an input width that is not a multiple of the lanes
    float lane[kLanes];
    __builtin_memcpy(lane, &acc, sizeof lane);
    for (; k < IC; ++k) lane[k % kLanes] += x[k] * w[k];
    __builtin_memcpy(&acc, lane, sizeof lane);
  }
  const v8f h8 = __builtin_shufflevector(acc, acc, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(acc, acc, 8, 9, 10, 11, 12, 13, 14, 15);
  const v4f h4 = __builtin_shufflevector(h8, h8, 0, 1, 2, 3) + __builtin_shufflevector(h8, h8, 4, 5, 6, 7);
  return (h4[0] + h4[2]) + (h4[1] + h4[3]);
}

// R rows × CC columns of out, from column c.
template <int R, int CC>
void tile(float* o, const float* x, const float* w, const float* b, int64_t IC, int64_t OC, int64_t c) {
  v16f acc[R][CC] = {};
  int64_t k = 0;
  for (; k + kLanes <= IC; k += kLanes) {
    v16f xv[R], wv[CC];
    for (int r = 0; r < R; ++r) xv[r] = load16(x + r * IC + k);
    for (int j = 0; j < CC; ++j) wv[j] = load16(w + (c + j) * IC + k);
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < CC; ++j) acc[r][j] += xv[r] * wv[j];
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < CC; ++j) {
      const float sum = finish_dot(acc[r][j], x + r * IC, w + (c + j) * IC, k, IC);
      o[r * OC + c + j] = b ? sum + b[c + j] : sum;
    }
}

template <int R, int CC>
void rows_block(float* o, const float* x, const float* w, const float* b, int64_t IC, int64_t OC, int64_t c0,
                int64_t c1) {
  int64_t c = c0;
  for (; c + CC <= c1; c += CC) tile<R, CC>(o, x, w, b, IC, OC, c);
  for (; c < c1; ++c) tile<R, 1>(o, x, w, b, IC, OC, c);
}

void matmul_rowwise(float* o, const float* x, const float* w, const float* b, int64_t N, int64_t IC, int64_t OC) {
  constexpr int64_t kCols = 32;
  const int64_t blocks = (OC + kCols - 1) / kCols;
#pragma omp parallel for schedule(static)
  for (int64_t cb = 0; cb < blocks; ++cb) {
    const int64_t c0 = cb * kCols, c1 = std::min(OC, c0 + kCols);
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) rows_block<4, 4>(o + n * OC, x + n * IC, w, b, IC, OC, c0, c1);
    // The last 1-3 rows as one tile too (a routed module's few rows are often all there is):
    // each weight load then serves every row. Tile height changes no row's arithmetic.
    if (N - n == 3) rows_block<3, 4>(o + n * OC, x + n * IC, w, b, IC, OC, c0, c1);
    if (N - n == 2) rows_block<2, 4>(o + n * OC, x + n * IC, w, b, IC, OC, c0, c1);
    if (N - n == 1) rows_block<1, 4>(o + n * OC, x + n * IC, w, b, IC, OC, c0, c1);
  }
}

// f64 (finite-difference tests): the same contract with plain loops.
void matmul_rowwise(double* o, const double* x, const double* w, const double* b, int64_t N, int64_t IC, int64_t OC) {
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < OC; ++c)
    for (int64_t n = 0; n < N; ++n) {
      double sum = 0;
      for (int64_t k = 0; k < IC; ++k) sum += x[n * IC + k] * w[c * IC + k];
      o[n * OC + c] = b ? sum + b[c] : sum;
    }
}

}  // namespace

void CpuBackend::matmul_forward(const Tensor& out, const Tensor& inp, const Tensor& weight, const Tensor& bias) {
  const int64_t N = inp.numel() / inp.shape[inp.shape.rank - 1];
  const int64_t IC = inp.shape[inp.shape.rank - 1], OC = weight.shape[0];
  cpu::dispatch_float(out.dtype, [&](auto zero) {
    using T = decltype(zero);
    T* o = out.ptr<T>();
    if (batch_invariant())
      return matmul_rowwise(o, inp.ptr<T>(), weight.ptr<T>(), bias.empty() ? nullptr : bias.ptr<T>(), N, IC, OC);
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
