// CpuBackend: fp32/fp64 kernels on the host, OpenBLAS for GEMMs and OpenMP for the rest.
//
// Each op's kernels live in the file named after the layer it serves (matmul.cpp,
// layernorm.cpp, attention.cpp, ...), forward and backward side by side, as templates over
// float and double. Reductions that feed results (bias and LayerNorm gradients, embedding
// scatter, norms) are partitioned by columns or by fixed-size blocks, never by thread, so
// results do not depend on the thread count either.
#pragma once
#include <algorithm>

#include "core/backend.h"
#include "core/backend/op_support.h"

namespace mom {

class CpuBackend final : public Backend {
 public:
  CpuBackend();
  Device device() const override { return Device::CPU; }
  std::string name() const override { return "cpu (OpenBLAS + OpenMP)"; }
  void set_num_threads(int n) override;
  int num_threads() const override;

  void* allocate(size_t bytes) override;
  void release(void* p) override;
  void memset_zero(void* p, size_t bytes) override;
  void copy_from_host(const Tensor& dst, const void* src) override;
  void copy_to_host(void* dst, const Tensor& src) override;
  void copy(const Tensor& dst, const Tensor& src) override;

  void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& wte, const Tensor& wpe, int T,
                         int pos0) override;
  void embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& dout, const Tensor& tokens, int T,
                          int pos0) override;
  void matmul_forward(const Tensor& out, const Tensor& inp, const Tensor& weight, const Tensor& bias) override;
  void matmul_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                       const Tensor& inp, const Tensor& weight) override;
  void layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& inp,
                         const Tensor& weight, const Tensor& bias, double eps) override;
  void layernorm_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                          const Tensor& inp, const Tensor& weight, const Tensor& mean, const Tensor& rstd) override;
  void gelu_forward(const Tensor& out, const Tensor& inp) override;
  void gelu_backward(const Tensor& dinp, const Tensor& inp, const Tensor& dout) override;
  void relu_forward(const Tensor& out, const Tensor& inp) override;
  void relu_backward(const Tensor& dinp, const Tensor& inp, const Tensor& dout) override;
  void gru_cell_forward(const Tensor& s_new, const Tensor& gates, const Tensor& gx, const Tensor& gh,
                        const Tensor& s) override;
  void gru_cell_backward(const Tensor& dgx, const Tensor& dgh, const Tensor& ds, const Tensor& ds_new,
                         const Tensor& gates, const Tensor& gh, const Tensor& s) override;
  void attention_forward(const Tensor& out, const Tensor& probs, const Tensor& qkv, int n_head) override;
  void attention_backward(const Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& probs,
                          int n_head) override;
  void attention_forward_cached(const Tensor& out, const Tensor& qkv, const Tensor& kcache, const Tensor& vcache,
                                const Tensor& slot, const Tensor& pos, int n_head) override;
  void shaped_attention_forward_cached(const Tensor& out, const Tensor& qk, const Tensor& v, const Tensor& kcache,
                                       const Tensor& vcache, const Tensor& slot, const Tensor& pos, const Tensor& alpha,
                                       const Tensor& beta, const Tensor& gamma, int n_head) override;
  void rmsnorm_forward(const Tensor& out, const Tensor& rms, const Tensor& inp, const Tensor& weight,
                       double eps) override;
  void rmsnorm_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dout, const Tensor& inp,
                        const Tensor& weight, const Tensor& rms, double eps) override;
  void shaped_attention_forward(const Tensor& out, const Tensor& probs, const Tensor& qk, const Tensor& v,
                                const Tensor& alpha, const Tensor& beta, const Tensor& gamma, int n_head) override;
  void shaped_attention_backward(const Tensor& dqk, const Tensor& dv, const Tensor& dalpha, const Tensor& dbeta,
                                 const Tensor& dgamma, const Tensor& dout, const Tensor& qk, const Tensor& v,
                                 const Tensor& probs, const Tensor& alpha, const Tensor& beta, const Tensor& gamma,
                                 int n_head) override;
  void scaled_accumulate(const Tensor& out, const Tensor& x, const Tensor& gain) override;
  void scaled_accumulate_backward(const Tensor& dx, const Tensor& dgain, const Tensor& dout, const Tensor& x,
                                  const Tensor& gain) override;
  void altup_predict_forward(const Tensor& out, const Tensor& x, const Tensor& p) override;
  void altup_predict_backward(const Tensor& dx, const Tensor& dp, const Tensor& dout, const Tensor& x,
                              const Tensor& p) override;
  void altup_correct_forward(const Tensor& out, const Tensor& pred, const Tensor& y, const Tensor& g,
                             int active) override;
  void altup_correct_backward(const Tensor& dpred, const Tensor& dy, const Tensor& dg, const Tensor& dout,
                              const Tensor& pred, const Tensor& y, const Tensor& g, int active) override;
  void tanh_forward(const Tensor& out, const Tensor& inp) override;
  void tanh_backward(const Tensor& dinp, const Tensor& out, const Tensor& dout) override;
  void clamp_forward(const Tensor& out, const Tensor& inp, double limit) override;
  void clamp_backward(const Tensor& dinp, const Tensor& inp, const Tensor& dout, double limit) override;
  void gather_rows(const Tensor& out, const Tensor& in, const Tensor& rows) override;
  void combine_rows(const Tensor& out, const Tensor& buf, const Tensor& slot, const Tensor& weight) override;
  void combine_rows_backward(const Tensor& dbuf, const Tensor& dweight, const Tensor& dout, const Tensor& buf,
                             const Tensor& slot, const Tensor& weight) override;
  void run_modules(int n, const std::function<void(int)>& body) override;
  void add(const Tensor& out, const Tensor& a, const Tensor& b) override;
  void accumulate(const Tensor& dst, const Tensor& src) override;
  void scale(const Tensor& t, double factor) override;
  void xent_head(const Tensor& losses, const Tensor& dx, const Tensor& dwte, const Tensor& x, const Tensor& wte,
                 const Tensor& targets, double grad_scale, const Tensor& scratch) override;
  void adamw(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, double lr, double beta1,
             double beta2, double eps, double weight_decay, int64_t t) override;
  double sum_squares(const Tensor& t) override;
};

