// GEMMs for every op that needs one (linear layers, attention's per-head products, the
// tied head): f32 through cuBLASLt, f64 and the strided batches through cuBLAS.
//
// Why cuBLASLt for f32: its bias epilogue folds the linear layer's bias into the GEMM (one
// pass over the output instead of two), and its heuristic is asked once per shape and cached.
// Row-major is mapped onto column-major by computing Cᵀ = op(B)ᵀ·op(A)ᵀ, so no layout
// conversions are needed; the bias then runs along the column-major rows, i.e. along the
// row-major output's columns, as a linear layer wants. Compute is CUBLAS_COMPUTE_32F (TF32
// off) by default: f32 results stay within float rounding of the CPU backend's;
// train.matmul_precision "high" / "medium" lets the f32 GEMMs multiply on TF32 / bf16 tensor
// cores (Backend::MatmulPrecision, part of the cached key).
//
// Why the alignment is part of the cached key: cuBLASLt's heuristic assumes 256-byte aligned
// pointers unless told otherwise, and row views (Tensor::rows) are only element aligned. The
// bias has no alignment preference and its epilogue wants it 16-byte aligned, so a bias that
// is not goes in by a small kernel first (C = beta·C + bias, then the GEMM with beta = 1).
// When cuBLASLt has no algorithm for a shape/alignment, the plan falls back to cublasGemmEx
// (same mapping, bias by the same kernel); the choice is cached with the plan.
#include <map>
#include <mutex>
#include <tuple>

#include "core/backend/cuda/cuda_common.cuh"

namespace mom {

namespace {

// Largest power of two (≤ 256) that divides the address.
uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && (a % al)) al >>= 1;
  return al;
}

using LtKey = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, uint32_t, uint32_t,
                         uint32_t, bool, int>;

// train.matmul_precision: plain f32 (the default: results within float rounding of the CPU's),
// or f32 inputs and outputs multiplied on TF32 or bf16 tensor cores with f32 accumulation.
cublasComputeType_t compute_type(Backend::MatmulPrecision p) {
  switch (p) {
    case Backend::MatmulPrecision::TF32:
      return CUBLAS_COMPUTE_32F_FAST_TF32;
    case Backend::MatmulPrecision::BF16:
      return CUBLAS_COMPUTE_32F_FAST_16BF;
    default:
      return CUBLAS_COMPUTE_32F;
  }
}

struct LtPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool use_gemm_ex = false;  // cuBLASLt found no algorithm: cublasGemmEx instead
};

std::string gemm_what(bool ta, bool tb, int64_t M, int64_t N, int64_t K) {
  return std::string("C[") + std::to_string(M) + ", " + std::to_string(N) + "] = " + (ta ? "Aᵀ" : "A") + "·" +
         (tb ? "Bᵀ" : "B") + " with K = " + std::to_string(K);
}

cublasOperation_t op_of(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

// C = beta·C + bias (bias may be null): the f64 bias, and a product with K = 0 (cuBLASLt
// rejects it; the product is empty). beta = 0 overwrites, whatever C held.
template <class T>
__global__ void beta_plus_bias(T* C, int64_t ldc, const T* bias, int64_t M, int64_t N, T beta) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < M * N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / N, c = i % N;
    C[r * ldc + c] = (beta == T(0) ? T(0) : beta * C[r * ldc + c]) + (bias ? bias[c] : T(0));
  }
}

}  // namespace

