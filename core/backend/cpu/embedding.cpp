// Token + position embedding: out[n] = wte[tokens[n]] + wpe[pos0 + n mod T].
// Backward scatters into wte by token id; to stay deterministic without atomics each thread
// owns a range of columns and walks all rows in order.
#include <algorithm>

#include "core/backend/cpu/cpu_backend.h"
#include "core/error.h"

namespace mom {

void CpuBackend::embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& wte, const Tensor& wpe, int T,
                                   int pos0) {
  const int64_t N = out.shape[0], C = out.shape[1], V = wte.shape[0];
  const int32_t* tok = tokens.ptr<int32_t>();
  for (int64_t n = 0; n < N; ++n)
    if (tok[n] < 0 || tok[n] >= V)
      throw UserError("token id " + std::to_string(tok[n]) + " is outside the vocabulary of " + std::to_string(V) +
                      " entries; was the data prepared with another tokenizer?");
  cpu::dispatch_float(out.dtype, [&](auto zero) {
    using T_ = decltype(zero);
    T_* o = out.ptr<T_>();
    const T_* e = wte.ptr<T_>();
    const T_* p = wpe.ptr<T_>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const T_* er = e + static_cast<int64_t>(tok[n]) * C;
      const T_* pr = p + (pos0 + n % T) * C;
      T_* orow = o + n * C;
      for (int64_t c = 0; c < C; ++c) orow[c] = er[c] + pr[c];
    }
  });
}

void CpuBackend::embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& dout, const Tensor& tokens,
                                    int T, int pos0) {
  const int64_t N = dout.shape[0], C = dout.shape[1];
  const int32_t* tok = tokens.ptr<int32_t>();
  cpu::dispatch_float(dout.dtype, [&](auto zero) {
    using T_ = decltype(zero);
    const T_* d = dout.ptr<T_>();
    T_* dw = dwte.ptr<T_>();
    T_* dp = dwpe.ptr<T_>();
    constexpr int64_t kCols = 32;
    const int64_t col_blocks = (C + kCols - 1) / kCols;
#pragma omp parallel for schedule(static)
    for (int64_t cb = 0; cb < col_blocks; ++cb) {
      const int64_t c0 = cb * kCols, c1 = std::min(C, c0 + kCols);
      for (int64_t n = 0; n < N; ++n) {
        const T_* dr = d + n * C;
        T_* wr = dw + static_cast<int64_t>(tok[n]) * C;
        T_* pr = dp + (pos0 + n % T) * C;
        for (int64_t c = c0; c < c1; ++c) {
          wr[c] += dr[c];
          pr[c] += dr[c];
        }
      }
    }
  });
}

}  // namespace mom
