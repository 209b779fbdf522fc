// Linear layer: out = inp·Wᵀ + b with W [out, in]. Both directions are GEMMs (forward in
// batch-invariant mode: a row-wise kernel, below); the bias gradient is a column sum
// partitioned by columns (deterministic at any thread count).
#include <algorithm>

#include "core/backend/cpu/cpu_backend.h"

namespace mom {

namespace {

constexpr int kLanes = 16;        // one AVX-512 register of floats
constexpr int64_t kRowGroup = 4;  // rows sharing each weight load

// Batch-invariant linear (Backend::set_batch_invariant): out[n][c] = dot(inp[n], W[c]) + b[c],
// every dot as kLanes interleaved partial sums over the input axis, combined in lane order.
// Rows go in groups that share each loaded weight row, but each row has its own lanes, and
// columns are split over threads in fixed blocks: a row's bits depend on that row alone.
template <class T, int R>
void rowwise_group(T* o, const T* x, const T* w, const T* b, int64_t IC, int64_t OC, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; ++c) {
    const T* wc = w + c * IC;
    T lane[R][kLanes] = {};
    int64_t k = 0;
    for (; k + kLanes <= IC; k += kLanes)
      for (int r = 0; r < R; ++r)
        for (int l = 0; l < kLanes; ++l) lane[r][l] += x[r * IC + k + l] * wc[k + l];
    for (; k < IC; ++k)
      for (int r = 0; r < R; ++r) lane[r][k % kLanes] += x[r * IC + k] * wc[k];
    for (int r = 0; r < R; ++r) {
      T sum = 0;
      for (int l = 0; l < kLanes; ++l) sum += lane[r][l];
      o[r * OC + c] = b ? sum + b[c] : sum;
    }
  }
}

template <class T>
void matmul_rowwise(T* o, const T* x, const T* w, const T* b, int64_t N, int64_t IC, int64_t OC) {
  constexpr int64_t kCols = 32;
  const int64_t blocks = (OC + kCols - 1) / kCols;
#pragma omp parallel for schedule(static)
  for (int64_t cb = 0; cb < blocks; ++cb) {
    const int64_t c0 = cb * kCols, c1 = std::min(OC, c0 + kCols);
    int64_t n = 0;
    for (; n + kRowGroup <= N; n += kRowGroup)
      rowwise_group<T, kRowGroup>(o + n * OC, x + n * IC, w, b, IC, OC, c0, c1);
    for (; n < N; ++n) rowwise_group<T, 1>(o + n * OC, x + n * IC, w, b, IC, OC, c0, c1);
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
      return matmul_rowwise<T>(o, inp.ptr<T>(), weight.ptr<T>(), bias.empty() ? nullptr : bias.ptr<T>(), N, IC, OC);
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
