// SAS, the sequential simplified block: x̂ = β_SA·SA(N1(x)), y = α_FF·x̂ + β_FF·MLP(N2(x̂)).
// No skip around the attention (shaped attention starts as the identity), and the MLP's skip
// is the trainable α_FF. Shared pieces: simplified_block.cpp.
#include "core/layers/simplified_block.h"

namespace mom {

SasBlock::SasBlock(const SimplifiedConfig& cfg, const ModelDims& dims, int index, bool first)
    : SimplifiedBlock(cfg, dims, "sas", index, first, /*second_norm=*/true) {}

void SasBlock::layout(int B, int T, Carver& saved, Carver& scratch) {
  const int64_t N = static_cast<int64_t>(B) * T, C = dims_.C;
  layout_branches(B, T, saved, scratch);
  for (Tensor* t : {&dm_, &dxhat_, &dw_, &da_, &du_}) *t = scratch.take(Shape{N, C}, P_->dtype());
}

void SasBlock::forward_work(const Tensor& x, const Tensor& y, const Work& w, const DecodeRows* rows) {
  Backend& b = be();
  norm_forward(b, norm1_kind(), norm_w("norm1", norm1_kind(), false), w.n1, x, dims_.eps);
  attention_forward(norm_output(norm1_kind(), w.n1, x), w.a, w, rows);
  b.zero(w.xhat);
  b.scaled_accumulate(w.xhat, w.a, param("gain_sa"));
  norm_forward(b, norm2_kind(), norm_w("norm2", norm2_kind(), false), w.n2, w.xhat, dims_.eps);
  mlp_forward(norm_output(norm2_kind(), w.n2, w.xhat), w.m, w);
  b.zero(y);
  b.scaled_accumulate(y, w.xhat, param("skip_ff"));
  b.scaled_accumulate(y, w.m, param("gain_ff"));
}

// No skip reaches x: dres is rebuilt from the attention branch alone.
void SasBlock::backward(const Tensor& x, const Tensor& dres, double) {
  Backend& b = be();
  const Work& w = train_;
  b.zero(dm_);
  b.scaled_accumulate_backward(dm_, grad("gain_ff"), dres, w.m, param("gain_ff"));
  b.zero(dxhat_);
  b.scaled_accumulate_backward(dxhat_, grad("skip_ff"), dres, w.xhat, param("skip_ff"));
  b.zero(dw_);
  mlp_backward(norm_output(norm2_kind(), w.n2, w.xhat), dm_, dw_);
  norm_backward(b, norm2_kind(), norm_w("norm2", norm2_kind(), false), norm_w("norm2", norm2_kind(), true), w.n2,
                w.xhat, dw_, dxhat_, dims_.eps);
  b.zero(da_);
  b.scaled_accumulate_backward(da_, grad("gain_sa"), dxhat_, w.a, param("gain_sa"));
  b.zero(du_);
  attention_backward(norm_output(norm1_kind(), w.n1, x), da_, du_);
  b.zero(dres);
  norm_backward(b, norm1_kind(), norm_w("norm1", norm1_kind(), false), norm_w("norm1", norm1_kind(), true), w.n1, x,
                du_, dres, dims_.eps);
}

}  // namespace mom
