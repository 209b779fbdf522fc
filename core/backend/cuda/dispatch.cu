// Dispatch on the GPU: gather token rows into per-module blocks, combine module outputs back
// with fixed-order weighted sums, and the combine's backward, with the CPU backend's math
// (core/backend/cpu/dispatch.cpp).
//
// Why a warp per row: the rows are the unit of the index tensors (rows[m], slot[t,k]), so one
// warp reads its index once (a broadcast) and its 32 lanes stride over the row's D elements:
// coalesced loads and stores whatever D is (64..768 here), and no lane sits idle as with a
// block of 256 threads on a 64-wide row. Eight warps per block, grid-stride over the rows.
//
// Why no atomics are needed: every destination element has one writer. gather_rows and
// combine_rows write their own output row (combine_rows sums its K sources for each element
// in k order, starting from the output's old value: the CPU's order, slots < 0 skipped, an
// empty weight read as 1). combine_rows_backward's dbuf scatter is conflict-free because each
// buf row has one source (t, k) (the Backend contract), so the warp that owns (t, k) owns
// dbuf[slot[t,k]]; a plan breaking that contract would race here, as it would on the CPU's
// threads. dweight[t,k] is that warp's dot over D: lane-strided partial sums in double (the
// CPU sums in T, sequentially; double keeps f32 within rounding of the reference), combined
// by a fixed xor-shuffle tree, rounded once and added by lane 0. The bits depend on the sizes
// only.
//
// Zero rows launch nothing (gather_rows with no dispatched rows, combine_rows and its backward
// with no tokens); an empty module pool's combine still runs over the tokens, every slot < 0.
#include "core/backend/cuda/cuda_common.cuh"

