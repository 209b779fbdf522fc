#include "core/layers/mlp_sublayer.h"

namespace mom {

void mlp_sublayer_forward(Backend& be, const MlpWeights& w, const MlpStash& s, const Tensor& x, const Tensor& out,
                          double eps) {
  be.layernorm_forward(s.ln, s.ln_mean, s.ln_rstd, x, w.ln_w, w.ln_b, eps);
  be.matmul_forward(s.fc, s.ln, w.fc_w, w.fc_b);
  be.gelu_forward(s.gelu, s.fc);
  be.matmul_forward(out, s.gelu, w.proj_w, w.proj_b);
}

void mlp_sublayer_backward(Backend& be, const MlpWeights& w, const MlpWeights& g, const MlpStash& s,
                           const MlpScratch& scratch, const Tensor& x, const Tensor& dout, const Tensor& dx) {
  be.zero(scratch.dgelu);
  be.zero(scratch.dfc);
  be.zero(scratch.dln);
  be.matmul_backward(scratch.dgelu, g.proj_w, g.proj_b, dout, s.gelu, w.proj_w);
  be.gelu_backward(scratch.dfc, s.fc, scratch.dgelu);
  be.matmul_backward(scratch.dln, g.fc_w, g.fc_b, scratch.dfc, s.ln, w.fc_w);
  be.layernorm_backward(dx, g.ln_w, g.ln_b, scratch.dln, x, w.ln_w, s.ln_mean, s.ln_rstd);
}

}  // namespace mom
