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

// Refuses (UserError) a target that no dense model can become: SAS or SAS-P blocks (a Pre-LN
// GPT-2 has no shaped attention, no W_V-less values, no branch gains to give them) or AltUp
// (widen after converting, with widen_with_altup).
void require_made_of_dense_layers(const Gpt2Config& target);

// `target` must be built (and initialised) with the same width, heads, context and
// vocabulary as `dense`; returns nothing, throws UserError naming what does not fit.
void init_from_dense(const Gpt2& dense, Gpt2& target);

// Recycled-AltUp widening (MODELS.md §5): `target` is `source`'s model with model.altup set
// (mode "recycled"). Every tensor of the source is copied under its own name; AltUp's start
// where `target` was initialised (p = I, g = 1, or W_p = W_g = 0), where every block of the
// stream receives the same update: the widened model computes the source's logits up to
// ln_f's eps. Any stack widens (dense, MoM, MoE, SAS). Throws UserError when the source is
// already widened or the target is wide AltUp (its K·C embeddings have no source).
void widen_with_altup(const Gpt2& source, Gpt2& target);

}  // namespace mom
