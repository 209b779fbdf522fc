// RouterNet: the network that maps a token's residual row x_t (no LayerNorm) to routing logits
// (MODELS.md §2): mlp (Linear C->r, ReLU, Linear r->classes), gru (a GRU cell carried across
// assembly steps, then Linear r->classes), linear (Linear C->classes; bias optional, the MoE
// gate has none). Written once over the Backend; forward and backward side by side.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/params.h"

namespace mom::router {

enum class RouterKind { Mlp, Gru, Linear };
RouterKind parse_router_kind(const std::string& name);  // "mlp" | "gru" | "linear"

struct RouterNetConfig {
  RouterKind kind = RouterKind::Mlp;
  int in_dim = 0;      // C
  int hidden = 256;    // r (router_dim), mlp and gru
  int classes = 0;
  bool bias = true;    // linear only: false for the MoE gate
};

// The parameters a router needs, named under `prefix` (e.g. "chunks/0/router_attn/"): mlp
// {w1 [r,C], b1 [r], w2 [classes,r], b2}; gru {wx [3r,C], bx [3r], wh [3r,r], bh [3r],
// wout [classes,r], bout}; linear {w [classes,C], b [classes] if bias}. Init N(0, 0.02),
// biases zero; no weight decay on biases.
std::vector<ParamSpec> router_param_specs(const RouterNetConfig& cfg, const std::string& prefix);

// Runs one router over `steps` assembly steps for N tokens. Activations for every step are
// kept until backward; the GRU state starts at zero (a new chunk) at step 0.
class RouterNet {
 public:
  RouterNet(const RouterNetConfig& cfg, const ParameterStore& params, const std::string& prefix);
  // Allocates activation storage for N tokens and `steps` steps (call when N changes).
  void prepare(int N, int steps);
  // logits [N, classes] (device) for step `step` from x [N, C]. Steps run in order 0..H-1.
  void forward(int step, const Tensor& x, const Tensor& logits);
  // Backward for `step` (call in reverse order H-1..0): dx += ∂L/∂x, parameter gradients
  // accumulate, the GRU state gradient is carried to step-1 internally.
  void backward(int step, const Tensor& x, const Tensor& dlogits, const Tensor& dx);
  const RouterNetConfig& config() const { return cfg_; }

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
  RouterNetConfig cfg_;
};

}  // namespace mom::router
