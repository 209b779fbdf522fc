// Token + position embedding on the GPU: out[n] = wte[tokens[n]] + wpe[pos0 + n mod T].
//
// Forward is a gather, one thread per output element (adjacent threads, adjacent columns:
// coalesced). The CPU backend refuses token ids outside the vocabulary with a UserError; here
// the gather clamps its reads (no fault) and a one-block kernel finds the first bad row,
// whose 8 bytes the host reads back once per call (callers upload the tokens with
// copy_from_host just before, which synchronises anyway, so the wait costs little).
//
// Why the backward needs no atomics: each gradient row is the sum of a known set of dout
// rows, so every output element gets one thread that adds that set in n order, starting from
// the gradient's current value: the CPU backend's order of additions exactly.
// - dwpe: the rows with one position are n = j, j + T, j + 2T, ...: one thread per (j, c).
// - dwte: which rows share a token is data, so the host buckets them: the tokens come to the
//   host (copy_to_host synchronises), a counting sort by token id lists each distinct token's
//   rows in n order (CSR), and that goes back up in one copy; then one block per (distinct
//   token, tile of columns) walks its token's rows. The host work is O(N + V) integer
//   operations per step, small beside the step; the dwpe kernel runs meanwhile.
#include <algorithm>
#include <string>
#include <vector>

#include "core/backend/cuda/cuda_common.cuh"
#include "core/error.h"

namespace mom {

namespace {

template <class T>
__global__ void embedding_forward_kernel(T* out, const int32_t* tokens, const T* wte, const T* wpe, int64_t N,
                                         int64_t C, int64_t V, int64_t T_, int64_t pos0) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < N * C;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = i / C, c = i % C;
    const int32_t t = tokens[n];
    const T e = t >= 0 && t < V ? wte[static_cast<int64_t>(t) * C + c] : T(0);  // bad ids are reported by the host
    out[i] = e + wpe[(pos0 + n % T_) * C + c];
  }
}

// first[0] = the smallest n with tokens[n] outside [0, V), or N when there is none. One block.
__global__ void first_bad_token_kernel(int64_t* first, const int32_t* tokens, int64_t N, int64_t V) {
  int64_t bad = N;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x)
    if ((tokens[n] < 0 || tokens[n] >= V) && n < bad) bad = n;
  bad = -cuda::block_max(-bad);
  if (threadIdx.x == 0) first[0] = bad;
}

// dwpe[pos0 + j, c] += Σ_{n ≡ j mod T} dout[n, c], in n order, for j in [0, min(T, N)).
template <class T>
__global__ void position_grad_kernel(T* dwpe, const T* dout, int64_t N, int64_t C, int64_t T_, int64_t pos0) {
  const int64_t P = min(T_, N);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < P * C;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = i / C, c = i % C;
    T* g = dwpe + (pos0 + j) * C + c;
    T acc = *g;
    for (int64_t n = j; n < N; n += T_) acc += dout[n * C + c];
    *g = acc;
  }
}

constexpr int kTokenCols = 128;  // columns per block of the token gradient (its blockDim)

// csr = [uniq U | offsets U+1 | rows N]: distinct token u's rows are rows[offsets[u] ..
// offsets[u+1]), in n order. grid.x: distinct tokens (grid-stride); grid.y: column tiles.
template <class T>
__global__ void token_grad_kernel(T* dwte, const T* dout, const int32_t* csr, int64_t U, int64_t C) {
  const int32_t* uniq = csr;
  const int32_t* offsets = csr + U;
  const int32_t* rows = csr + 2 * U + 1;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kTokenCols + threadIdx.x;
  if (c >= C) return;
  for (int64_t u = blockIdx.x; u < U; u += gridDim.x) {
    T* g = dwte + static_cast<int64_t>(uniq[u]) * C + c;
    T acc = *g;
    for (int32_t k = offsets[u]; k < offsets[u + 1]; ++k) acc += dout[static_cast<int64_t>(rows[k]) * C + c];
    *g = acc;
  }
}

UserError bad_token(int32_t token, int64_t V) {
  return UserError("token id " + std::to_string(token) + " is outside the vocabulary of " + std::to_string(V) +
                   " entries; was the data prepared with another tokenizer?");
}

}  // namespace

