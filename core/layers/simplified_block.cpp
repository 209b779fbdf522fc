#include "core/layers/simplified_block.h"

namespace mom {

SimplifiedBlock::SimplifiedBlock(const SimplifiedConfig& cfg, const ModelDims& dims, const std::string& kind, int index,
                                 bool first, bool second_norm)
    : cfg_(cfg),
      dims_(dims),
      prefix_(kind + "/" + std::to_string(index) + "/"),
      first_(first),
      second_norm_(second_norm),
      norm1_(cfg.rms_norm ? NormKind::Rms
             : first      ? NormKind::Layer
                          : NormKind::None),
      norm2_(second_norm && cfg.rms_norm ? NormKind::Rms : NormKind::None) {}

std::vector<ParamSpec> SimplifiedBlock::param_specs() const {
  const int64_t C = dims_.C, nh = dims_.n_head;
  const std::string& p = prefix_;
  std::vector<ParamSpec> s = norm_param_specs(norm1_, p + "norm1", C);
  // W_q and W_k (and their biases) back to back: the block multiplies by them as one [2C, C]
  // matrix (ParameterStore::joined_param). W_q starts at zero, so q = 0 and A = I at init.
  const std::vector<ParamSpec> attn = {
      {p + "q_weight", Shape{C, C}, true, 0, 0},  {p + "k_weight", Shape{C, C}, true, 0.02, 0},
      {p + "q_bias", Shape{C}, false, 0, 0},      {p + "k_bias", Shape{C}, false, 0, 0},
      {p + "attn_alpha", Shape{nh}, false, 0, 1}, {p + "attn_beta", Shape{nh}, false, 0, 1},
      {p + "attn_gamma", Shape{nh}, false, 0, 1}};
  s.insert(s.end(), attn.begin(), attn.end());
  if (first_) {
    const std::vector<ParamSpec> values = {{p + "v_weight", Shape{C, C}, true, 0, 0},
                                           {p + "v_alpha", Shape{1}, false, 0, 1},
                                           {p + "v_beta", Shape{1}, false, 0, 1}};
    s.insert(s.end(), values.begin(), values.end());
  }
  for (auto& n : norm_param_specs(norm2_, p + "norm2", C)) s.push_back(n);
  const std::vector<ParamSpec> rest = {{p + "fc_weight", Shape{4 * C, C}, true, 0.02, 0},
                                       {p + "proj_weight", Shape{C, 4 * C}, true, 0.02, 0},
                                       {p + "gain_sa", Shape{1}, false, 0, 1},
                                       {p + "gain_ff", Shape{1}, false, 0, cfg_.beta_ff_init}};
  s.insert(s.end(), rest.begin(), rest.end());
  if (second_norm_) s.push_back({p + "skip_ff", Shape{1}, false, 0, 1});
  return s;
}

int64_t SimplifiedBlock::active_parameters() const {
  int64_t n = 0;
  for (const ParamSpec& s : param_specs()) n += s.shape.numel();
  return n;
}

void SimplifiedBlock::layout_branches(int B, int T, Carver& saved, Carver& scratch) {
  B_ = B, T_ = T;
  const int64_t N = static_cast<int64_t>(B) * T, C = dims_.C;
  const DType f = P_->dtype();
  qk_ = saved.take(Shape{N, 2 * C}, f);
  probs_ = saved.take(Shape{B, dims_.n_head, T, T}, f);
  if (first_) v_ = saved.take(Shape{N, C}, f), vproj_ = saved.take(Shape{N, C}, f);
  fc_ = saved.take(Shape{N, 4 * C}, f), act_ = saved.take(Shape{N, 4 * C}, f);
  dqk_ = scratch.take(Shape{N, 2 * C}, f);
  if (first_) dv_ = scratch.take(Shape{N, C}, f);
  dfc_ = scratch.take(Shape{N, 4 * C}, f), dact_ = scratch.take(Shape{N, 4 * C}, f);
}

namespace {
Tensor as_btc(const Tensor& t, int B, int T) { return t.reshaped(Shape{B, T, t.numel() / (int64_t{B} * T)}); }
}  // namespace

void SimplifiedBlock::attention_forward(const Tensor& u, const Tensor& a) {
  Backend& b = be();
  const std::string& p = prefix_;
  b.matmul_forward(qk_, u, P_->joined_param(p + "q_weight", p + "k_weight"),
                   P_->joined_param(p + "q_bias", p + "k_bias"));
  const Tensor* v = &u;
  if (first_) {  // v = α_V·u + β_V·u·W_Vᵀ
    b.matmul_forward(vproj_, u, param("v_weight"), Tensor{});
    b.zero(v_);
    b.scaled_accumulate(v_, u, param("v_alpha"));
    b.scaled_accumulate(v_, vproj_, param("v_beta"));
    v = &v_;
  }
  b.shaped_attention_forward(as_btc(a, B_, T_), probs_, as_btc(qk_, B_, T_), as_btc(*v, B_, T_), param("attn_alpha"),
                             param("attn_beta"), param("attn_gamma"), dims_.n_head);
}

void SimplifiedBlock::attention_backward(const Tensor& u, const Tensor& da, const Tensor& du) {
  Backend& b = be();
  const std::string& p = prefix_;
  b.zero(dqk_);
  // Identity values: ∂L/∂v is part of ∂L/∂u.
  const Tensor& dv = first_ ? dv_ : du;
  if (first_) b.zero(dv_);
  b.shaped_attention_backward(as_btc(dqk_, B_, T_), as_btc(dv, B_, T_), grad("attn_alpha"), grad("attn_beta"),
                              grad("attn_gamma"), as_btc(da, B_, T_), as_btc(qk_, B_, T_),
                              as_btc(first_ ? v_ : u, B_, T_), probs_, param("attn_alpha"), param("attn_beta"),
                              param("attn_gamma"), dims_.n_head);
  b.matmul_backward(du, P_->joined_grad(p + "q_weight", p + "k_weight"), P_->joined_grad(p + "q_bias", p + "k_bias"),
                    dqk_, u, P_->joined_param(p + "q_weight", p + "k_weight"));
  if (first_) {
    b.scaled_accumulate_backward(du, grad("v_alpha"), dv_, u, param("v_alpha"));
    // ∂L/∂(u·W_Vᵀ) = β_V·∂L/∂v, in dqk's first half (free again).
    const Tensor dvproj = dqk_.reshaped(Shape{2, u.shape[0], u.shape[1]})[0];
    b.zero(dvproj);
    b.scaled_accumulate_backward(dvproj, grad("v_beta"), dv_, vproj_, param("v_beta"));
    b.matmul_backward(du, grad("v_weight"), Tensor{}, dvproj, u, param("v_weight"));
  }
}

void SimplifiedBlock::mlp_forward(const Tensor& w, const Tensor& m) {
  Backend& b = be();
  b.matmul_forward(fc_, w, param("fc_weight"), Tensor{});
  b.relu_forward(act_, fc_);
  b.matmul_forward(m, act_, param("proj_weight"), Tensor{});
}

void SimplifiedBlock::mlp_backward(const Tensor& w, const Tensor& dm, const Tensor& dw) {
  Backend& b = be();
  b.zero(dact_);
  b.zero(dfc_);
  b.matmul_backward(dact_, grad("proj_weight"), Tensor{}, dm, act_, param("proj_weight"));
  b.relu_backward(dfc_, fc_, dact_);
  b.matmul_backward(dw, grad("fc_weight"), Tensor{}, dfc_, w, param("fc_weight"));
}

}  // namespace mom
