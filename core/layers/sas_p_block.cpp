// SAS-P, the parallel simplified block: y = β_SA·SA(N1(x)) + β_FF·MLP(N1(x)). One norm feeds
// both branches and nothing skips them. Shared pieces: simplified_block.cpp.
#include "core/layers/simplified_block.h"

namespace mom {

SasPBlock::SasPBlock(const SimplifiedConfig& cfg, const ModelDims& dims, int index, bool first)
    : SimplifiedBlock(cfg, dims, "sas_p", index, first, /*second_norm=*/false) {}

void SasPBlock::layout(int B, int T, Carver& saved, Carver& scratch) {
  const int64_t N = static_cast<int64_t>(B) * T, C = dims_.C;
  layout_branches(B, T, saved, scratch);
  for (Tensor* t : {&da_, &dm_, &du_}) *t = scratch.take(Shape{N, C}, P_->dtype());
}

void SasPBlock::forward_work(const Tensor& x, const Tensor& y, const Work& w, const DecodeRows* rows) {
  Backend& b = be();
  norm_forward(b, norm1_kind(), norm_w("norm1", norm1_kind(), false), w.n1, x, dims_.eps);
  const Tensor& u = norm_output(norm1_kind(), w.n1, x);
  attention_forward(u, w.a, w, rows);
  mlp_forward(u, w.m, w);
  b.zero(y);
  b.scaled_accumulate(y, w.a, param("gain_sa"));
  b.scaled_accumulate(y, w.m, param("gain_ff"));
}

void SasPBlock::backward(const Tensor& x, const Tensor& dres, double) {
  Backend& b = be();
  const Work& w = train_;
  b.zero(da_);
  b.scaled_accumulate_backward(da_, grad("gain_sa"), dres, w.a, param("gain_sa"));
  b.zero(dm_);
  b.scaled_accumulate_backward(dm_, grad("gain_ff"), dres, w.m, param("gain_ff"));
  const Tensor& u = norm_output(norm1_kind(), w.n1, x);
  b.zero(du_);
  attention_backward(u, da_, du_);
  mlp_backward(u, dm_, du_);
  b.zero(dres);
  norm_backward(b, norm1_kind(), norm_w("norm1", norm1_kind(), false), norm_w("norm1", norm1_kind(), true), w.n1, x,
                du_, dres, dims_.eps);
}

}  // namespace mom