namespace cpu {

using mom::dispatch_float;
using mom::row_elems;

// Runs body(i0, i1) over [0, n) in fixed blocks of kElementBlock elements, the blocks shared
// among the threads. Why fixed blocks: a vectorised loop computes its remainder elements
// with scalar code (and with -ffast-math, scalar exp/tanh differ from the vector ones in the
// last bit), so splitting by thread would make the bits depend on the thread count. With
// blocks a multiple of any vector width, an element's path depends only on its position.
inline constexpr int64_t kElementBlock = 4096;
template <class F>
void parallel_blocks(int64_t n, F&& body) {
  const int64_t blocks = (n + kElementBlock - 1) / kElementBlock;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) body(b * kElementBlock, std::min(n, (b + 1) * kElementBlock));
}

// Σ a·b over [0, n) in double: eight interleaved partial sums (independent chains that GCC
// can vectorise without reassociating), combined in lane order. The order depends on n only.
template <class T>
double dot_double(const T* a, const T* b, int64_t n) {
  constexpr int kLanes = 8;
  double lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] += static_cast<double>(a[i + l]) * static_cast<double>(b[i + l]);
  for (; i < n; ++i) lane[i % kLanes] += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  double s = 0;
  for (int l = 0; l < kLanes; ++l) s += lane[l];
  return s;
}

// Row-major GEMM: C = alpha·op(A)·op(B) + beta·C, op(A) [M,K], op(B) [K,N].
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc);

}  // namespace cpu
}  // namespace mom
