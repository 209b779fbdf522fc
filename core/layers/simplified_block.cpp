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

SimplifiedBlock::Work SimplifiedBlock::Work::rows(int64_t M) const {
  auto r = [M](const Tensor& t) { return t.empty() ? t : t.rows(0, M); };
  auto nr = [&](const NormStash& n) { return NormStash{r(n.out), r(n.a), r(n.b)}; };
  return {nr(n1), nr(n2), r(qk), r(v), r(vproj), probs, r(fc), r(act), r(a), r(xhat), r(m), r(y)};
}

SimplifiedBlock::Work SimplifiedBlock::carve(Carver& c, int64_t N, int B, int T, bool decoding) const {
  const int64_t C = dims_.C;
  const DType f = P_->dtype();
  auto t = [&](Shape sh) { return c.take(sh, f); };
  Work w;
  w.n1 = norm_stash(norm1_, c, N, C, f);
  if (second_norm_) w.n2 = norm_stash(norm2_, c, N, C, f);
  w.qk = t({N, 2 * C});
  if (!decoding) w.probs = t({B, dims_.n_head, T, T});
  if (first_) w.v = t({N, C}), w.vproj = t({N, C});
  w.fc = t({N, 4 * C}), w.act = t({N, 4 * C});
  w.a = t({N, C}), w.m = t({N, C});
  if (second_norm_) w.xhat = t({N, C});
  if (decoding) w.y = t({N, C});
  return w;
}

void SimplifiedBlock::layout_branches(int B, int T, Carver& saved, Carver& scratch) {
  B_ = B, T_ = T;
  const int64_t N = static_cast<int64_t>(B) * T, C = dims_.C;
  const DType f = P_->dtype();
  train_ = carve(saved, N, B, T, false);
  dqk_ = scratch.take(Shape{N, 2 * C}, f);
  if (first_) dv_ = scratch.take(Shape{N, C}, f);
  dfc_ = scratch.take(Shape{N, 4 * C}, f), dact_ = scratch.take(Shape{N, 4 * C}, f);
}

void SimplifiedBlock::prepare_decode(int sequences, int max_rows, Carver& scratch) {
  dec_ = carve(scratch, max_rows, 0, 0, true);
  if (!scratch.planning()) cache_.allocate(be(), sequences, dims_.n_ctx, dims_.C, P_->dtype());
}

void SimplifiedBlock::decode(const Tensor& x, const DecodeRows& rows) {
  const Work w = dec_.rows(rows.M);
  forward_work(x, w.y, w, &rows);
  be().copy(x, w.y);
}

namespace {
Tensor as_btc(const Tensor& t, int B, int T) { return t.reshaped(Shape{B, T, t.numel() / (int64_t{B} * T)}); }
}  // namespace

void SimplifiedBlock::attention_forward(const Tensor& u, const Tensor& a, const Work& w, const DecodeRows* rows) {
  Backend& b = be();
  const std::string& p = prefix_;
  b.matmul_forward(w.qk, u, P_->joined_param(p + "q_weight", p + "k_weight"),
                   P_->joined_param(p + "q_bias", p + "k_bias"));
  const Tensor* v = &u;
  if (first_) {  // v = α_V·u + β_V·u·W_Vᵀ
    b.matmul_forward(w.vproj, u, param("v_weight"), Tensor{});
    b.zero(w.v);
    b.scaled_accumulate(w.v, u, param("v_alpha"));
    b.scaled_accumulate(w.v, w.vproj, param("v_beta"));
    v = &w.v;
  }
  if (rows)
    b.shaped_attention_forward_cached(a, w.qk, *v, cache_.k, cache_.v, rows->slot, rows->pos, param("attn_alpha"),
                                      param("attn_beta"), param("attn_gamma"), dims_.n_head);
  else
    b.shaped_attention_forward(as_btc(a, B_, T_), w.probs, as_btc(w.qk, B_, T_), as_btc(*v, B_, T_),
                               param("attn_alpha"), param("attn_beta"), param("attn_gamma"), dims_.n_head);
}

void SimplifiedBlock::attention_backward(const Tensor& u, const Tensor& da, const Tensor& du) {
  Backend& b = be();
  const std::string& p = prefix_;
  const Work& w = train_;
  b.zero(dqk_);
  // Identity values: ∂L/∂v is part of ∂L/∂u.
  const Tensor& dv = first_ ? dv_ : du;
  if (first_) b.zero(dv_);
  b.shaped_attention_backward(as_btc(dqk_, B_, T_), as_btc(dv, B_, T_), grad("attn_alpha"), grad("attn_beta"),
                              grad("attn_gamma"), as_btc(da, B_, T_), as_btc(w.qk, B_, T_),
                              as_btc(first_ ? w.v : u, B_, T_), w.probs, param("attn_alpha"), param("attn_beta"),
                              param("attn_gamma"), dims_.n_head);
  b.matmul_backward(du, P_->joined_grad(p + "q_weight", p + "k_weight"), P_->joined_grad(p + "q_bias", p + "k_bias"),
                    dqk_, u, P_->joined_param(p + "q_weight", p + "k_weight"));
  if (first_) {
    b.scaled_accumulate_backward(du, grad("v_alpha"), dv_, u, param("v_alpha"));
    // ∂L/∂(u·W_Vᵀ) = β_V·∂L/∂v, in dqk's first half (free again).
    const Tensor dvproj = dqk_.reshaped(Shape{2, u.shape[0], u.shape[1]})[0];
    b.zero(dvproj);
    b.scaled_accumulate_backward(dvproj, grad("v_beta"), dv_, w.vproj, param("v_beta"));
    b.matmul_backward(du, grad("v_weight"), Tensor{}, dvproj, u, param("v_weight"));
  }
}

void SimplifiedBlock::mlp_forward(const Tensor& in, const Tensor& m, const Work& w) {
  Backend& b = be();
  b.matmul_forward(w.fc, in, param("fc_weight"), Tensor{});
  b.relu_forward(w.act, w.fc);
  b.matmul_forward(m, w.act, param("proj_weight"), Tensor{});
}

void SimplifiedBlock::mlp_backward(const Tensor& in, const Tensor& dm, const Tensor& din) {
  Backend& b = be();
  b.zero(dact_);
  b.zero(dfc_);
  b.matmul_backward(dact_, grad("proj_weight"), Tensor{}, dm, train_.act, param("proj_weight"));
  b.relu_backward(dfc_, train_.fc, dact_);
  b.matmul_backward(din, grad("fc_weight"), Tensor{}, dfc_, in, param("fc_weight"));
}

}  // namespace mom
