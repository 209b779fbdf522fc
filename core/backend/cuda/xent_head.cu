// Tied LM head + softmax cross-entropy, fused and chunked, on the GPU: the CPU backend's
// xent_head (core/backend/cpu/xent_head.cpp) step for step.
//
// Why chunked: with V = 50257 the [N,V] logits are the largest activation by far, and only
// (p − onehot) is needed from them. Rows go in chunks of as many as `scratch` holds: logits
// by GEMM into scratch, then one block per row turns its logits into the loss and, for
// training, into g·(p − onehot) in place, then dx and dwte take their share by two GEMMs
// with beta = 1. Chunks run in row order on the one stream, so dwte's accumulation order is
// fixed.
//
// Why one block per row: a row's max and Σexp are block reductions (cuda::block_max /
// block_sum) whose tree depends only on the block size, and each thread walks its columns
// j = tid, tid + blockDim, ... in order, so a row's loss has the same bits run after run (and
// whatever the chunk it fell in). Threads read consecutive columns: coalesced. The target's
// logit is read before any thread overwrites the row (the reductions' barriers order it), as
// the CPU keeps it before exp, which may underflow to 0.
#include <algorithm>
#include <cmath>

#include "core/backend/cuda/cuda_common.cuh"

namespace mom {

namespace {

// Rows [0, R) of s [R, V] (grid-stride over rows): losses[r] = log Σ_j exp(s[r,j] − max) −
// (s[r,t] − max), t = targets[r]; when backward, s[r] ← g·softmax(s[r]) − g·onehot(t).
// A target outside [0, V) (no caller makes one) gives a NaN loss and no one-hot term in the
// gradient instead of an access out of bounds.
template <class T>
__global__ void xent_rows_kernel(T* losses, T* s, const int32_t* targets, int64_t R, int64_t V, T g, bool backward) {
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    T* row = s + r * V;
    const int32_t t = targets[r];
    const bool valid = t >= 0 && t < V;
    const T raw_target = threadIdx.x == 0 && valid ? row[t] : T(0);  // before any write (barriers below)
    T mx = row[0];
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) mx = max(mx, row[j]);
    mx = cuda::block_max(mx);
    T sum = 0;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      const T e = exp(row[j] - mx);
      if (backward) row[j] = e;
      sum += e;
    }
    sum = cuda::block_sum(sum);  // its barriers also keep the next row's reads after this row's writes
    if (threadIdx.x == 0) losses[r] = valid ? log(sum) - (raw_target - mx) : T(NAN);
    if (backward) {
      const T inv = g / sum;
      for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
        T p = row[j] * inv;  // each thread scales the elements it wrote itself
        if (j == t) p -= g;
        row[j] = p;
      }
    }
    __syncthreads();  // the row is done before the block moves on
  }
}

}  // namespace

void CudaBackend::xent_head(const Tensor& losses, const Tensor& dx, const Tensor& dwte, const Tensor& x,
                            const Tensor& wte, const Tensor& targets, double grad_scale, const Tensor& scratch) {
  const int64_t N = x.shape[0], C = x.shape[1], V = wte.shape[0];
  if (N == 0 || V == 0) return;
  const int64_t chunk = std::max<int64_t>(1, scratch.numel() / V);
  const bool backward = !dx.empty();
  const int32_t* tgt = targets.ptr<int32_t>();
  // Block size fixed by V alone (the reduction tree, hence the bits, depend on it).
  const int threads = V >= 8192 ? 1024 : 256;
  dispatch_float(x.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* xp = x.ptr<T>();
    const T* w = wte.ptr<T>();
    T* lo = losses.ptr<T>();
    T* s = scratch.ptr<T>();
    const T g = static_cast<T>(grad_scale);
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int64_t R = std::min(chunk, N - r0);
      // logits[R,V] = x_chunk[R,C]·wteᵀ
      gemm<T>("xent_head", false, true, R, V, C, T(1), xp + r0 * C, C, w, C, T(0), s, V);
      const unsigned grid = static_cast<unsigned>(std::min<int64_t>(R, 65535));
      xent_rows_kernel<T><<<grid, threads, 0, stream_>>>(lo + r0, s, tgt + r0, R, V, g, backward);
      MOM_CUDA_CHECK_LAUNCH("xent_head",
                            cuda::shapes({{"losses", &losses}, {"x", &x}, {"wte", &wte}, {"scratch", &scratch}}) +
                                ", rows " + std::to_string(r0) + ".." + std::to_string(r0 + R),
                            stream_);
      if (backward) {
        // dx_chunk[R,C] += s[R,V]·wte[V,C]
        gemm<T>("xent_head", false, false, R, C, V, T(1), s, V, w, C, T(1), dx.ptr<T>() + r0 * C, C);
        // dwte[V,C] += sᵀ[V,R]·x_chunk[R,C]
        if (!dwte.empty())
          gemm<T>("xent_head", true, false, V, C, R, T(1), s, V, xp + r0 * C, C, T(1), dwte.ptr<T>(), C);
      }
    }
  });
}

}  // namespace mom
