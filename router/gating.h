// Gating: router logits -> probabilities -> top-K selection with SKIP and renormalised
// weights, their backward, and the balancing losses (MODELS.md §2-3).
//
// Why on the host: this is O(tokens x classes) work (classes <= a few dozen), and the dispatch
// plan and the all-to-all counts need the selection on the host anyway. Logits come off the
// device once per routing decision; gradients of the logits go back the same way. All sums
// are in double in a fixed order, ties in top-K go to the lower class id: deterministic.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mom::router {

struct GateConfig {
  int classes = 0;  // output classes of the router (modules, plus SKIP when skip)
  int modules = 0;  // real modules; class ids >= modules are SKIP (no parameters, adds 0)
  int top_k = 1;
  double temperature = 1.0;  // p = softmax(logits / temperature)
  bool sigmoid = false;      // p = sigmoid(logits) instead (MoE option); temperature unused
  bool renormalise = true;   // g = p / Σ_{selected} p; false: g = p (Switch)
  // Module ablation (`mom eval --disable-module`): classes marked here get probability 0 and
  // are never chosen, so a token takes its next choice (SKIP when that is next). Empty: none.
  std::vector<uint8_t> disabled;
};

// One routing decision for N tokens, on the host.
struct Selection {
  int N = 0, K = 0, classes = 0;
  std::vector<double> probs;    // [N, classes]
  std::vector<int32_t> choice;  // [N, K] class ids in descending probability (ties: lower id)
  std::vector<double> weight;   // [N, K] g_{t,k}
};

// probs, choice and weight from logits [N, classes].
void gate_forward(const GateConfig& cfg, const double* logits, int N, Selection& sel);
// dlogits[N, classes] (+=) from dweight[N, K] (∂L/∂g) and dprobs_extra[N, classes] (∂L/∂p
// from the balancing loss; may be null). The choice itself is not differentiated.
void gate_backward(const GateConfig& cfg, const Selection& sel, const double* dweight, const double* dprobs_extra,
                   double* dlogits);

// Switch-style balance: L = classes · Σ_i f_i·P_i, f_i = share of (token, choice) assignments
// to class i (counted over all classes, SKIP included), P_i = mean_t p_{t,i}. Returns L and
// adds scale·∂L/∂p into dprobs [N, classes] (when not null).
double balance_loss(const Selection& sel, double scale, double* dprobs);
// Router z-loss: mean_t logsumexp(logits_t)²; adds scale·∂/∂logits into dlogits (when not null).
double z_loss(const double* logits, int N, int classes, double scale, double* dlogits);

// Per-decision statistics for the metrics.
struct RoutingStats {
  std::vector<int64_t> load;  // assignments per class (SKIP last when present), after drops
  double skip_rate = 0;       // share of assignments that went to SKIP
  double entropy = 0;         // mean over tokens of -Σ p log p
  int64_t dropped = 0;        // assignments dropped by capacity
};

}  // namespace mom::router
