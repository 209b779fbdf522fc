// The router package: router networks and their backend ops against finite differences in
// f64, gating's backward against finite differences of an independent double-precision
// reference, and dispatch plans against hand-computed cases.
//
// Gating works in double on the host; its finite differences are taken on an independent
// double reference of the same math with the selection held fixed (top-K is piecewise
// constant, so the test logits keep clear gaps between the classes).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "core/backend.h"
#include "core/error.h"
#include "core/params.h"
#include "core/rng.h"
#include "tests/finite_differences.h"
#include "router/dispatch_plan.h"
#include "router/gating.h"
#include "router/router_net.h"

namespace mom::router {
namespace {


using test::check_grad;
using test::dot;
using test::HostTensor;

class RouterOps : public ::testing::Test {
 protected:
  Backend& be = backend_for(Device::CPU);
  Rng rng{11};
};

// ---------------------------------------------------------------- backend ops

TEST_F(RouterOps, Relu) {
  HostTensor x({50}, &rng), out({50}, nullptr), dout({50}, &rng), dx({50}, nullptr);
  auto J = [&] {
    be.relu_forward(out.t, x.t);
    return dot(out.data, dout.data);
  };
  J();
  for (size_t i = 0; i < x.data.size(); ++i) EXPECT_EQ(out.data[i], std::max(0.0, x.data[i]));
  be.relu_backward(dx.t, x.t, dout.t);
  check_grad("relu dx", x.data.data(), x.data.size(), dx.data.data(), J);
}

TEST_F(RouterOps, GruCell) {
  const int64_t N = 4, r = 5;
  HostTensor gx({N, 3 * r}, &rng), gh({N, 3 * r}, &rng), s({N, r}, &rng), s_new({N, r}, nullptr);
  HostTensor gates({N, 3 * r}, nullptr), dout({N, r}, &rng);
  HostTensor dgx({N, 3 * r}, nullptr), dgh({N, 3 * r}, nullptr), ds({N, r}, nullptr);
  auto J = [&] {
    be.gru_cell_forward(s_new.t, gates.t, gx.t, gh.t, s.t);
    return dot(s_new.data, dout.data);
  };
  J();
  // The forward against the formula of MODELS.md §2, element by element.
  auto sig = [](double v) { return 1 / (1 + std::exp(-v)); };
  for (int64_t t = 0; t < N; ++t)
    for (int64_t i = 0; i < r; ++i) {
      const double* x = &gx.data[t * 3 * r];
      const double* h = &gh.data[t * 3 * r];
      const double rg = sig(x[i] + h[i]), zg = sig(x[r + i] + h[r + i]);
      const double ng = std::tanh(x[2 * r + i] + rg * h[2 * r + i]);
      EXPECT_NEAR(s_new.data[t * r + i], ng + zg * (s.data[t * r + i] - ng), 1e-15);
    }
  be.gru_cell_backward(dgx.t, dgh.t, ds.t, dout.t, gates.t, gh.t, s.t);
  check_grad("gru cell dgx", gx.data.data(), gx.data.size(), dgx.data.data(), J);
  check_grad("gru cell dgh", gh.data.data(), gh.data.size(), dgh.data.data(), J);
  check_grad("gru cell ds", s.data.data(), s.data.size(), ds.data.data(), J);
}

// ---------------------------------------------------------------- router networks

// Runs a router over `steps` steps in f64, objective Σ_h dlogits_h ⊙ logits_h, and checks the
// gradient w.r.t. every step's input and every parameter element.
void check_router_net(Backend& be, const RouterNetConfig& cfg, int N, int steps, const char* label) {
  Rng rng(5);
  const std::string prefix = "chunks/0/router/";
  std::vector<ParamSpec> specs = router_param_specs(cfg, prefix);
  // ParameterStore sizes its arena to the exact byte count while Arena::alloc rounds up to 64
  // bytes, so a store whose total is not a multiple of 64 bytes cannot be built; a padding
  // tensor (outside the router, never read) rounds the total up to 8 doubles.
  int64_t total = 0;
  for (const auto& s : specs) total += s.shape.numel();
  if (total % 8) specs.push_back(ParamSpec{"pad", Shape{8 - total % 8}, false, 0.0, 0.0});
  const size_t router_tensors = router_param_specs(cfg, prefix).size();
  ParameterStore store(be, DType::F64, specs);
  // Weights far larger than the 0.02 init (and non-zero biases) so that every gate, ReLU and
  // the recurrence carry visible gradients.
  double* p = store.flat_params().ptr<double>();
  for (int64_t i = 0; i < store.num_elements(); ++i) p[i] = rng.normal() * 0.5;
  store.zero_grads();

  RouterNet net(cfg, store, prefix);
  net.prepare(N, steps);
  std::vector<HostTensor> x, logits, dlogits, dx;
  for (int h = 0; h < steps; ++h) {
    x.emplace_back(Shape{N, cfg.in_dim}, &rng);
    logits.emplace_back(Shape{N, cfg.classes}, nullptr);
    dlogits.emplace_back(Shape{N, cfg.classes}, &rng);
    dx.emplace_back(Shape{N, cfg.in_dim}, nullptr);
  }
  auto J = [&] {
    double s = 0;
    for (int h = 0; h < steps; ++h) {
      net.forward(h, x[h].t, logits[h].t);
      s += dot(logits[h].data, dlogits[h].data);
    }
    return s;
  };
  J();
  for (int h = steps - 1; h >= 0; --h) net.backward(h, x[h].t, dlogits[h].t, dx[h].t);
  // Backward a second time after a fresh forward: the carried state must restart from zero, so
  // dx comes out the same bits and the parameter gradients double (up to the rounding of
  // accumulating inside the GEMMs).
  std::vector<double> grads_once(store.flat_grads().ptr<double>(), store.flat_grads().ptr<double>() + store.num_elements());
  std::vector<std::vector<double>> dx_once;
  for (auto& d : dx) dx_once.push_back(d.data), std::fill(d.data.begin(), d.data.end(), 0.0);
  J();
  for (int h = steps - 1; h >= 0; --h) net.backward(h, x[h].t, dlogits[h].t, dx[h].t);
  const double* g = store.flat_grads().ptr<double>();
  for (int64_t i = 0; i < store.num_elements(); ++i) ASSERT_NEAR(g[i], 2 * grads_once[i], 1e-12 * std::max(1.0, std::abs(g[i]))) << label << " grad " << i;
  for (int h = 0; h < steps; ++h) ASSERT_EQ(dx[h].data, dx_once[h]) << label << " dx step " << h;

  for (int h = 0; h < steps; ++h) {
    const std::string what = std::string(label) + " dx step " + std::to_string(h);
    check_grad(what.c_str(), x[h].data.data(), x[h].data.size(), dx[h].data.data(), J);
  }
  for (size_t i = 0; i < router_tensors; ++i) {
    const std::string what = std::string(label) + " d" + store.specs()[i].name.substr(prefix.size());
    check_grad(what.c_str(), store.param(i).ptr<double>(), static_cast<size_t>(store.param(i).numel()), grads_once.data() + (store.grad(i).ptr<double>() - g), J);
  }
}

TEST_F(RouterOps, MlpRouterFiniteDifferences) {
  RouterNetConfig cfg{RouterKind::Mlp, 6, 7, 5, true};
  check_router_net(be, cfg, 4, 2, "mlp");
}

TEST_F(RouterOps, GruRouterFiniteDifferencesOverThreeSteps) {
  RouterNetConfig cfg{RouterKind::Gru, 6, 5, 4, true};
  check_router_net(be, cfg, 3, 3, "gru");
}

TEST_F(RouterOps, LinearRouterFiniteDifferences) {
  RouterNetConfig with_bias{RouterKind::Linear, 6, 0, 5, true};
  check_router_net(be, with_bias, 4, 2, "linear+bias");
  RouterNetConfig no_bias{RouterKind::Linear, 6, 0, 5, false};
  check_router_net(be, no_bias, 4, 1, "linear");
}

TEST(RouterParams, SpecsNamesShapesAndDecay) {
  RouterNetConfig cfg{RouterKind::Gru, 8, 3, 5, true};
  auto specs = router_param_specs(cfg, "p/");
  ASSERT_EQ(specs.size(), 6u);
  EXPECT_EQ(specs[0].name, "p/wx");
  EXPECT_EQ(specs[0].shape, (Shape{9, 8}));
  EXPECT_EQ(specs[2].shape, (Shape{9, 3}));
  EXPECT_EQ(specs[4].shape, (Shape{5, 3}));
  for (const auto& s : specs) {
    const bool is_weight = s.shape.rank == 2;
    EXPECT_EQ(s.decay, is_weight) << s.name;
    EXPECT_EQ(s.init_std, is_weight ? 0.02 : 0.0) << s.name;
    EXPECT_EQ(s.init_value, 0.0) << s.name;
  }
  EXPECT_EQ(router_param_specs({RouterKind::Linear, 8, 0, 4, false}, "g/").size(), 1u);
  EXPECT_EQ(router_param_specs({RouterKind::Mlp, 8, 16, 4, true}, "").size(), 4u);
  EXPECT_EQ(parse_router_kind("gru"), RouterKind::Gru);
  try {
    parse_router_kind("lstm");
    FAIL() << "expected a UserError";
  } catch (const UserError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("lstm"), std::string::npos) << m;
    EXPECT_NE(m.find("mlp, gru, linear"), std::string::npos) << m;
  }
}

// ---------------------------------------------------------------- gating

// The gate's math in double with the selection given: p, then g, for one token.
struct RefGate {
  GateConfig cfg;
  std::vector<double> probs(const std::vector<double>& l) const {
    std::vector<double> p(l.size());
    if (cfg.sigmoid) {
      for (size_t i = 0; i < l.size(); ++i) p[i] = 1 / (1 + std::exp(-l[i]));
      return p;
    }
    double mx = *std::max_element(l.begin(), l.end()) / cfg.temperature, sum = 0;
    for (size_t i = 0; i < l.size(); ++i) sum += p[i] = std::exp(l[i] / cfg.temperature - mx);
    for (auto& v : p) v /= sum;
    return p;
  }
  // Top-K computed afresh (descending, ties to lower id), to confirm a perturbation keeps it.
  std::vector<int> topk(const std::vector<double>& p) const {
    std::vector<int> id(p.size());
    for (size_t i = 0; i < id.size(); ++i) id[i] = static_cast<int>(i);
    std::stable_sort(id.begin(), id.end(), [&](int a, int b) { return p[a] > p[b]; });
    id.resize(cfg.top_k);
    return id;
  }
  std::vector<double> weights(const std::vector<double>& p, const std::vector<int>& choice) const {
    double S = 0;
    for (int c : choice) S += p[c];
    std::vector<double> g;
    for (int c : choice) g.push_back(cfg.renormalise ? p[c] / S : p[c]);
    return g;
  }
};

struct GateCase {
  const char* name;
  GateConfig cfg;
  bool expect_skip;  // some token selects a SKIP class
};

class GateBackward : public ::testing::TestWithParam<GateCase> {};

// Logits with clear gaps between classes (≥ 0.3 apart inside a row), so ±1e-5 never reorders.
std::vector<double> gapped_logits(int N, int C, Rng& rng) {
  std::vector<double> l(static_cast<size_t>(N) * C);
  for (int t = 0; t < N; ++t) {
    std::vector<int> perm(C);
    for (int i = 0; i < C; ++i) perm[i] = i;
    for (int i = C - 1; i > 0; --i) std::swap(perm[i], perm[rng.below(i + 1)]);
    for (int i = 0; i < C; ++i) l[t * C + perm[i]] = static_cast<float>(-1.0 + 0.4 * i + 0.1 * rng.uniform());
  }
  return l;
}

TEST_P(GateBackward, MatchesFiniteDifferences) {
  const GateCase& gc = GetParam();
  const GateConfig& cfg = gc.cfg;
  const int N = 6, C = cfg.classes, K = cfg.top_k;
  Rng rng(21);
  std::vector<double> logits = gapped_logits(N, C, rng);
  // With SKIP in play, token 0 puts SKIP (the last class) on top so it is surely selected.
  if (gc.expect_skip) logits[C - 1] = 2.0f;
  Selection sel;
  gate_forward(cfg, logits.data(), N, sel);
  RefGate ref{cfg};

  // Forward against the reference; the choice is in descending probability.
  bool saw_skip = false;
  for (int t = 0; t < N; ++t) {
    std::vector<double> l(logits.begin() + t * C, logits.begin() + (t + 1) * C);
    const auto p = ref.probs(l);
    const auto choice = ref.topk(p);
    const auto g = ref.weights(p, choice);
    for (int i = 0; i < C; ++i) EXPECT_NEAR(sel.probs[t * C + i], p[i], 1e-7);
    double gsum = 0;
    for (int k = 0; k < K; ++k) {
      EXPECT_EQ(sel.choice[t * K + k], choice[k]);
      EXPECT_NEAR(sel.weight[t * K + k], g[k], 1e-7);
      saw_skip |= choice[k] >= cfg.modules;
      gsum += sel.weight[t * K + k];
    }
    if (cfg.renormalise) {
      EXPECT_NEAR(gsum, 1.0, 1e-6);
    }
  }
  EXPECT_EQ(saw_skip, gc.expect_skip);

  // The objective in double, selection fixed: Σ dw ⊙ g + c_bal·L_bal + c_z·L_z.
  std::vector<double> dweight(static_cast<size_t>(N) * K);
  for (auto& v : dweight) v = static_cast<float>(rng.normal());
  const double c_bal = 0.7, c_z = 0.3;
  auto objective = [&](const std::vector<double>& l, bool with_g, bool with_bal, bool with_z) {
    double J = 0;
    std::vector<double> f(C, 0.0), P(C, 0.0);
    for (int32_t c : sel.choice) f[c] += 1.0 / (N * K);
    for (int t = 0; t < N; ++t) {
      std::vector<double> lt(l.begin() + t * C, l.begin() + (t + 1) * C);
      const auto p = ref.probs(lt);
      std::vector<int> choice(sel.choice.begin() + t * K, sel.choice.begin() + (t + 1) * K);
      EXPECT_EQ(ref.topk(p), choice) << "a perturbation changed the selection";
      const auto g = ref.weights(p, choice);
      if (with_g)
        for (int k = 0; k < K; ++k) J += dweight[t * K + k] * g[k];
      for (int i = 0; i < C; ++i) P[i] += p[i] / N;
      double mx = *std::max_element(lt.begin(), lt.end()), s = 0;
      for (double v : lt) s += std::exp(v - mx);
      if (with_z) J += c_z * std::pow(mx + std::log(s), 2) / N;
    }
    if (with_bal)
      for (int i = 0; i < C; ++i) J += c_bal * C * f[i] * P[i];
    return J;
  };

  struct Part {
    const char* what;
    bool g, bal, z;
  };
  for (const Part part : {Part{"g", true, false, false}, Part{"balance", false, true, false},
                          Part{"z-loss", false, false, true}, Part{"all", true, true, true}}) {
    std::vector<double> dl(logits.size(), 0.0f);
    std::vector<double> dprobs(logits.size(), 0.0);
    std::vector<double> dw = dweight;
    if (!part.g) std::fill(dw.begin(), dw.end(), 0.0f);
    if (part.bal) {
      const double L = balance_loss(sel, c_bal, dprobs.data());
      std::vector<double> l(logits.begin(), logits.end());
      EXPECT_NEAR(c_bal * L, objective(l, false, true, false), 1e-6);
    }
    gate_backward(cfg, sel, dw.data(), part.bal ? dprobs.data() : nullptr, dl.data());
    if (part.z) {
      const double L = z_loss(logits.data(), N, C, c_z, dl.data());
      std::vector<double> l(logits.begin(), logits.end());
      EXPECT_NEAR(c_z * L, objective(l, false, false, true), 1e-9);
    }
    std::vector<double> l(logits.begin(), logits.end()), grad(dl.begin(), dl.end());
    const std::string what = std::string(gc.name) + " " + part.what;
    check_grad(what.c_str(), l.data(), l.size(), grad.data(),
               [&] { return objective(l, part.g, part.bal, part.z); }, 1e-7);
  }
}

GateConfig gate(int classes, int modules, int k, double tau, bool sigmoid, bool renorm) {
  GateConfig c;
  c.classes = classes, c.modules = modules, c.top_k = k, c.temperature = tau, c.sigmoid = sigmoid,
  c.renormalise = renorm;
  return c;
}

INSTANTIATE_TEST_SUITE_P(
    Router, GateBackward,
    ::testing::Values(GateCase{"softmax renorm K=2", gate(5, 5, 2, 1.0, false, true), false},
                      GateCase{"softmax renorm K=1", gate(5, 5, 1, 1.0, false, true), false},
                      GateCase{"softmax plain K=1", gate(5, 5, 1, 1.0, false, false), false},
                      GateCase{"softmax plain K=2", gate(5, 5, 2, 1.0, false, false), false},
                      GateCase{"tau=0.2 renorm K=2", gate(5, 5, 2, 0.2, false, true), false},
                      GateCase{"sigmoid renorm K=2", gate(5, 5, 2, 1.0, true, true), false},
                      GateCase{"sigmoid plain K=2", gate(5, 5, 2, 1.0, true, false), false},
                      GateCase{"skip renorm K=2", gate(5, 4, 2, 1.0, false, true), true},
                      GateCase{"skip tau=0.2 K=1", gate(5, 4, 1, 0.2, false, true), true}),
    [](const ::testing::TestParamInfo<GateCase>& info) {
      std::string n = info.param.name;
      for (auto& ch : n)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return n;
    });

TEST(Gating, TiesGoToTheLowerIdAndSkipKeepsItsShare) {
  const GateConfig cfg = gate(4, 3, 2, 1.0, false, true);
  // Token 0: classes 1 and 2 tie for the top; token 1: SKIP (class 3) tops, module 0 second.
  const std::vector<double> logits = {0.0f, 1.0f, 1.0f, -1.0f, 0.5f, -2.0f, -2.0f, 1.5f};
  Selection sel;
  gate_forward(cfg, logits.data(), 2, sel);
  EXPECT_EQ(sel.choice, (std::vector<int32_t>{1, 2, 3, 0}));
  EXPECT_FLOAT_EQ(sel.weight[0], 0.5f);
  EXPECT_FLOAT_EQ(sel.weight[1], 0.5f);
  // SKIP's weight e^1.5/(e^1.5+e^0.5) stays with SKIP: the real module gets only the rest.
  EXPECT_NEAR(sel.weight[2], std::exp(1.5) / (std::exp(1.5) + std::exp(0.5)), 1e-7);
  EXPECT_NEAR(sel.weight[3], std::exp(0.5) / (std::exp(1.5) + std::exp(0.5)), 1e-7);
  // Huge logits at a small temperature stay finite (max-subtraction).
  const std::vector<double> big = {1000.0f, 999.0f, -1000.0f, 0.0f};
  gate_forward(gate(4, 4, 1, 0.2, false, false), big.data(), 1, sel);
  EXPECT_NEAR(sel.probs[0], 1 / (1 + std::exp(-5.0)), 1e-7);
  EXPECT_EQ(sel.choice[0], 0);
  EXPECT_THROW(gate_forward(gate(4, 4, 5, 1.0, false, true), big.data(), 1, sel), UserError);
}

TEST(Gating, BalanceLossIsOneWhenUniform) {
  // Two mirrored tokens over 4 classes whose K=2 choices cover every class once: the mean
  // probabilities P_i and the shares f_i are all 1/4, L = 4·Σ 1/16 = 1, the balanced value.
  const GateConfig cfg = gate(4, 4, 2, 1.0, false, true);
  const std::vector<double> logits = {1.0f, 1.0f, 0.0f, 0.0f, 0.0f, 0.0f, 1.0f, 1.0f};
  Selection sel;
  gate_forward(cfg, logits.data(), 2, sel);
  EXPECT_NEAR(balance_loss(sel, 1.0, nullptr), 1.0, 1e-7);
  // z-loss of a row of zeros over C classes is log(C)².
  const std::vector<double> zeros(3 * 4, 0.0f);
  EXPECT_NEAR(z_loss(zeros.data(), 3, 4, 1.0, nullptr), std::pow(std::log(4.0), 2), 1e-12);
}

// ---------------------------------------------------------------- dispatch plans

// A Selection from explicit choices and per-token probabilities.
Selection make_selection(int N, int K, int classes, std::vector<int32_t> choice, std::vector<double> probs = {}) {
  Selection s;
  s.N = N, s.K = K, s.classes = classes;
  s.choice = std::move(choice);
  s.probs = probs.empty() ? std::vector<double>(static_cast<size_t>(N) * classes, 1.0f / classes) : std::move(probs);
  s.weight.assign(static_cast<size_t>(N) * K, 0.5f);
  return s;
}

// Every kept (token, choice) finds its own token at its slot, inside its module's block; every
// row is used exactly once; rows inside a block are in (token, k) order.
void expect_consistent(const Selection& sel, const DispatchPlan& plan, int modules) {
  ASSERT_EQ(plan.offsets.size(), static_cast<size_t>(modules + 1));
  EXPECT_EQ(plan.offsets[0], 0);
  EXPECT_EQ(plan.offsets[modules], plan.M());
  std::vector<int> used(plan.rows.size(), 0);
  for (int t = 0; t < sel.N; ++t)
    for (int k = 0; k < sel.K; ++k) {
      const int c = sel.choice[t * sel.K + k];
      const int32_t s = plan.slot[t * sel.K + k];
      if (c >= modules) {
        EXPECT_EQ(s, -1) << "SKIP has no row";
        continue;
      }
      if (s < 0) continue;  // dropped
      EXPECT_EQ(plan.rows[s], t);
      EXPECT_GE(s, plan.offsets[c]);
      EXPECT_LT(s, plan.offsets[c + 1]);
      ++used[s];
    }
  for (int u : used) EXPECT_EQ(u, 1);
  for (int j = 0; j < modules; ++j)
    for (int64_t m = plan.offsets[j] + 1; m < plan.offsets[j + 1]; ++m) EXPECT_LT(plan.rows[m - 1], plan.rows[m]);
}

TEST(DispatchPlan, StableGroupingWithSkipAndEmptyModules) {
  // 4 modules + SKIP (class 4), K=2; module 2 gets nothing; tokens 1 and 3 each pick SKIP once.
  const Selection sel = make_selection(4, 2, 5, {3, 0, 0, 4, 1, 0, 4, 3});
  const DispatchPlan plan = make_plan(sel, 4, {});
  expect_consistent(sel, plan, 4);
  EXPECT_EQ(plan.offsets, (std::vector<int64_t>{0, 3, 4, 4, 6}));
  EXPECT_EQ(plan.rows, (std::vector<int32_t>{0, 1, 2, 2, 0, 3}));
  EXPECT_EQ(plan.slot, (std::vector<int32_t>{4, 0, 1, -1, 3, 2, -1, 5}));
  EXPECT_EQ(plan.count(2), 0);
  EXPECT_EQ(plan.dropped, 0);
  EXPECT_EQ(plan.capacity, 0);
  const RoutingStats st = routing_stats(sel, plan, 4);
  EXPECT_EQ(st.load, (std::vector<int64_t>{3, 1, 0, 2, 2}));
  EXPECT_DOUBLE_EQ(st.skip_rate, 2.0 / 8);
  EXPECT_NEAR(st.entropy, std::log(5.0), 1e-6);  // uniform probabilities
  int64_t total = 0;
  for (auto l : st.load) total += l;
  EXPECT_EQ(total, 8);
}

TEST(DispatchPlan, EveryTokenToOneModuleAndAllSkip) {
  const Selection one = make_selection(5, 1, 3, {1, 1, 1, 1, 1});
  const DispatchPlan p1 = make_plan(one, 3, {});
  expect_consistent(one, p1, 3);
  EXPECT_EQ(p1.offsets, (std::vector<int64_t>{0, 0, 5, 5}));
  EXPECT_EQ(p1.rows, (std::vector<int32_t>{0, 1, 2, 3, 4}));

  const Selection skip = make_selection(3, 1, 3, {2, 2, 2});  // modules = 2: class 2 is SKIP
  const DispatchPlan p2 = make_plan(skip, 2, {});
  expect_consistent(skip, p2, 2);
  EXPECT_EQ(p2.M(), 0);
  EXPECT_EQ(p2.offsets, (std::vector<int64_t>{0, 0, 0}));
  EXPECT_EQ(p2.slot, (std::vector<int32_t>{-1, -1, -1}));
  const RoutingStats st = routing_stats(skip, p2, 2);
  EXPECT_EQ(st.load, (std::vector<int64_t>{0, 0, 3}));
  EXPECT_DOUBLE_EQ(st.skip_rate, 1.0);
}

TEST(DispatchPlan, CapacityByPosition) {
  // N=6, K=1, 2 modules, factor 1.0: cap = ceil(6/2) = 3. Module 0 gets tokens 0,1,2,4,5:
  // tokens 4 and 5 come last in (token, k) order and are dropped.
  const Selection sel = make_selection(6, 1, 2, {0, 0, 0, 1, 0, 0});
  const DispatchPlan plan = make_plan(sel, 2, {1.0, DropPolicy::Position});
  expect_consistent(sel, plan, 2);
  EXPECT_EQ(plan.capacity, 3);
  EXPECT_EQ(plan.dropped, 2);
  EXPECT_EQ(plan.rows, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(plan.slot, (std::vector<int32_t>{0, 1, 2, 3, -1, -1}));
  const RoutingStats st = routing_stats(sel, plan, 2);
  EXPECT_EQ(st.dropped, 2);
  EXPECT_EQ(st.load, (std::vector<int64_t>{3, 1}));

  // K=2, 3 modules, factor 0.5: cap = ceil(0.5·4·2/3) = ceil(1.33) = 2. Module 1 is chosen by
  // (0,k1), (1,k0), (2,k1), (3,k0): the first two stay. SKIP (class 3) is never dropped.
  const Selection s2 = make_selection(4, 2, 4, {0, 1, 1, 3, 2, 1, 1, 0});
  const DispatchPlan p2 = make_plan(s2, 3, {0.5, DropPolicy::Position});
  expect_consistent(s2, p2, 3);
  EXPECT_EQ(p2.capacity, 2);
  EXPECT_EQ(p2.dropped, 2);
  EXPECT_EQ(p2.slot, (std::vector<int32_t>{0, 2, 3, -1, 4, -1, -1, 1}));
  EXPECT_EQ(p2.offsets, (std::vector<int64_t>{0, 2, 4, 5}));
  // A decimal factor that is not exact in binary: 1.1·10/1 = 11, not 12.
  const Selection s3 = make_selection(10, 1, 1, std::vector<int32_t>(10, 0));
  EXPECT_EQ(make_plan(s3, 1, {1.1, DropPolicy::Position}).capacity, 11);
}

TEST(DispatchPlan, CapacityByLowestProbability) {
  // N=5, K=1, 2 modules, factor 0.8: cap = ceil(0.8·5/2) = 2. Module 0 is chosen by tokens
  // 0,1,2,3 with p = 0.6, 0.9, 0.6, 0.7: keep 1 (0.9) and 3 (0.7); 0 and 2 tie at 0.6, both
  // below, both dropped. Module 1 (token 4) fits.
  const std::vector<double> probs = {0.6f, 0.4f, 0.9f, 0.1f, 0.6f, 0.4f, 0.7f, 0.3f, 0.2f, 0.8f};
  const Selection sel = make_selection(5, 1, 2, {0, 0, 0, 0, 1}, probs);
  const DispatchPlan plan = make_plan(sel, 2, {0.8, DropPolicy::LowestProbability});
  expect_consistent(sel, plan, 2);
  EXPECT_EQ(plan.capacity, 2);
  EXPECT_EQ(plan.dropped, 2);
  EXPECT_EQ(plan.slot, (std::vector<int32_t>{-1, 0, -1, 1, 2}));
  EXPECT_EQ(plan.rows, (std::vector<int32_t>{1, 3, 4}));

  // A tie at the boundary goes to the earlier (token, k): cap 3 (factor 1.2), module 0 gets
  // p = 0.6, 0.9, 0.6, 0.7: keep 0.9, 0.7 and the first 0.6 (token 0), drop token 2.
  const DispatchPlan p2 = make_plan(sel, 2, {1.2, DropPolicy::LowestProbability});
  EXPECT_EQ(p2.capacity, 3);
  EXPECT_EQ(p2.dropped, 1);
  EXPECT_EQ(p2.slot, (std::vector<int32_t>{0, 1, -1, 2, 3}));
  // The same case by position drops token 3 instead.
  const DispatchPlan p3 = make_plan(sel, 2, {1.2, DropPolicy::Position});
  EXPECT_EQ(p3.slot, (std::vector<int32_t>{0, 1, 2, -1, 3}));
}

TEST(DispatchPlan, ParseDropPolicy) {
  EXPECT_EQ(parse_drop_policy("position"), DropPolicy::Position);
  EXPECT_EQ(parse_drop_policy("probability"), DropPolicy::LowestProbability);
  try {
    parse_drop_policy("random");
    FAIL() << "expected a UserError";
  } catch (const UserError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("'random'"), std::string::npos) << m;
    EXPECT_NE(m.find("position, probability"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace mom::router