template <>
void CudaBackend::gemm<float>(const char* op, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                              const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                              int64_t ldc, const float* bias) {
  if (M == 0 || N == 0) return;
  const auto what = [&] { return gemm_what(trans_a, trans_b, M, N, K); };
  if (K == 0) {
    beta_plus_bias<<<cuda::grid_for(M * N), cuda::kThreads, 0, stream_>>>(C, ldc, bias, M, N, beta);
    MOM_CUDA_CHECK_LAUNCH(op, what(), stream_);
    return;
  }
  // The bias epilogue needs a 16-byte aligned bias; otherwise add it first and accumulate.
  const auto bias_first = [&] {
    beta_plus_bias<<<cuda::grid_for(M * N), cuda::kThreads, 0, stream_>>>(C, ldc, bias, M, N, beta);
    MOM_CUDA_CHECK_LAUNCH(op, what(), stream_);
    bias = nullptr;
    beta = 1.0f;
  };
  if (bias && alignment_of(bias) < 16) bias_first();
  // Column-major view: C'[N, M] = op(B)'[N, K] · op(A)'[K, M] where X' is X read column-major.
  // Row-major A [M,K] (lda) is column-major Aᵀ [K,M] with the same lda, and so on.
  const int64_t m = N, n = M, k = K;
  const bool ta = trans_b, tb = trans_a;  // operand order swaps
  const float *pa = B, *pb = A;
  const int64_t la = ldb, lb = lda;
  const uint32_t al_a = alignment_of(pa), al_b = alignment_of(pb), al_c = alignment_of(C);
  const cublasComputeType_t compute = compute_type(matmul_precision());
  const LtKey key{
      ta, tb, m, n, k, la, lb, ldc, bias != nullptr, al_a, al_b, al_c, beta != 0.0f, static_cast<int>(compute)};

  static std::mutex mutex;
  static std::map<LtKey, LtPlan> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = plans.find(key);
  if (it == plans.end()) {
    LtPlan plan;
    MOM_CUDA_CHECK(cublasLtMatmulDescCreate(&plan.desc, compute, CUDA_R_32F), op, what());
    const cublasOperation_t oa = op_of(ta), ob = op_of(tb);
    MOM_CUDA_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &oa, sizeof oa), op, what());
    MOM_CUDA_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &ob, sizeof ob), op, what());
    if (bias) {
      const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
      MOM_CUDA_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi), op,
                     what());
    }
    // Stored (column-major) shapes: op(X) is [rows, cols]; X itself is transposed when op is T.
    MOM_CUDA_CHECK(cublasLtMatrixLayoutCreate(&plan.a, CUDA_R_32F, ta ? k : m, ta ? m : k, la), op, what());
    MOM_CUDA_CHECK(cublasLtMatrixLayoutCreate(&plan.b, CUDA_R_32F, tb ? n : k, tb ? k : n, lb), op, what());
    MOM_CUDA_CHECK(cublasLtMatrixLayoutCreate(&plan.c, CUDA_R_32F, m, n, ldc), op, what());
    cublasLtMatmulPreference_t pref = nullptr;
    MOM_CUDA_CHECK(cublasLtMatmulPreferenceCreate(&pref), op, what());
    const size_t ws = lt_workspace_bytes_;
    MOM_CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws),
                   op, what());
    MOM_CUDA_CHECK(
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a), op,
        what());
    MOM_CUDA_CHECK(
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b), op,
        what());
    MOM_CUDA_CHECK(
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c), op,
        what());
    MOM_CUDA_CHECK(
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof al_c), op,
        what());
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t s =
        cublasLtMatmulAlgoGetHeuristic(lt_, plan.desc, plan.a, plan.b, plan.c, plan.c, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s == CUBLAS_STATUS_NOT_SUPPORTED || (s == CUBLAS_STATUS_SUCCESS && found == 0)) {
      plan.use_gemm_ex = true;  // no cuBLASLt algorithm for this shape and alignment
    } else {
      MOM_CUDA_CHECK(s, op, what());
      plan.algo = result.algo;
    }
    it = plans.emplace(key, plan).first;
  }
  LtPlan& plan = it->second;
  if (!plan.use_gemm_ex) {
    if (bias)
      MOM_CUDA_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias),
                     op, what());
    const cublasStatus_t st = cublasLtMatmul(lt_, plan.desc, &alpha, pa, plan.a, pb, plan.b, &beta, C, plan.c, C,
                                             plan.c, &plan.algo, lt_workspace_, lt_workspace_bytes_, stream_);
    if (st != CUBLAS_STATUS_NOT_SUPPORTED) {
      MOM_CUDA_CHECK(st, op, what());
      MOM_CUDA_CHECK_LAUNCH(op, what(), stream_);
      return;
    }
    plan.use_gemm_ex = true;  // refused at run time (nothing was launched): cublasGemmEx from now on
  }
  if (bias) bias_first();
  MOM_CUDA_CHECK(
      cublasGemmEx(blas_, op_of(ta), op_of(tb), static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), &alpha,
                   pa, CUDA_R_32F, static_cast<int>(la), pb, CUDA_R_32F, static_cast<int>(lb), &beta, C, CUDA_R_32F,
                   static_cast<int>(ldc), compute, CUBLAS_GEMM_DEFAULT),
      op, what() + " (cublasGemmEx: cuBLASLt has no algorithm for it)");
  MOM_CUDA_CHECK_LAUNCH(op, what(), stream_);
}

