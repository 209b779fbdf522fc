// The norms a block can put before its branches: GPT-2's LayerNorm (affine), RMSNorm with a
// gain (MODELS.md §4: eps outside the root) or none, behind one forward/backward pair.
//
// Why one helper: SAS and SAS-P pick their norm by config (RMSNorm, or none with a LayerNorm in
// a run's first block) and AltUp's input-dependent router normalises with RMSNorm; each then
// calls the same two functions instead of switching on the kind at every site.
#pragma once
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/params.h"

namespace mom {

enum class NormKind { None, Rms, Layer };

struct NormWeights {  // parameters or their gradients; b only for LayerNorm
  Tensor w, b;
};

struct NormStash {  // out: the normalised rows; a, b: LayerNorm's mean and 1/std, RMSNorm's rms in a
  Tensor out, a, b;
};

// Specs of a norm named `prefix` + "_weight" (and "_bias"): gain 1, bias 0, no weight decay.
std::vector<ParamSpec> norm_param_specs(NormKind kind, const std::string& prefix, int64_t C);
NormWeights norm_weights(NormKind kind, const ParameterStore& P, const std::string& prefix, bool grads);
// Tensors for N rows (none: nothing; the output is the input itself).
NormStash norm_stash(NormKind kind, Carver& saved, int64_t N, int64_t C, DType dtype);
// The normalised rows: stash.out, or x itself without a norm.
inline const Tensor& norm_output(NormKind kind, const NormStash& s, const Tensor& x) {
  return kind == NormKind::None ? x : s.out;
}
void norm_forward(Backend& be, NormKind kind, const NormWeights& w, const NormStash& s, const Tensor& x, double eps);
// dx += ∂L/∂x given dout = ∂L/∂(normalised rows); parameter gradients accumulate into g.
void norm_backward(Backend& be, NormKind kind, const NormWeights& w, const NormWeights& g, const NormStash& s,
                   const Tensor& x, const Tensor& dout, const Tensor& dx, double eps);

}  // namespace mom
