// Linear layer: out = inp·Wᵀ + b with W [out, in], on the GPU.
//
// Why GEMMs: both directions are plain GEMMs (CudaBackend::gemm, cuBLASLt in f32 with the
// bias folded into its epilogue; gemm.cu); the backward's two products accumulate with
// beta = 1 (Backend's += contract) and the bias gradient is a deterministic column sum
// (cuda::column_sums), so nothing here needs atomics.
//
// Why a row-wise kernel in batch-invariant mode (Backend::set_batch_invariant): a GEMM picks
// its tiling, split-K and algorithm by shape, so a row's bits change with the number of rows
// beside it. The row-wise kernel fixes each output's arithmetic: out[n][c] is one warp's dot
// product of inp[n] and W[c], lane l summing k = l, l+32, l+64, ... in order, the 32 lane
// sums then combined by the same butterfly of shuffles, and the bias added last. Nothing of
// that depends on N, on which tile the row fell in, or on the grid. A block is 8 warps (8
// output columns) × up to kRows rows: every W element a warp loads serves all the tile's
// rows (each row keeping its own accumulator), and adjacent lanes read adjacent k, so both
// the weight and the input rows are read coalesced. It is meant for decoding's few rows; for
// large N it re-reads W once per kRows rows and is slower than the GEMM.
#include <algorithm>

#include "core/backend/cuda/cuda_common.cuh"

namespace mom {

namespace {

constexpr int kWarpsPerBlock = 8;  // output columns per block
constexpr int kRows = 4;           // rows per block (each with its own accumulators)

// grid.x: tiles of kWarpsPerBlock columns; grid.y: tiles of kRows rows (grid-stride).
template <class T>
__global__ void matmul_rowwise_kernel(T* out, const T* inp, const T* weight, const T* bias, int64_t N, int64_t IC,
                                      int64_t OC) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (c >= OC) return;  // a whole warp leaves together: the shuffles below stay full-warp
  const T* w = weight + c * IC;
  const int64_t row_tiles = (N + kRows - 1) / kRows;
  for (int64_t rt = blockIdx.y; rt < row_tiles; rt += gridDim.y) {
    const int64_t n0 = rt * kRows;
    const int rows = static_cast<int>(min(static_cast<int64_t>(kRows), N - n0));
    const T* x = inp + n0 * IC;
    T acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = T(0);
    for (int64_t k = lane; k < IC; k += 32) {
      const T wk = w[k];
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        if (r < rows) acc[r] = fma(x[r * IC + k], wk, acc[r]);
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      T s = acc[r];
      s = cuda::warp_sum(s);
      if (lane == 0 && r < rows) out[(n0 + r) * OC + c] = bias ? s + bias[c] : s;
    }
  }
}

}  // namespace

void CudaBackend::matmul_forward(const Tensor& out, const Tensor& inp, const Tensor& weight, const Tensor& bias) {
  const int64_t IC = inp.shape[inp.shape.rank - 1], OC = weight.shape[0];
  const int64_t N = IC ? inp.numel() / IC : out.numel() / (OC ? OC : 1);
  if (N == 0 || OC == 0) return;
  dispatch_float(out.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* b = bias.empty() ? nullptr : bias.ptr<T>();
    if (!batch_invariant())
      return gemm<T>("matmul_forward", false, true, N, OC, IC, T(1), inp.ptr<T>(), IC, weight.ptr<T>(), IC, T(0),
                     out.ptr<T>(), OC, b);
    const int64_t col_tiles = (OC + kWarpsPerBlock - 1) / kWarpsPerBlock;
    const int64_t row_tiles = (N + kRows - 1) / kRows;
    const dim3 grid(static_cast<unsigned>(col_tiles), static_cast<unsigned>(std::min<int64_t>(row_tiles, 65535)));
    matmul_rowwise_kernel<T>
        <<<grid, kWarpsPerBlock * 32, 0, stream_>>>(out.ptr<T>(), inp.ptr<T>(), weight.ptr<T>(), b, N, IC, OC);
    MOM_CUDA_CHECK_LAUNCH("matmul_forward",
                          cuda::shapes({{"out", &out}, {"inp", &inp}, {"weight", &weight}, {"bias", &bias}}) +
                              " (batch-invariant row-wise kernel)",
                          stream_);
  });
}

void CudaBackend::matmul_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                                  const Tensor& inp, const Tensor& weight) {
  const int64_t IC = inp.shape[inp.shape.rank - 1], OC = weight.shape[0];
  const int64_t N = OC ? dout.numel() / OC : 0;
  if (N == 0) return;  // every gradient gains Σ over no rows: nothing
  dispatch_float(dout.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* d = dout.ptr<T>();
    // dinp[N,IC] += dout[N,OC]·W[OC,IC]
    if (!dinp.empty())
      gemm<T>("matmul_backward", false, false, N, IC, OC, T(1), d, OC, weight.ptr<T>(), IC, T(1), dinp.ptr<T>(), IC);
    // dweight[OC,IC] += doutᵀ[OC,N]·inp[N,IC]
    if (!dweight.empty())
      gemm<T>("matmul_backward", true, false, OC, IC, N, T(1), d, OC, inp.ptr<T>(), IC, T(1), dweight.ptr<T>(), IC);
    // dbias[OC] += Σ_n dout[n]
    if (!dbias.empty()) cuda::column_sums<T>(*this, "matmul_backward", dbias.ptr<T>(), d, N, OC, true);
  });
}

}  // namespace mom
