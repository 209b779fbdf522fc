// Dispatch: gather token rows into per-module blocks, and combine module outputs back with
// fixed-order weighted sums. Every loop is parallel over destination rows, and each
// destination row is written by one thread in a fixed order, so there are no atomics and
// the bits do not depend on the thread count.
#include <omp.h>

#include "core/backend/cpu/cpu_backend.h"

namespace mom {

void CpuBackend::gather_rows(const Tensor& out, const Tensor& in, const Tensor& rows) {
  const int64_t M = rows.numel(), D = cpu::row_elems(in);
  const int32_t* r = rows.ptr<int32_t>();
  cpu::dispatch_float(in.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* src = in.ptr<T>();
    T* dst = out.ptr<T>();
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      const T* s = src + static_cast<int64_t>(r[m]) * D;
      T* d = dst + m * D;
      for (int64_t c = 0; c < D; ++c) d[c] = s[c];
    }
  });
}

void CpuBackend::combine_rows(const Tensor& out, const Tensor& buf, const Tensor& slot, const Tensor& weight) {
  const int64_t N = slot.shape[0], K = slot.shape[1], D = cpu::row_elems(out);
  const int32_t* sl = slot.ptr<int32_t>();
  cpu::dispatch_float(out.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* b = buf.ptr<T>();
    const T* w = weight.empty() ? nullptr : weight.ptr<T>();
    T* o = out.ptr<T>();
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < N; ++t)
      for (int64_t k = 0; k < K; ++k) {
        const int32_t s = sl[t * K + k];
        if (s < 0) continue;
        const T g = w ? w[t * K + k] : T(1);
        const T* row = b + static_cast<int64_t>(s) * D;
        T* orow = o + t * D;
        for (int64_t c = 0; c < D; ++c) orow[c] += g * row[c];
      }
  });
}

void CpuBackend::combine_rows_backward(const Tensor& dbuf, const Tensor& dweight, const Tensor& dout, const Tensor& buf,
                                       const Tensor& slot, const Tensor& weight) {
  const int64_t N = slot.shape[0], K = slot.shape[1], D = cpu::row_elems(dout);
  const int32_t* sl = slot.ptr<int32_t>();
  cpu::dispatch_float(dout.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* d = dout.ptr<T>();
    const T* b = buf.ptr<T>();
    const T* w = weight.empty() ? nullptr : weight.ptr<T>();
    T* db = dbuf.ptr<T>();
    T* dw = dweight.empty() ? nullptr : dweight.ptr<T>();
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < N; ++t)
      for (int64_t k = 0; k < K; ++k) {
        const int32_t s = sl[t * K + k];
        if (s < 0) continue;
        const T g = w ? w[t * K + k] : T(1);
        const T* drow = d + t * D;
        T* dbrow = db + static_cast<int64_t>(s) * D;
        T acc = 0;
        const T* brow = b + static_cast<int64_t>(s) * D;
        for (int64_t c = 0; c < D; ++c) {
          dbrow[c] += g * drow[c];
          acc += drow[c] * brow[c];
        }
        if (dw) dw[t * K + k] += acc;
      }
  });
}

// Inside the parallel loop every op's own OpenMP loop and OpenBLAS run single-threaded
// (nested parallelism is off), so each module is one thread's whole job. The modules write
// disjoint rows and parameters, so the bits do not depend on the schedule.
void CpuBackend::run_modules(int n, const std::function<void(int)>& body) {
  if (n <= 1 || omp_get_max_threads() == 1) {
    for (int j = 0; j < n; ++j) body(j);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (int j = 0; j < n; ++j) body(j);
}

}  // namespace mom
