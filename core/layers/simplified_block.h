// The simplified transformer blocks of He & Hofmann (MODELS.md §4): SAS (sequential) and SAS-P
// (parallel), both without value and output projections (but in a run's first block) and
// without skip connections, built on shaped attention.
//
//   SAS:   x̂ = β_SA·SA(N1(x)),  y = α_FF·x̂ + β_FF·MLP(N2(x̂))
//   SAS-P: y = β_SA·SA(N1(x)) + β_FF·MLP(N1(x))
//   SA(u): A_h = β_h·softmax(q·kᵀ/sqrt(hd)) + α_h·I − γ_h·C per head, out = A·v, with q, k
//          projections of u (W_q zero at init, so A = I), v = u, or in the run's first block
//          v = α_V·u + β_V·u·W_Vᵀ; MLP(w) = ReLU(w·W_fcᵀ)·W_projᵀ without biases.
//
// Why a base class: the two kinds share every sub-layer (norm, shaped attention, ReLU MLP)
// and their parameters; they differ only in how the branches are wired, which is all that
// sas_block.cpp and sas_p_block.cpp hold. Parameters live under "sas/<i>/" and "sas_p/<i>/", i
// counting the blocks of that kind through the stack (docs/checkpoint-format.md).
#pragma once
#include <string>

#include "core/layers/block.h"
#include "core/layers/norm.h"

namespace mom {

struct SimplifiedConfig {
  bool rms_norm = true;       // norm "rms"; false: "none" (a LayerNorm as N1 in a run's first block)
  double beta_ff_init = 0.1;  // β_FF at init
};

class SimplifiedBlock : public Block {
 public:
  std::string name() const override { return prefix_; }
  std::vector<ParamSpec> param_specs() const override;
  void bind(const ParameterStore& params) override { P_ = &params; }
  int64_t active_parameters() const override;
  int attention_layers() const override { return 1; }
  void forward(const Tensor& x_in, const Tensor& x_out) override { forward_work(x_in, x_out, train_, nullptr); }
  void prepare_decode(int sequences, int max_rows, Carver& scratch) override;
  void decode(const Tensor& x, const DecodeRows& rows) override;

 protected:
  // `kind` "sas" or "sas_p"; `index` the block's number among that kind; `first`: the first
  // block of its stack entry (value projection; the LayerNorm when the norm is none).
  SimplifiedBlock(const SimplifiedConfig& cfg, const ModelDims& dims, const std::string& kind, int index, bool first,
                  bool second_norm);

  // One forward's tensors: training's (kept for backward) or a decoding step's (probs, and
  // n2 and xhat for SAS-P, left empty where nothing needs them).
  struct Work {
    NormStash n1, n2;
    Tensor qk, v, vproj, probs;  // attention (v, vproj: first block only; probs: training)
    Tensor fc, act;              // MLP
    Tensor a, xhat, m, y;        // SA's output, β_SA·a (SAS), the MLP's output, decoding's result
    Work rows(int64_t M) const;  // the first M rows of each
  };
  // A Work for N tokens: training (B·T rows, probs [B, nh, T, T]) or decoding (N = max rows).
  Work carve(Carver& c, int64_t N, int B, int T, bool decoding) const;
  // The kind's wiring of the branches (sas_block.cpp, sas_p_block.cpp): y from x.
  virtual void forward_work(const Tensor& x, const Tensor& y, const Work& w, const DecodeRows* rows) = 0;

  Tensor param(const char* name) const { return P_->param(prefix_ + name); }
  Tensor grad(const char* name) const { return P_->grad(prefix_ + name); }
  NormKind norm1_kind() const { return norm1_; }
  NormKind norm2_kind() const { return norm2_; }
  NormWeights norm_w(const char* which, NormKind k, bool grads) const {
    return norm_weights(k, *P_, prefix_ + which, grads);
  }
  Backend& be() const { return P_->backend(); }

  // The training tensors of both kinds and the branches' backward scratch for B·T tokens.
  void layout_branches(int B, int T, Carver& saved, Carver& scratch);
  // a = SA(u) over the rows of `w`: the whole causal sequence (rows null: training) or each
  // row against its sequence's cache (decoding). Backward (training): du += ∂L/∂u from da.
  void attention_forward(const Tensor& u, const Tensor& a, const Work& w, const DecodeRows* rows);
  void attention_backward(const Tensor& u, const Tensor& da, const Tensor& du);
  // m = MLP(in); backward: din += ∂L/∂in from dm.
  void mlp_forward(const Tensor& in, const Tensor& m, const Work& w);
  void mlp_backward(const Tensor& in, const Tensor& dm, const Tensor& din);

  SimplifiedConfig cfg_;
  ModelDims dims_;
  std::string prefix_;
  bool first_, second_norm_;
  NormKind norm1_, norm2_;
  const ParameterStore* P_ = nullptr;
  int B_ = 0, T_ = 0;
  Work train_, dec_;
  KvCache cache_;  // decoding: the keys and the values (u, or the first block's mixed values)

 private:
  Tensor dqk_, dv_, dfc_, dact_;  // backward scratch of the branches
};

// SAS: the sequential block (norms N1 and N2).
class SasBlock final : public SimplifiedBlock {
 public:
  SasBlock(const SimplifiedConfig& cfg, const ModelDims& dims, int index, bool first);
  void layout(int B, int T, Carver& saved, Carver& scratch) override;
  void backward(const Tensor& x_in, const Tensor& dres, double loss_scale) override;

 private:
  void forward_work(const Tensor& x, const Tensor& y, const Work& w, const DecodeRows* rows) override;
  Tensor dm_, dxhat_, dw_, da_, du_;  // scratch
};

// SAS-P: the parallel block (one norm, both branches read it).
class SasPBlock final : public SimplifiedBlock {
 public:
  SasPBlock(const SimplifiedConfig& cfg, const ModelDims& dims, int index, bool first);
  void layout(int B, int T, Carver& saved, Carver& scratch) override;
  void backward(const Tensor& x_in, const Tensor& dres, double loss_scale) override;

 private:
  void forward_work(const Tensor& x, const Tensor& y, const Work& w, const DecodeRows* rows) override;
  Tensor da_, dm_, du_;  // scratch
};

}  // namespace mom
