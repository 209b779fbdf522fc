// Gating on the host: probabilities, top-K with SKIP, weights, their backward and the two
// auxiliary losses (MODELS.md §2-3).
//
// Why recompute in double: a row has a few dozen classes, so the cost is nothing next to the
// GEMMs, and doing every softmax, normalisation and sum in double in index order makes the
// result independent of the device and of the thread count. Probabilities and weights are kept
// in double, so an f64 model's gradients are exact to finite-difference precision; backward
// works from the stored probabilities (the logits are not needed).
//
// The selection is a piecewise-constant function of the logits, so backward treats `choice` as
// fixed: gradients reach the logits through the weights g and through ∂L/∂p of the balancing
// loss only.
#include "router/gating.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace mom::router {

namespace {

void check_config(const GateConfig& cfg) {
  require(cfg.classes >= 1, "router: needs at least one class, got " + std::to_string(cfg.classes));
  require(cfg.modules >= 0 && cfg.modules <= cfg.classes,
          "router: modules (" + std::to_string(cfg.modules) +
              ") must lie in [0, classes = " + std::to_string(cfg.classes) + "]");
  require(cfg.top_k >= 1 && cfg.top_k <= cfg.classes, "router: top_k = " + std::to_string(cfg.top_k) +
                                                          " must lie in [1, classes = " + std::to_string(cfg.classes) +
                                                          "]");
  if (!cfg.disabled.empty()) {
    require(cfg.disabled.size() == static_cast<size_t>(cfg.classes),
            "router: the disabled mask must cover every class");
    const int enabled = static_cast<int>(std::count(cfg.disabled.begin(), cfg.disabled.end(), 0));
    require(enabled >= cfg.top_k, "router: disabling leaves " + std::to_string(enabled) +
                                      " classes, fewer than top_k (" + std::to_string(cfg.top_k) +
                                      "); disable fewer modules");
  }
  require(cfg.sigmoid || cfg.temperature > 0,
          "router: temperature must be positive, got " + std::to_string(cfg.temperature));
}

}  // namespace

void gate_forward(const GateConfig& cfg, const double* logits, int N, Selection& sel) {
  check_config(cfg);
  const int C = cfg.classes, K = cfg.top_k;
  sel.N = N, sel.K = K, sel.classes = C;
  sel.probs.assign(static_cast<size_t>(N) * C, 0.0f);
  sel.choice.assign(static_cast<size_t>(N) * K, 0);
  sel.weight.assign(static_cast<size_t>(N) * K, 0.0f);
  std::vector<double> p(C);
  std::vector<int> order(C);
  auto off = [&](int i) { return !cfg.disabled.empty() && cfg.disabled[static_cast<size_t>(i)]; };
  for (int t = 0; t < N; ++t) {
    const double* l = logits + static_cast<size_t>(t) * C;
    if (cfg.sigmoid) {
      for (int i = 0; i < C; ++i) p[i] = off(i) ? 0.0 : 1.0 / (1.0 + std::exp(-static_cast<double>(l[i])));
    } else {
      // Max-subtraction keeps exp in range at small temperatures (τ = 0.2 multiplies by 5).
      double mx = -INFINITY;
      for (int i = 0; i < C; ++i)
        if (!off(i)) mx = std::max(mx, static_cast<double>(l[i]) / cfg.temperature);
      double sum = 0;
      for (int i = 0; i < C; ++i)
        sum += p[i] = off(i) ? 0.0 : std::exp(static_cast<double>(l[i]) / cfg.temperature - mx);
      for (int i = 0; i < C; ++i) p[i] /= sum;
    }
    // Top-K by descending probability, ties to the lower class id: a strict total order, so the
    // selection does not depend on the sort algorithm. Disabled classes sort after all others.
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int a, int b) {
      if (off(a) != off(b)) return off(b);
      return p[a] > p[b] || (p[a] == p[b] && a < b);
    });
    double selected = 0;
    for (int k = 0; k < K; ++k) selected += p[order[k]];
    for (int k = 0; k < K; ++k) {
      const int c = order[k];
      sel.choice[static_cast<size_t>(t) * K + k] = c;
      // A SKIP class keeps its share: the real modules' weights then sum to less than one.
      sel.weight[static_cast<size_t>(t) * K + k] = cfg.renormalise ? p[c] / selected : p[c];
    }
    for (int i = 0; i < C; ++i) sel.probs[static_cast<size_t>(t) * C + i] = p[i];
  }
}

