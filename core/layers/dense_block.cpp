#include "core/layers/dense_block.h"

namespace mom {

DenseBlock::DenseBlock(const ModelDims& dims, int index) : dims_(dims), index_(index) {}

std::vector<ParamSpec> DenseBlock::param_specs() const {
  const int64_t C = dims_.C;
  const double std_ = 0.02, resid = dims_.resid_std;
  auto row = [](std::string name, Shape s, bool decay, double init_std, double init_value) {
    // One layer's row: the stacked tensor is [L, ...s].
    Shape stacked{1};
    for (int d = 0; d < s.rank; ++d) stacked.dim[d + 1] = s[d];
    stacked.rank = s.rank + 1;
    return ParamSpec{"blocks/" + name, stacked, decay, init_std, init_value, false, true};
  };
  return {row("ln1_weight", {C}, false, 0, 1),
          row("ln1_bias", {C}, false, 0, 0),
          row("attn_qkv_weight", {3 * C, C}, true, std_, 0),
          row("attn_qkv_bias", {3 * C}, false, 0, 0),
          row("attn_proj_weight", {C, C}, true, resid, 0),
          row("attn_proj_bias", {C}, false, 0, 0),
          row("ln2_weight", {C}, false, 0, 1),
          row("ln2_bias", {C}, false, 0, 0),
          row("mlp_fc_weight", {4 * C, C}, true, std_, 0),
          row("mlp_fc_bias", {4 * C}, false, 0, 0),
          row("mlp_proj_weight", {C, 4 * C}, true, resid, 0),
          row("mlp_proj_bias", {C}, false, 0, 0)};
}

int64_t DenseBlock::active_parameters() const {
  const int64_t C = dims_.C;
  return 12 * C * C + 13 * C;
}

AttentionWeights DenseBlock::attn_weights(bool grads) const {
  auto get = [&](const char* name) { return grads ? P_->grad(name)[index_] : P_->param(name)[index_]; };
  return {get("blocks/ln1_weight"),    get("blocks/ln1_bias"),         get("blocks/attn_qkv_weight"),
          get("blocks/attn_qkv_bias"), get("blocks/attn_proj_weight"), get("blocks/attn_proj_bias")};
}

MlpWeights DenseBlock::mlp_weights(bool grads) const {
  auto get = [&](const char* name) { return grads ? P_->grad(name)[index_] : P_->param(name)[index_]; };
  return {get("blocks/ln2_weight"),  get("blocks/ln2_bias"),        get("blocks/mlp_fc_weight"),
          get("blocks/mlp_fc_bias"), get("blocks/mlp_proj_weight"), get("blocks/mlp_proj_bias")};
}

void DenseBlock::layout(int B, int T, Carver& saved, Carver& scratch) {
  B_ = B, T_ = T;
  const int64_t N = static_cast<int64_t>(B) * T, C = dims_.C;
  const DType f = P_->dtype();
  const Shape NC{N, C}, N1{N}, N3C{N, 3 * C}, N4C{N, 4 * C};
  auto s = [&](Shape sh) { return saved.take(sh, f); };
  attn_ = {s(NC), s(N1), s(N1), s(N3C), s(NC), s(Shape{B, dims_.n_head, T, T})};
  resid_mid_ = s(NC);
  mlp_ = {s(NC), s(N1), s(N1), s(N4C), s(N4C)};
  auto t = [&](Shape sh) { return scratch.take(sh, f); };
  branch_ = t(NC);
  const Tensor dln = t(NC);
  attn_scratch_ = {dln, t(N3C), t(NC)};
  mlp_scratch_ = {dln, t(N4C), t(N4C)};
}

void DenseBlock::forward(const Tensor& x, const Tensor& out) {
  Backend& be = P_->backend();
  attention_sublayer_forward(be, attn_weights(false), attn_, x, branch_, {B_, T_, dims_.n_head, dims_.eps});
  be.add(resid_mid_, x, branch_);
  mlp_sublayer_forward(be, mlp_weights(false), mlp_, resid_mid_, branch_, dims_.eps);
  be.add(out, resid_mid_, branch_);
}

// dres carries ∂L/∂(residual stream) downwards: each sub-layer adds its branch's contribution
// to it in place (the residual's identity path is the value already there).
void DenseBlock::backward(const Tensor& x, const Tensor& dres, double) {
  Backend& be = P_->backend();
  mlp_sublayer_backward(be, mlp_weights(false), mlp_weights(true), mlp_, mlp_scratch_, resid_mid_, dres, dres);
  attention_sublayer_backward(be, attn_weights(false), attn_weights(true), attn_, attn_scratch_, x, dres, dres,
                              {B_, T_, dims_.n_head, dims_.eps});
}

void DenseBlock::prepare_decode(int sequences, int max_rows, Carver& scratch) {
  const int64_t R = max_rows, C = dims_.C;
  const DType f = P_->dtype();
  auto t = [&](Shape sh) { return scratch.take(sh, f); };
  dattn_ = {t({R, C}), t({R}), t({R}), t({R, 3 * C}), t({R, C}), Tensor{}};
  dmlp_ = {dattn_.ln, dattn_.ln_mean, dattn_.ln_rstd, t({R, 4 * C}), t({R, 4 * C})};
  dbranch_ = t({R, C});
  if (!scratch.planning()) cache_.allocate(P_->backend(), sequences, dims_.n_ctx, dims_.C, f);
}

void DenseBlock::decode(const Tensor& x, const DecodeRows& r) {
  Backend& be = P_->backend();
  const int64_t M = r.M;
  auto rows = [M](const Tensor& t) { return t.rows(0, M); };
  const AttentionWeights aw = attn_weights(false);
  be.layernorm_forward(rows(dattn_.ln), rows(dattn_.ln_mean), rows(dattn_.ln_rstd), x, aw.ln_w, aw.ln_b, dims_.eps);
  be.matmul_forward(rows(dattn_.qkv), rows(dattn_.ln), aw.qkv_w, aw.qkv_b);
  be.attention_forward_cached(rows(dattn_.atty), rows(dattn_.qkv), cache_.k, cache_.v, r.slot, r.pos, dims_.n_head);
  be.matmul_forward(rows(dbranch_), rows(dattn_.atty), aw.proj_w, aw.proj_b);
  be.accumulate(x, rows(dbranch_));
  const MlpStash ms{rows(dmlp_.ln), rows(dmlp_.ln_mean), rows(dmlp_.ln_rstd), rows(dmlp_.fc), rows(dmlp_.gelu)};
  mlp_sublayer_forward(be, mlp_weights(false), ms, x, rows(dbranch_), dims_.eps);
  be.accumulate(x, rows(dbranch_));
}

}  // namespace mom