template <>
void CudaBackend::gemm<double>(const char* op, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                               double alpha, const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                               double* C, int64_t ldc, const double* bias) {
  if (M == 0 || N == 0) return;
  const auto what = [&] { return gemm_what(trans_a, trans_b, M, N, K); };
  if (bias || K == 0) {  // f64 is for tests: the bias goes in first, then the product accumulates onto it
    beta_plus_bias<<<cuda::grid_for(M * N), cuda::kThreads, 0, stream_>>>(C, ldc, bias, M, N, beta);
    MOM_CUDA_CHECK_LAUNCH(op, what(), stream_);
    if (K == 0) return;
    beta = 1.0;
  }
  MOM_CUDA_CHECK(
      cublasDgemm(blas_, op_of(trans_b), op_of(trans_a), static_cast<int>(N), static_cast<int>(M), static_cast<int>(K),
                  &alpha, B, static_cast<int>(ldb), A, static_cast<int>(lda), &beta, C, static_cast<int>(ldc)),
      op, what());
  MOM_CUDA_CHECK_LAUNCH(op, what(), stream_);
}

template <class T>
void CudaBackend::gemm_strided_batched(const char* op, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                                       T alpha, const T* A, int64_t lda, int64_t stride_a, const T* B, int64_t ldb,
                                       int64_t stride_b, T beta, T* C, int64_t ldc, int64_t stride_c, int64_t batch) {
  if (M == 0 || N == 0 || batch == 0) return;
  const auto what = [&] { return gemm_what(trans_a, trans_b, M, N, K) + ", " + std::to_string(batch) + " matrices"; };
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  cublasStatus_t s;
  if constexpr (std::is_same_v<T, float>)
    s = cublasGemmStridedBatchedEx(blas_, op_of(trans_b), op_of(trans_a), m, n, k, &alpha, B, CUDA_R_32F,
                                   static_cast<int>(ldb), stride_b, A, CUDA_R_32F, static_cast<int>(lda), stride_a,
                                   &beta, C, CUDA_R_32F, static_cast<int>(ldc), stride_c, static_cast<int>(batch),
                                   compute_type(matmul_precision()), CUBLAS_GEMM_DEFAULT);
  else
    s = cublasDgemmStridedBatched(blas_, op_of(trans_b), op_of(trans_a), m, n, k, &alpha, B, static_cast<int>(ldb),
                                  stride_b, A, static_cast<int>(lda), stride_a, &beta, C, static_cast<int>(ldc),
                                  stride_c, static_cast<int>(batch));
  MOM_CUDA_CHECK(s, op, what());
  MOM_CUDA_CHECK_LAUNCH(op, what(), stream_);
}
template void CudaBackend::gemm_strided_batched<float>(const char*, bool, bool, int64_t, int64_t, int64_t, float,
                                                       const float*, int64_t, int64_t, const float*, int64_t, int64_t,
                                                       float, float*, int64_t, int64_t, int64_t);
template void CudaBackend::gemm_strided_batched<double>(const char*, bool, bool, int64_t, int64_t, int64_t, double,
                                                        const double*, int64_t, int64_t, const double*, int64_t,
                                                        int64_t, double, double*, int64_t, int64_t, int64_t);

}  // namespace mom