void gate_backward(const GateConfig& cfg, const Selection& sel, const double* dweight, const double* dprobs_extra,
                   double* dlogits) {
  check_config(cfg);
  const int C = sel.classes, K = sel.K;
  std::vector<double> dp(C);
  for (int t = 0; t < sel.N; ++t) {
    const double* p = sel.probs.data() + static_cast<size_t>(t) * C;
    const int32_t* choice = sel.choice.data() + static_cast<size_t>(t) * K;
    const double* dg = dweight + static_cast<size_t>(t) * K;
    for (int i = 0; i < C; ++i) dp[i] = dprobs_extra ? dprobs_extra[static_cast<size_t>(t) * C + i] : 0.0;
    if (cfg.renormalise) {
      // g_k = p_{c_k} / S with S = Σ_selected p: ∂g_k/∂p_{c_j} = (δ_kj − g_k) / S, hence
      // ∂L/∂p_{c_j} = (dg_j − Σ_k dg_k·g_k) / S. g is recomputed from p in double rather than
      // read back from the rounded weights.
      double S = 0;
      for (int k = 0; k < K; ++k) S += p[choice[k]];
      double dot = 0;
      for (int k = 0; k < K; ++k) dot += static_cast<double>(dg[k]) * (p[choice[k]] / S);
      for (int k = 0; k < K; ++k) dp[choice[k]] += (static_cast<double>(dg[k]) - dot) / S;
    } else {
      for (int k = 0; k < K; ++k) dp[choice[k]] += dg[k];
    }
    double* dl = dlogits + static_cast<size_t>(t) * C;
    if (cfg.sigmoid) {
      for (int i = 0; i < C; ++i) dl[i] += dp[i] * p[i] * (1.0 - p[i]);
    } else {
      // p = softmax(l/τ): ∂L/∂l_i = p_i·(dp_i − Σ_j p_j·dp_j) / τ.
      double dot = 0;
      for (int i = 0; i < C; ++i) dot += p[i] * dp[i];
      for (int i = 0; i < C; ++i) dl[i] += p[i] * (dp[i] - dot) / cfg.temperature;
    }
  }
}

double balance_loss(const Selection& sel, double scale, double* dprobs) {
  const int C = sel.classes;
  if (sel.N == 0 || sel.K == 0) return 0;
  // f_i: share of assignments (a count, not differentiated); P_i: mean probability.
  std::vector<double> f(C, 0.0), P(C, 0.0);
  for (int32_t c : sel.choice) f[c] += 1;
  const double assignments = static_cast<double>(sel.N) * sel.K;
  for (auto& x : f) x /= assignments;
  for (int t = 0; t < sel.N; ++t)
    for (int i = 0; i < C; ++i) P[i] += sel.probs[static_cast<size_t>(t) * C + i];
  double loss = 0;
  for (int i = 0; i < C; ++i) loss += f[i] * (P[i] / sel.N);
  loss *= C;
  if (dprobs) {
    // L is linear in every p_{t,i}: ∂L/∂p_{t,i} = C·f_i / N.
    for (int t = 0; t < sel.N; ++t)
      for (int i = 0; i < C; ++i) dprobs[static_cast<size_t>(t) * C + i] += scale * C * f[i] / sel.N;
  }
  return loss;
}

double z_loss(const double* logits, int N, int classes, double scale, double* dlogits) {
  if (N == 0) return 0;
  double total = 0;
  std::vector<double> e(classes);
  for (int t = 0; t < N; ++t) {
    const double* l = logits + static_cast<size_t>(t) * classes;
    double mx = -INFINITY;
    for (int i = 0; i < classes; ++i) mx = std::max(mx, static_cast<double>(l[i]));
    double sum = 0;
    for (int i = 0; i < classes; ++i) sum += e[i] = std::exp(static_cast<double>(l[i]) - mx);
    const double lse = mx + std::log(sum);
    total += lse * lse;
    if (dlogits) {
      // ∂(lse²/N)/∂l_i = 2·lse·softmax(l)_i / N.
      const double factor = scale * 2.0 * lse / N;
      for (int i = 0; i < classes; ++i) dlogits[static_cast<size_t>(t) * classes + i] += factor * e[i] / sum;
    }
  }
  return total / N;
}

}  // namespace mom::router
