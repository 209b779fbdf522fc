// Two-stage initialisation (MODELS.md §2): a trained dense GPT-2 becomes a MoM's module pools,
// and MoE upcycling (§3): each MoE layer starts from one dense layer with its MLP copied into
// every expert.
//
// The dense layers are consumed in order by the target's stack: a dense run takes the next
// `count` layers as its blocks; a MoM chunk takes the next max(NA, NF) layers, layer j's
// ln_1 + attention becoming attention module j (j < NA) and its ln_2 + MLP becoming FFN
// module j (j < NF); an anchor is a one-block dense run; an MoE layer takes one layer, whose
// attention becomes its single attention module and whose ln_2 + MLP is copied into every
// expert. Routers, gates and shared experts keep the target's fresh initialisation;
// embeddings and ln_f are copied. Counts that do not add up are an error.
#pragma once
#include "core/gpt2.h"

namespace mom {

// `target` must be built (and initialised) with the same width, heads, context and
// vocabulary as `dense`; returns nothing, throws UserError naming what does not fit.
void init_from_dense(const Gpt2& dense, Gpt2& target);

}  // namespace mom
