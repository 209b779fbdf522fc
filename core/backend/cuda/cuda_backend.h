// CudaBackend: the Backend ops on one NVIDIA GPU, in f32 and f64, on one stream.
//
// Each op family lives in the .cu file named after the layer it serves (matmul.cu,
// layernorm.cu, attention.cu, ...), forward beside backward, like the CPU backend. GEMMs go
// through cuBLASLt (f32 with its bias epilogue; TF32 is off so that f32 results stay within
// float rounding of the CPU's) and the rest are our kernels.
//
// Why one stream: every op is ordered after the previous one without events, and
// copy_to_host's synchronisation is the only place the host waits. The one exception is
// run_modules: a pool's modules touch disjoint rows and parameters, so each runs on one of a
// few side streams (its "lane": stream, cuBLAS handle and cuBLASLt workspace of its own, so
// that concurrent GEMMs never share a workspace), forked from and joined back into the main
// stream with events. Small per-module GEMMs then overlap instead of queueing.
// MOM_CUDA_POOL_STREAMS sets the lanes (default 4; 0 or 1: the plain loop, to measure against). Determinism: no kernel
// feeding a result uses atomics; reductions run in a fixed tree whose shape depends on the
// sizes only (cuda_common.cuh), so the same inputs give the same bits run after run.
//
// Which GPU: MOM_CUDA_DEVICE when set, else the launcher's local rank modulo the visible
// devices (parallel/launch_env.h), so that ranks on one node spread over its GPUs.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "core/backend.h"

namespace mom {

class CudaBackend final : public Backend {
 public:
  // Throws UserError when no CUDA device is usable (no driver, none visible, a bad index).
  CudaBackend();
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  Device device() const override { return Device::CUDA; }
  std::string name() const override;
  // Host threads are not used by the kernels; the count is kept for callers that ask. Makes
  // this backend's GPU the calling thread's current device (CUDA's is per thread).
  void set_num_threads(int n) override;
  int num_threads() const override { return threads_; }
  int device_index() const { return device_; }
  cudaStream_t stream() const { return stream_; }

  void* allocate(size_t bytes) override;
  void release(void* p) override;
  void memset_zero(void* p, size_t bytes) override;
  void copy_from_host(const Tensor& dst, const void* src) override;
  void copy_to_host(void* dst, const Tensor& src) override;
  void copy(const Tensor& dst, const Tensor& src) override;
  void synchronize() override;
  void run_modules(int n, const std::function<void(int)>& body) override;

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
  void add(const Tensor& out, const Tensor& a, const Tensor& b) override;
  void accumulate(const Tensor& dst, const Tensor& src) override;
  void scale(const Tensor& t, double factor) override;
  void xent_head(const Tensor& losses, const Tensor& dx, const Tensor& dwte, const Tensor& x, const Tensor& wte,
                 const Tensor& targets, double grad_scale, const Tensor& scratch) override;
  void adamw(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, double lr, double beta1,
             double beta2, double eps, double weight_decay, int64_t t) override;
  double sum_squares(const Tensor& t) override;

  // Row-major GEMM on this backend's stream, the CPU backend's cpu::gemm contract:
  // C = alpha·op(A)·op(B) + beta·C with op(A) [M,K], op(B) [K,N]; bias [N] (may be null) is
  // added to every row of C (f32: by cuBLASLt's epilogue when it is 16-byte aligned, else by a
  // kernel before the product). T = float or double. `op` names the Backend op for error
  // messages.
  template <class T>
  void gemm(const char* op, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
            int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc, const T* bias = nullptr);
  // The same GEMM for `batch` matrices at fixed strides (elements) apart (attention's heads).
  template <class T>
  void gemm_strided_batched(const char* op, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
                            const T* A, int64_t lda, int64_t stride_a, const T* B, int64_t ldb, int64_t stride_b,
                            T beta, T* C, int64_t ldc, int64_t stride_c, int64_t batch);

 private:
  // What an op runs on: a stream, the cuBLAS handle bound to it and a cuBLASLt workspace.
  struct Lane {
    cudaStream_t stream = nullptr;
    cublasHandle_t blas = nullptr;
    void* workspace = nullptr;
    cudaEvent_t done = nullptr;  // side lanes: recorded when their modules are queued
  };
  Lane make_lane(bool side) const;
  static void destroy_lane(Lane& lane);
  void use_lane(const Lane& lane);

  int device_ = 0;
  int threads_ = 1;
  cublasLtHandle_t lt_ = nullptr;
  size_t lt_workspace_bytes_ = 0;
  Lane main_;                // the backend's own stream
  std::vector<Lane> sides_;  // run_modules' side streams, made on first use
  int side_count_ = 4;
  cudaEvent_t fork_ = nullptr;
  // The lane ops run on now (main_'s, or a side lane's inside run_modules).
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  void* lt_workspace_ = nullptr;
};

}  // namespace mom
