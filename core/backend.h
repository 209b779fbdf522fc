// Backend: the one interface between the math of the layers and the hardware.
//
// Why this split: the layers, the model, the optimizer (and later the router and the
// dispatcher) are written once against this interface; a backend (CPU: OpenBLAS + OpenMP,
// CUDA: cuBLASLt + kernels) implements each op for its device. Ops are at the granularity of
// llm.c's kernels (matmul, layernorm, attention, ...), coarse enough that each backend can
// fuse and schedule as it likes, fine enough that a new layer rarely needs a new op.
//
// Conventions, shared by every backend:
// - Row-major. Linear weights are [out, in] (y = x·Wᵀ + b), as in PyTorch's nn.Linear.
// - Backward ops ACCUMULATE (+=) into every gradient they write, parameter or activation;
//   the caller zeroes gradient buffers when a step starts. This makes residual branches and
//   gradient accumulation free.
// - Deterministic: no atomics in reductions; the same inputs and thread count give the
//   same bits.
// - Every op accepts F32 and F64 tensors (F64 is for finite-difference tests); token ids are I32.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "core/tensor.h"

namespace mom {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;
  // Per-thread state: OpenMP's thread count (CPU), the current device (CUDA) are properties of
  // the calling thread, so a thread that runs ops calls this before its first op (the serving
  // engine's worker does). n <= 0: every core, or OMP_NUM_THREADS.
  virtual void set_num_threads(int n) = 0;
  virtual int num_threads() const = 0;

  // ---- memory
  virtual void* allocate(size_t bytes) = 0;
  virtual void release(void* p) = 0;
  virtual void memset_zero(void* p, size_t bytes) = 0;
  void zero(const Tensor& t) { memset_zero(t.data, t.bytes()); }
  virtual void copy_from_host(const Tensor& dst, const void* src) = 0;
  virtual void copy_to_host(void* dst, const Tensor& src) = 0;
  virtual void copy(const Tensor& dst, const Tensor& src) = 0;  // same device
  virtual void synchronize() {}

