// CpuBackend: memory, threads, GEMM and the small elementwise ops. The layer kernels are in
// the files named after their layers.
#include "core/backend/cpu/cpu_backend.h"

#include <cblas.h>
#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

#include "core/error.h"

namespace mom {

CpuBackend::CpuBackend() = default;

void CpuBackend::set_num_threads(int n) {
  if (n <= 0) {
    // 0: OMP_NUM_THREADS when the launcher or the user set it, else every core.
    const char* env = std::getenv("OMP_NUM_THREADS");
    n = env && std::atoi(env) > 0 ? std::atoi(env) : omp_get_num_procs();
  }
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int CpuBackend::num_threads() const { return omp_get_max_threads(); }

void* CpuBackend::allocate(size_t bytes) {
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (!p) throw std::bad_alloc();
  return p;
}

void CpuBackend::release(void* p) { std::free(p); }

void CpuBackend::memset_zero(void* p, size_t bytes) { std::memset(p, 0, bytes); }

void CpuBackend::copy_from_host(const Tensor& dst, const void* src) { std::memcpy(dst.data, src, dst.bytes()); }

void CpuBackend::copy_to_host(void* dst, const Tensor& src) { std::memcpy(dst, src.data, src.bytes()); }

void CpuBackend::copy(const Tensor& dst, const Tensor& src) {
  if (dst.bytes() != src.bytes()) throw std::logic_error("copy: sizes differ");
  std::memcpy(dst.data, src.data, src.bytes());
}

void CpuBackend::add(const Tensor& out, const Tensor& a, const Tensor& b) {
  cpu::dispatch_float(out.dtype, [&](auto zero) {
    using T = decltype(zero);
    T* o = out.ptr<T>();
    const T* x = a.ptr<T>();
    const T* y = b.ptr<T>();
    const int64_t n = out.numel();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) o[i] = x[i] + y[i];
  });
}

void CpuBackend::accumulate(const Tensor& dst, const Tensor& src) {
  cpu::dispatch_float(dst.dtype, [&](auto zero) {
    using T = decltype(zero);
    T* d = dst.ptr<T>();
    const T* s = src.ptr<T>();
    const int64_t n = dst.numel();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) d[i] += s[i];
  });
}

void CpuBackend::scale(const Tensor& t, double factor) {
  cpu::dispatch_float(t.dtype, [&](auto zero) {
    using T = decltype(zero);
    T* d = t.ptr<T>();
    const T f = static_cast<T>(factor);
    const int64_t n = t.numel();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) d[i] *= f;
  });
}

double CpuBackend::sum_squares(const Tensor& t) {
  // Fixed 8192-element blocks summed in block order: the result is independent of threads.
  constexpr int64_t kBlock = 8192;
  double total = 0.0;
  cpu::dispatch_float(t.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* d = t.ptr<T>();
    const int64_t n = t.numel();
    const int64_t blocks = (n + kBlock - 1) / kBlock;
    std::vector<double> partial(static_cast<size_t>(blocks));
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      double s = 0.0;
      const int64_t end = std::min(n, (b + 1) * kBlock);
      for (int64_t i = b * kBlock; i < end; ++i) s += static_cast<double>(d[i]) * static_cast<double>(d[i]);
      partial[static_cast<size_t>(b)] = s;
    }
    for (double s : partial) total += s;
  });
  return total;
}

namespace cpu {

template <>
void gemm<float>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(M), static_cast<blasint>(N), static_cast<blasint>(K), alpha, A,
              static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}

template <>
void gemm<double>(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                  int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(M), static_cast<blasint>(N), static_cast<blasint>(K), alpha, A,
              static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}

}  // namespace cpu
}  // namespace mom
