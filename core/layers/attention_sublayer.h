// The attention half of a pre-LN GPT-2 block: out = Attn(LN(x)), without the residual add
// (the caller owns the residual stream). Forward and backward side by side in the .cpp.
//
// Why a sub-layer and not a whole block: a MoM attention module is exactly these parameters
// (LN, W_qkv, W_o), so MoM chunks reuse these pieces instead of a second copy of the math.
#pragma once
#include "core/backend.h"

namespace mom {

struct AttentionWeights {  // views for one layer: parameters, or their gradients
  Tensor ln_w, ln_b, qkv_w, qkv_b, proj_w, proj_b;
};

struct AttentionStash {  // what forward keeps for backward
  Tensor ln, ln_mean, ln_rstd, qkv, atty, probs;
};

struct AttentionScratch {  // backward temporaries, shared by all layers
  Tensor dln, dqkv, datty;
};

struct AttentionShape {
  int B, T, n_head;
  double eps;
};

// out [B*T, C] = proj(attention(qkv(LN(x)))).
void attention_sublayer_forward(Backend& be, const AttentionWeights& w, const AttentionStash& s, const Tensor& x,
                                const Tensor& out, const AttentionShape& sh);
// dx += ∂L/∂x given dout = ∂L/∂out; parameter gradients accumulate into g. Consumes
// s.probs (the attention backward overwrites them).
void attention_sublayer_backward(Backend& be, const AttentionWeights& w, const AttentionWeights& g,
                                 const AttentionStash& s, const AttentionScratch& scratch, const Tensor& x,
                                 const Tensor& dout, const Tensor& dx, const AttentionShape& sh);

}  // namespace mom
