// The MLP half of a pre-LN GPT-2 block: out = W_proj·GELU(W_fc·LN(x) + b_fc) + b_proj, without
// the residual add. A MoM FFN module and an MoE expert are exactly these parameters.
#pragma once
#include "core/backend.h"

namespace mom {

struct MlpWeights {
  Tensor ln_w, ln_b, fc_w, fc_b, proj_w, proj_b;
};

struct MlpStash {
  Tensor ln, ln_mean, ln_rstd, fc, gelu;
};

struct MlpScratch {
  Tensor dln, dfc, dgelu;
};

void mlp_sublayer_forward(Backend& be, const MlpWeights& w, const MlpStash& s, const Tensor& x, const Tensor& out,
                          double eps);
void mlp_sublayer_backward(Backend& be, const MlpWeights& w, const MlpWeights& g, const MlpStash& s,
                           const MlpScratch& scratch, const Tensor& x, const Tensor& dout, const Tensor& dx);

}  // namespace mom
