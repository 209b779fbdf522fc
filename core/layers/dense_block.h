// DenseBlock: GPT-2's pre-LN block (MODELS.md §1), h = x + Attn(LN1(x)), y = h + MLP(LN2(h)).
//
// Why its parameters are rows of stacked tensors: every dense block of a model shares
// blocks/* with a leading layer axis ("blocks/attn_qkv_weight" is [L, 3C, C]), the layout of
// llm.c and of our checkpoints since the first release; a block uses its row, index_.
// The sub-layers (core/layers/attention_sublayer.h, mlp_sublayer.h) are shared with MoM's
// modules, which are exactly their parameters.
#pragma once
#include "core/layers/attention_sublayer.h"
#include "core/layers/block.h"
#include "core/layers/mlp_sublayer.h"

namespace mom {

class DenseBlock final : public Block {
 public:
  // `index`: this block's row in blocks/* (its place among the model's dense blocks).
  DenseBlock(const ModelDims& dims, int index);
  std::string name() const override { return "blocks/" + std::to_string(index_); }
  std::vector<ParamSpec> param_specs() const override;
  void bind(const ParameterStore& params) override { P_ = &params; }
  void layout(int B, int T, Carver& saved, Carver& scratch) override;
  void forward(const Tensor& x_in, const Tensor& x_out) override;
  void backward(const Tensor& x_in, const Tensor& dres, double loss_scale) override;
  int64_t active_parameters() const override;
  int attention_layers() const override { return 1; }
  void prepare_decode(int sequences, int max_rows, Carver& scratch) override;
  void decode(const Tensor& x, const DecodeRows& rows) override;

 private:
  AttentionWeights attn_weights(bool grads) const;
  MlpWeights mlp_weights(bool grads) const;

  ModelDims dims_;
  int index_;
  const ParameterStore* P_ = nullptr;
  int B_ = 0, T_ = 0;
  AttentionStash attn_;
  MlpStash mlp_;
  Tensor resid_mid_;  // x + attn, kept for the MLP's backward
  AttentionScratch attn_scratch_;
  MlpScratch mlp_scratch_;
  Tensor branch_;         // a sub-layer's output before the residual add (scratch)
  KvCache cache_;         // decoding
  AttentionStash dattn_;  // decoding temporaries (probs unused)
  MlpStash dmlp_;
  Tensor dbranch_;
};

}  // namespace mom
