#include "core/layers/attention_sublayer.h"

namespace mom {

namespace {
Tensor as_btc(const Tensor& t, const AttentionShape& sh) {
  return t.reshaped(Shape{sh.B, sh.T, t.numel() / (static_cast<int64_t>(sh.B) * sh.T)});
}
}  // namespace

void attention_sublayer_forward(Backend& be, const AttentionWeights& w, const AttentionStash& s, const Tensor& x,
                                const Tensor& out, const AttentionShape& sh) {
  be.layernorm_forward(s.ln, s.ln_mean, s.ln_rstd, x, w.ln_w, w.ln_b, sh.eps);
  be.matmul_forward(s.qkv, s.ln, w.qkv_w, w.qkv_b);
  be.attention_forward(as_btc(s.atty, sh), s.probs, as_btc(s.qkv, sh), sh.n_head);
  be.matmul_forward(out, s.atty, w.proj_w, w.proj_b);
}

void attention_sublayer_backward(Backend& be, const AttentionWeights& w, const AttentionWeights& g,
                                 const AttentionStash& s, const AttentionScratch& scratch, const Tensor& x,
                                 const Tensor& dout, const Tensor& dx, const AttentionShape& sh) {
  be.zero(scratch.datty);
  be.zero(scratch.dqkv);
  be.zero(scratch.dln);
  be.matmul_backward(scratch.datty, g.proj_w, g.proj_b, dout, s.atty, w.proj_w);
  be.attention_backward(as_btc(scratch.dqkv, sh), as_btc(scratch.datty, sh), as_btc(s.qkv, sh), s.probs, sh.n_head);
  be.matmul_backward(scratch.dln, g.qkv_w, g.qkv_b, scratch.dqkv, s.ln, w.qkv_w);
  be.layernorm_backward(dx, g.ln_w, g.ln_b, scratch.dln, x, w.ln_w, s.ln_mean, s.ln_rstd);
}

}  // namespace mom