  // ---- embedding: out[N,C] = wte[tokens[n]] + wpe[positions[n]], positions = n mod T + pos0
  virtual void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& wte, const Tensor& wpe, int T,
                                 int pos0) = 0;
  virtual void embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& dout, const Tensor& tokens,
                                  int T, int pos0) = 0;

  // ---- batch invariance. Decoding batches the steps of many sequences, and a sequence's
  // text must not depend on which others share its steps. While on, matmul_forward computes
  // every output row by the same arithmetic whatever the number of rows and threads (a
  // row-wise kernel, slower than a GEMM for large batches); every other op decoding uses is
  // row-local already. BatchInvariant (below) is the guard.
  void set_batch_invariant(bool on) { batch_invariant_ = on; }
  bool batch_invariant() const { return batch_invariant_; }

  // ---- what f32 GEMMs may compute in (train.matmul_precision): F32 (the default, and all the
  // CPU backend has), TF32 or BF16 tensor cores with f32 accumulation. Inputs and outputs
  // stay f32 tensors; only the GEMM's internal multiplies round to the narrower type.
  enum class MatmulPrecision { F32, TF32, BF16 };
  void set_matmul_precision(MatmulPrecision p) { matmul_precision_ = p; }
  MatmulPrecision matmul_precision() const { return matmul_precision_; }

  // ---- linear: out[N,OC] = inp[N,IC]·weight[OC,IC]ᵀ + bias[OC] (bias may be empty)
  virtual void matmul_forward(const Tensor& out, const Tensor& inp, const Tensor& weight, const Tensor& bias) = 0;
  // dinp += dout·W, dweight += doutᵀ·inp, dbias += Σ_n dout (dinp/dweight/dbias may be empty)
  virtual void matmul_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                               const Tensor& inp, const Tensor& weight) = 0;

  // ---- layernorm over the last axis; mean and rstd [N] are saved for backward
  virtual void layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& inp,
                                 const Tensor& weight, const Tensor& bias, double eps) = 0;
  // dinp, dweight, dbias (+=): any may be empty.
  virtual void layernorm_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias, const Tensor& dout,
                                  const Tensor& inp, const Tensor& weight, const Tensor& mean, const Tensor& rstd) = 0;

  // ---- GELU, tanh form
  virtual void gelu_forward(const Tensor& out, const Tensor& inp) = 0;
  virtual void gelu_backward(const Tensor& dinp, const Tensor& inp, const Tensor& dout) = 0;

  // ---- router networks (router/router_net.h)
  // ReLU: out = max(inp, 0); backward dinp += dout where inp > 0.
  virtual void relu_forward(const Tensor& out, const Tensor& inp) = 0;
  virtual void relu_backward(const Tensor& dinp, const Tensor& inp, const Tensor& dout) = 0;
  // GRU cell (MODELS.md §2) on precomputed projections gx = x·Wxᵀ + bx and gh = s·Whᵀ + bh,
  // both [N,3r] as (r | z | n) blocks: r = σ(gx_r + gh_r), z = σ(gx_z + gh_z),
  // n = tanh(gx_n + r⊙gh_n), s_new = n + z⊙(s − n). gates [N,3r] saves (r | z | n) for backward.
  virtual void gru_cell_forward(const Tensor& s_new, const Tensor& gates, const Tensor& gx, const Tensor& gh,
                                const Tensor& s) = 0;
  // dgx, dgh, ds (+=) from ds_new; needs the forward's gates, gh and s.
  virtual void gru_cell_backward(const Tensor& dgx, const Tensor& dgh, const Tensor& ds, const Tensor& ds_new,
                                 const Tensor& gates, const Tensor& gh, const Tensor& s) = 0;

  // ---- causal multi-head self-attention.
  // qkv [B,T,3C] (q | k | v, heads contiguous inside each), out [B,T,C], probs [B,nh,T,T]
  // (softmax saved for backward). Backward CONSUMES probs: it overwrites them with the
  // softmax's input gradient, which saves a scratch buffer as large as probs.
  virtual void attention_forward(const Tensor& out, const Tensor& probs, const Tensor& qkv, int n_head) = 0;
  virtual void attention_backward(const Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& probs,
                                  int n_head) = 0;

  // KV-cached attention for decoding several sequences at once. Row m of qkv [M,3C] is a
  // token of sequence slot[m] at position pos[m] (slot, pos: I32 [M]); every row's k and v
  // are written into kcache/vcache [S, n_ctx, C] at [slot[m], pos[m]], then each row attends
  // causally over its own sequence's cache rows 0..pos[m]. out [M,C]. A row's result must not
  // depend on the other rows of the step (serving's batch invariance).
  virtual void attention_forward_cached(const Tensor& out, const Tensor& qkv, const Tensor& kcache,
                                        const Tensor& vcache, const Tensor& slot, const Tensor& pos, int n_head) = 0;

  // ---- simplified blocks (MODELS.md §4)
  // RMSNorm over the last axis: out = w ⊙ x / (rms(x) + eps), rms(x) = sqrt(mean(x²)); the eps
  // is added outside the root, as the SAS code does. rms [N] is saved for backward.
  virtual void rmsnorm_forward(const Tensor& out, const Tensor& rms, const Tensor& inp, const Tensor& weight,
                               double eps) = 0;
  virtual void rmsnorm_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dout, const Tensor& inp,
                                const Tensor& weight, const Tensor& rms, double eps) = 0;
  // Shaped attention, per head h: A_h = β_h·softmax(q·kᵀ/sqrt(hd) + mask) + α_h·I − γ_h·C, with C
  // the uniform causal matrix (C[i][j] = 1/(i+1) for j ≤ i), and out_h = A_h·v_h. qk [B,T,2C]
  // (q | k, heads contiguous inside each), v and out [B,T,C], alpha/beta/gamma [nh], probs
  // [B,nh,T,T] (the softmax, saved). With q = 0 the softmax is C itself and, at α = β = γ = 1,
  // out = v exactly (the sub-block returns its values).
  virtual void shaped_attention_forward(const Tensor& out, const Tensor& probs, const Tensor& qk, const Tensor& v,
                                        const Tensor& alpha, const Tensor& beta, const Tensor& gamma, int n_head) = 0;
  // dqk [B,T,2C], dv [B,T,C], dalpha/dbeta/dgamma [nh], all +=. Consumes probs, like
  // attention_backward.
  virtual void shaped_attention_backward(const Tensor& dqk, const Tensor& dv, const Tensor& dalpha, const Tensor& dbeta,
                                         const Tensor& dgamma, const Tensor& dout, const Tensor& qk, const Tensor& v,
                                         const Tensor& probs, const Tensor& alpha, const Tensor& beta,
                                         const Tensor& gamma, int n_head) = 0;
  // The cached form of shaped attention, rows as attention_forward_cached's: qk [M,2C], v
  // [M,C] (cached as the keys and values), out_i = β·Σ_j P_ij·v_j + α·v_i − γ·mean_{j≤i} v_j.
  virtual void shaped_attention_forward_cached(const Tensor& out, const Tensor& qk, const Tensor& v,
                                               const Tensor& kcache, const Tensor& vcache, const Tensor& slot,
                                               const Tensor& pos, const Tensor& alpha, const Tensor& beta,
                                               const Tensor& gamma, int n_head) = 0;
  // Scalar gains (SAS's β_SA, α_FF, β_FF; block 0's α_V, β_V): out += g·x, g a one-element tensor.
  virtual void scaled_accumulate(const Tensor& out, const Tensor& x, const Tensor& gain) = 0;
  // dx += g·dout and dgain += Σ dout ⊙ x (either may be empty).
  virtual void scaled_accumulate_backward(const Tensor& dx, const Tensor& dgain, const Tensor& dout, const Tensor& x,
                                          const Tensor& gain) = 0;

  // ---- Alternating Updates (MODELS.md §5) over a stream of K blocks, x [K, N, C].
  // predict: out[i] = Σ_j p[i][j]·x[j], p [K,K] (static) or [N,K,K] (per token, Gemma 3n's).
  virtual void altup_predict_forward(const Tensor& out, const Tensor& x, const Tensor& p) = 0;
  // dx[j] += Σ_i p[i][j]·dout[i]; dp[i][j] += Σ_c dout[i]·x[j] (summed over tokens when p is
  // static). dx or dp may be empty.
  virtual void altup_predict_backward(const Tensor& dx, const Tensor& dp, const Tensor& dout, const Tensor& x,
                                      const Tensor& p) = 0;
  // correct: out[i] = (pred[i] − g_i·pred[a]) + g_i·y, with y [N,C] the layer's output, a the
  // active block, g [K] or [N,K]. Evaluated in this order so that K = 1 with g = 1 gives y
  // exactly.
  virtual void altup_correct_forward(const Tensor& out, const Tensor& pred, const Tensor& y, const Tensor& g,
                                     int active) = 0;
  // dpred[i] += dout[i] and dpred[a] −= Σ_i g_i·dout[i]; dy += Σ_i g_i·dout[i];
  // dg_i += Σ_c dout[i]·(y − pred[a]) (summed over tokens when g is static). Any may be empty.
  virtual void altup_correct_backward(const Tensor& dpred, const Tensor& dy, const Tensor& dg, const Tensor& dout,
                                      const Tensor& pred, const Tensor& y, const Tensor& g, int active) = 0;
  // Gemma 3n's coefficient router: tanh (backward from the saved output: dinp += (1 − out²)·dout)
  // and a clamp of its coefficient weights (backward passes dout where |inp| ≤ limit).
  virtual void tanh_forward(const Tensor& out, const Tensor& inp) = 0;
  virtual void tanh_backward(const Tensor& dinp, const Tensor& out, const Tensor& dout) = 0;
  virtual void clamp_forward(const Tensor& out, const Tensor& inp, double limit) = 0;
  virtual void clamp_backward(const Tensor& dinp, const Tensor& inp, const Tensor& dout, double limit) = 0;

  // ---- dispatch: moving token rows to their modules and back (router/dispatch_plan.h)
  // out[m] = in[rows[m]] for the M dispatched rows (rows: I32 [M]).
  virtual void gather_rows(const Tensor& out, const Tensor& in, const Tensor& rows) = 0;
  // out[t] += Σ_k weight[t,k]·buf[slot[t,k]] over the k with slot ≥ 0, in k order (a fixed
  // order: deterministic without atomics). slot: I32 [N,K]; weight [N,K] or empty (all 1).
  // With empty weight this is also the backward of gather_rows.
  virtual void combine_rows(const Tensor& out, const Tensor& buf, const Tensor& slot, const Tensor& weight) = 0;
  // Backward of combine_rows: dbuf[slot[t,k]] += weight[t,k]·dout[t] (every row of buf has one
  // source, so this is a scatter without conflicts) and dweight[t,k] += dout[t]·buf[slot[t,k]]
  // (dweight may be empty).
  virtual void combine_rows_backward(const Tensor& dbuf, const Tensor& dweight, const Tensor& dout, const Tensor& buf,
                                     const Tensor& slot, const Tensor& weight) = 0;

  // Runs body(j) for the modules j = 0..n-1 of a pool, whose work touches disjoint rows and
  // parameters. The CPU backend runs modules side by side, one thread each (a grouped GEMM:
  // many small GEMMs gain more from running whole than from being split across threads); a
  // GPU backend may use streams. The default is a plain loop. The serving engine also hands it
  // independent host work, one task per row (sampling).
  virtual void run_modules(int n, const std::function<void(int)>& body) {
    for (int j = 0; j < n; ++j) body(j);
  }

  // ---- elementwise
  virtual void add(const Tensor& out, const Tensor& a, const Tensor& b) = 0;  // out = a + b
  virtual void accumulate(const Tensor& dst, const Tensor& src) = 0;          // dst += src
  virtual void scale(const Tensor& t, double factor) = 0;                     // t *= factor

  // ---- tied head with softmax cross-entropy, fused and chunked so that the [N,V] logits
  // never exist at once. losses[n] = -log softmax(x[n]·wteᵀ)[targets[n]].
  // When dx/dwte are given, also dx += g·(p - onehot)·wte and dwte += (g·(p - onehot))ᵀ·x
  // with g = grad_scale (the caller's 1/(tokens·accumulation steps)).
  // scratch: [rows, V], rows ≥ 1; it bounds the chunk size.
  virtual void xent_head(const Tensor& losses, const Tensor& dx, const Tensor& dwte, const Tensor& x, const Tensor& wte,
                         const Tensor& targets, double grad_scale, const Tensor& scratch) = 0;

  // ---- optimizer and norms
  // AdamW with decoupled weight decay; t is the 1-based step for bias correction.
  virtual void adamw(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, double lr, double beta1,
                     double beta2, double eps, double weight_decay, int64_t t) = 0;
  // Σ t², accumulated in double in a fixed order.
  virtual double sum_squares(const Tensor& t) = 0;

 private:
  bool batch_invariant_ = false;
  MatmulPrecision matmul_precision_ = MatmulPrecision::F32;
};

// Batch-invariant kernels for the life of the guard (Backend::set_batch_invariant).
class BatchInvariant {
 public:
  explicit BatchInvariant(Backend& be) : be_(be), was_(be.batch_invariant()) { be.set_batch_invariant(true); }
  ~BatchInvariant() { be_.set_batch_invariant(was_); }
  BatchInvariant(const BatchInvariant&) = delete;
  BatchInvariant& operator=(const BatchInvariant&) = delete;

 private:
  Backend& be_;
  bool was_;
};

// The backend for a device ("cpu", "cuda"); throws UserError when that device is unavailable.
Backend& backend_for(Device d);
Device parse_device(const std::string& name);
// "highest" | "high" | "medium" (train.matmul_precision) -> F32 | TF32 | BF16.
Backend::MatmulPrecision parse_matmul_precision(const std::string& name);

}  // namespace mom