void CudaBackend::embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                                    int T, int pos0) {
  const int64_t N = out.shape[0], C = out.shape[1], V = wte.shape[0];
  if (N == 0) return;
  const std::string what =
      cuda::shapes({{"out", &out}, {"tokens", &tokens}, {"wte", &wte}, {"wpe", &wpe}}) + ", T " + std::to_string(T);
  const int32_t* tok = tokens.ptr<int32_t>();
  if (C > 0) {
    dispatch_float(out.dtype, [&](auto zero) {
      using T_ = decltype(zero);
      embedding_forward_kernel<T_><<<cuda::grid_for(N * C), cuda::kThreads, 0, stream_>>>(
          out.ptr<T_>(), tok, wte.ptr<T_>(), wpe.ptr<T_>(), N, C, V, T, pos0);
    });
    MOM_CUDA_CHECK_LAUNCH("embedding_forward", what, stream_);
  }
  cuda::Scratch first(*this, sizeof(int64_t), "embedding_forward");
  first_bad_token_kernel<<<1, 1024, 0, stream_>>>(first.as<int64_t>(), tok, N, V);
  MOM_CUDA_CHECK_LAUNCH("embedding_forward", what, stream_);
  int64_t bad = N;
  MOM_CUDA_CHECK(cudaMemcpyAsync(&bad, first.as<int64_t>(), sizeof bad, cudaMemcpyDeviceToHost, stream_),
                 "embedding_forward", what);
  MOM_CUDA_CHECK(cudaStreamSynchronize(stream_), "embedding_forward", what);
  if (bad < N) {
    int32_t token = 0;
    MOM_CUDA_CHECK(cudaMemcpyAsync(&token, tok + bad, sizeof token, cudaMemcpyDeviceToHost, stream_),
                   "embedding_forward", what);
    MOM_CUDA_CHECK(cudaStreamSynchronize(stream_), "embedding_forward", what);
    throw bad_token(token, V);
  }
}

void CudaBackend::embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& dout, const Tensor& tokens,
                                     int T, int pos0) {
  const int64_t N = dout.shape[0], C = dout.shape[1];
  if (N == 0 || C == 0) return;
  const std::string what = cuda::shapes({{"dwte", &dwte}, {"dwpe", &dwpe}, {"dout", &dout}, {"tokens", &tokens}}) +
                           ", T " + std::to_string(T);
  // The tokens first (this waits for the stream): the position kernel then overlaps the
  // host's bucketing.
  std::vector<int32_t> tok;
  if (!dwte.empty()) {
    tok.resize(static_cast<size_t>(N));
    copy_to_host(tok.data(), tokens);
  }
  dispatch_float(dout.dtype, [&](auto zero) {
    using T_ = decltype(zero);
    if (dwpe.empty()) return;
    const int64_t P = std::min<int64_t>(T, N);
    position_grad_kernel<T_>
        <<<cuda::grid_for(P * C), cuda::kThreads, 0, stream_>>>(dwpe.ptr<T_>(), dout.ptr<T_>(), N, C, T, pos0);
    MOM_CUDA_CHECK_LAUNCH("embedding_backward", what, stream_);
  });
  if (dwte.empty()) return;

  // Counting sort by token id (stable: each token's rows stay in n order).
  const int64_t V = dwte.shape[0];
  std::vector<int32_t> count(static_cast<size_t>(V) + 1, 0);
  for (const int32_t t : tok) {
    if (t < 0 || t >= V) throw bad_token(t, V);
    ++count[static_cast<size_t>(t)];
  }
  int64_t U = 0;
  for (int64_t v = 0; v < V; ++v) U += count[static_cast<size_t>(v)] > 0;
  std::vector<int32_t> csr(static_cast<size_t>(2 * U + 1 + N));
  int32_t* uniq = csr.data();
  int32_t* offsets = uniq + U;
  int32_t* rows = offsets + U + 1;
  std::vector<int32_t> start(static_cast<size_t>(V));  // where token v's next row goes
  int64_t u = 0, at = 0;
  for (int64_t v = 0; v < V; ++v) {
    const int32_t c = count[static_cast<size_t>(v)];
    if (!c) continue;
    uniq[u] = static_cast<int32_t>(v);
    offsets[u] = static_cast<int32_t>(at);
    start[static_cast<size_t>(v)] = static_cast<int32_t>(at);
    at += c;
    ++u;
  }
  offsets[U] = static_cast<int32_t>(at);
  for (int64_t n = 0; n < N; ++n) rows[start[static_cast<size_t>(tok[n])]++] = static_cast<int32_t>(n);

  cuda::Scratch dev_csr(*this, csr.size() * sizeof(int32_t), "embedding_backward");
  MOM_CUDA_CHECK(
      cudaMemcpyAsync(dev_csr.as<int32_t>(), csr.data(), csr.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream_),
      "embedding_backward", what);
  MOM_CUDA_CHECK(cudaStreamSynchronize(stream_), "embedding_backward", what);  // csr may go once copied
  dispatch_float(dout.dtype, [&](auto zero) {
    using T_ = decltype(zero);
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>(U, 65535)),
                    static_cast<unsigned>((C + kTokenCols - 1) / kTokenCols));
    token_grad_kernel<T_>
        <<<grid, kTokenCols, 0, stream_>>>(dwte.ptr<T_>(), dout.ptr<T_>(), dev_csr.as<int32_t>(), U, C);
    MOM_CUDA_CHECK_LAUNCH("embedding_backward", what, stream_);
  });
}

}  // namespace mom
