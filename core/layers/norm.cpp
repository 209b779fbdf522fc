#include "core/layers/norm.h"

namespace mom {

std::vector<ParamSpec> norm_param_specs(NormKind kind, const std::string& prefix, int64_t C) {
  if (kind == NormKind::None) return {};
  std::vector<ParamSpec> s = {{prefix + "_weight", Shape{C}, false, 0, 1}};
  if (kind == NormKind::Layer) s.push_back({prefix + "_bias", Shape{C}, false, 0, 0});
  return s;
}

NormWeights norm_weights(NormKind kind, const ParameterStore& P, const std::string& prefix, bool grads) {
  if (kind == NormKind::None) return {};
  auto get = [&](const std::string& n) { return grads ? P.grad(n) : P.param(n); };
  return {get(prefix + "_weight"), kind == NormKind::Layer ? get(prefix + "_bias") : Tensor{}};
}

NormStash norm_stash(NormKind kind, Carver& saved, int64_t N, int64_t C, DType f) {
  if (kind == NormKind::None) return {};
  return {saved.take(Shape{N, C}, f), saved.take(Shape{N}, f),
          kind == NormKind::Layer ? saved.take(Shape{N}, f) : Tensor{}};
}

void norm_forward(Backend& be, NormKind kind, const NormWeights& w, const NormStash& s, const Tensor& x, double eps) {
  if (kind == NormKind::Layer) be.layernorm_forward(s.out, s.a, s.b, x, w.w, w.b, eps);
  if (kind == NormKind::Rms) be.rmsnorm_forward(s.out, s.a, x, w.w, eps);
}

void norm_backward(Backend& be, NormKind kind, const NormWeights& w, const NormWeights& g, const NormStash& s,
                   const Tensor& x, const Tensor& dout, const Tensor& dx, double eps) {
  if (kind == NormKind::None) be.accumulate(dx, dout);
  if (kind == NormKind::Layer) be.layernorm_backward(dx, g.w, g.b, dout, x, w.w, s.a, s.b);
  if (kind == NormKind::Rms) be.rmsnorm_backward(dx, g.w, dout, x, w.w, s.a, eps);
}

}  // namespace mom