namespace mom {

namespace {

constexpr int kWarpsPerBlock = cuda::kThreads / 32;

// The warp's first row and the number of warps in the grid (blockDim.x a multiple of 32).
__device__ inline int64_t first_warp() { return (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5; }
__device__ inline int64_t warps_in_grid() { return static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5); }

template <class T>
__global__ void gather_rows_kernel(T* out, const T* in, const int32_t* rows, int64_t M, int64_t D) {
  const int lane = threadIdx.x & 31;
  for (int64_t m = first_warp(); m < M; m += warps_in_grid()) {
    const T* src = in + static_cast<int64_t>(rows[m]) * D;
    T* dst = out + m * D;
    for (int64_t c = lane; c < D; c += 32) dst[c] = src[c];
  }
}

// out[t] += Σ_k w[t,k]·buf[slot[t,k]] over the k with slot ≥ 0, k ascending.
template <class T>
__global__ void combine_rows_kernel(T* out, const T* buf, const int32_t* slot, const T* w, int64_t N, int64_t K,
                                    int64_t D) {
  const int lane = threadIdx.x & 31;
  for (int64_t t = first_warp(); t < N; t += warps_in_grid()) {
    const int32_t* sl = slot + t * K;
    T* orow = out + t * D;
    for (int64_t c = lane; c < D; c += 32) {
      T o = orow[c];
      for (int64_t k = 0; k < K; ++k) {
        const int32_t s = sl[k];
        if (s < 0) continue;
        const T g = w ? w[t * K + k] : T(1);
        o += g * buf[static_cast<int64_t>(s) * D + c];
      }
      orow[c] = o;
    }
  }
}

// One warp per (t, k) with slot ≥ 0: dbuf[s] += w·dout[t] (dbuf may be null) and
// dweight[t,k] += Σ_c dout[t]·buf[s] (dweight may be null).
template <class T>
__global__ void combine_rows_backward_kernel(T* dbuf, T* dw, const T* dout, const T* buf, const int32_t* slot,
                                             const T* w, int64_t N, int64_t K, int64_t D) {
  const int lane = threadIdx.x & 31;
  const int64_t pairs = N * K;
  for (int64_t q = first_warp(); q < pairs; q += warps_in_grid()) {
    const int32_t s = slot[q];
    if (s < 0) continue;  // the same q for the whole warp: uniform
    const T g = w ? w[q] : T(1);
    const T* drow = dout + (q / K) * D;
    if (dbuf) {
      T* dbrow = dbuf + static_cast<int64_t>(s) * D;
      for (int64_t c = lane; c < D; c += 32) dbrow[c] += g * drow[c];
    }
    if (dw) {
      const T* brow = buf + static_cast<int64_t>(s) * D;
      double acc = 0;
      for (int64_t c = lane; c < D; c += 32) acc += static_cast<double>(drow[c]) * static_cast<double>(brow[c]);
      acc = cuda::warp_sum(acc);
      if (lane == 0) dw[q] += static_cast<T>(acc);
    }
  }
}

}  // namespace

void CudaBackend::gather_rows(const Tensor& out, const Tensor& in, const Tensor& rows) {
  const int64_t M = rows.numel(), D = row_elems(in);
  if (M == 0 || D == 0) return;
  const int32_t* r = rows.ptr<int32_t>();
  dispatch_float(in.dtype, [&](auto zero) {
    using T = decltype(zero);
    gather_rows_kernel<<<cuda::grid_for(M, kWarpsPerBlock), cuda::kThreads, 0, stream_>>>(out.ptr<T>(), in.ptr<T>(), r,
                                                                                          M, D);
  });
  MOM_CUDA_CHECK_LAUNCH("gather_rows", cuda::shapes({{"out", &out}, {"in", &in}, {"rows", &rows}}), stream_);
}

void CudaBackend::combine_rows(const Tensor& out, const Tensor& buf, const Tensor& slot, const Tensor& weight) {
  const int64_t N = slot.shape[0], K = slot.shape[1], D = row_elems(out);
  if (N == 0 || K == 0 || D == 0) return;
  const int32_t* sl = slot.ptr<int32_t>();
  dispatch_float(out.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* w = weight.empty() ? nullptr : weight.ptr<T>();
    combine_rows_kernel<<<cuda::grid_for(N, kWarpsPerBlock), cuda::kThreads, 0, stream_>>>(out.ptr<T>(), buf.ptr<T>(),
                                                                                           sl, w, N, K, D);
  });
  MOM_CUDA_CHECK_LAUNCH("combine_rows",
                        cuda::shapes({{"out", &out}, {"buf", &buf}, {"slot", &slot}, {"weight", &weight}}), stream_);
}

void CudaBackend::combine_rows_backward(const Tensor& dbuf, const Tensor& dweight, const Tensor& dout,
                                        const Tensor& buf, const Tensor& slot, const Tensor& weight) {
  const int64_t N = slot.shape[0], K = slot.shape[1], D = row_elems(dout);
  if (N == 0 || K == 0 || D == 0 || (dbuf.empty() && dweight.empty())) return;
  const int32_t* sl = slot.ptr<int32_t>();
  dispatch_float(dout.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* w = weight.empty() ? nullptr : weight.ptr<T>();
    T* dw = dweight.empty() ? nullptr : dweight.ptr<T>();
    const T* b = dw ? buf.ptr<T>() : nullptr;
    combine_rows_backward_kernel<<<cuda::grid_for(N * K, kWarpsPerBlock), cuda::kThreads, 0, stream_>>>(
        dbuf.empty() ? nullptr : dbuf.ptr<T>(), dw, dout.ptr<T>(), b, sl, w, N, K, D);
  });
  MOM_CUDA_CHECK_LAUNCH("combine_rows_backward",
                        cuda::shapes({{"dbuf", &dbuf},
                                      {"dweight", &dweight},
                                      {"dout", &dout},
                                      {"buf", &buf},
                                      {"slot", &slot},
                                      {"weight", &weight}}),
                        stream_);
}

}  // namespace mom
