#include "core/layers/routed_stage.h"

#include <cmath>

#include "core/error.h"
#include "core/layers/attention_sublayer.h"
#include "core/layers/mlp_sublayer.h"
#include "router/gating.h"

namespace mom {

namespace {

struct PoolNames {
  static constexpr const char* attn[] = {"ln_weight", "ln_bias", "qkv_weight", "qkv_bias", "proj_weight", "proj_bias"};
  static constexpr const char* ffn[] = {"ln_weight", "ln_bias", "fc_weight", "fc_bias", "proj_weight", "proj_bias"};
};

int classes_of(const RoutedStageConfig& c, int modules) { return modules + (c.skip ? 1 : 0); }

router::RouterNetConfig router_cfg(const RoutedStageConfig& c, int C, int modules) {
  return {c.router, C, c.router_dim, classes_of(c, modules), c.router_bias};
}

std::vector<ParamSpec> mlp_pool_specs(const std::string& p, int64_t n, int64_t C, double resid_std) {
  return {{p + "ln_weight", Shape{n, C}, false, 0, 1},
          {p + "ln_bias", Shape{n, C}, false, 0, 0},
          {p + "fc_weight", Shape{n, 4 * C, C}, true, 0.02, 0},
          {p + "fc_bias", Shape{n, 4 * C}, false, 0, 0},
          {p + "proj_weight", Shape{n, C, 4 * C}, true, resid_std, 0},
          {p + "proj_bias", Shape{n, C}, false, 0, 0}};
}

}  // namespace

std::vector<ParamSpec> routed_stage_param_specs(const RoutedStageConfig& c, int C64, const std::string& prefix,
                                                double resid_std) {
  const int64_t C = C64, NA = c.attn_modules, NF = c.ffn_modules;
  std::vector<ParamSpec> s = {{prefix + "attn/ln_weight", Shape{NA, C}, false, 0, 1},
                              {prefix + "attn/ln_bias", Shape{NA, C}, false, 0, 0},
                              {prefix + "attn/qkv_weight", Shape{NA, 3 * C, C}, true, 0.02, 0},
                              {prefix + "attn/qkv_bias", Shape{NA, 3 * C}, false, 0, 0},
                              {prefix + "attn/proj_weight", Shape{NA, C, C}, true, resid_std, 0},
                              {prefix + "attn/proj_bias", Shape{NA, C}, false, 0, 0}};
  for (auto& p : mlp_pool_specs(prefix + "ffn/", NF, C, resid_std)) s.push_back(p);
  if (c.attn_routing == RoutingMode::Learned)
    for (auto& p : router::router_param_specs(router_cfg(c, C64, c.attn_modules), prefix + "router_attn/"))
      s.push_back(p);
  if (c.ffn_routing == RoutingMode::Learned)
    for (auto& p : router::router_param_specs(router_cfg(c, C64, c.ffn_modules), prefix + "router_ffn/"))
      s.push_back(p);
  if (c.shared_expert)
    for (auto& p : mlp_pool_specs(prefix + "shared/", 1, C, resid_std)) s.push_back(p);
  return s;
}

// One routing side (attention or FFN) at one step: the decision and its device copies.
struct Side {
  router::Selection sel;
  router::DispatchPlan plan;
  std::vector<double> logits;      // host copy, for the z-loss gradient
  std::vector<double> dprobs_aux;  // ∂(balance loss)/∂p, before the loss scale
  router::RoutingStats stats;
  double balance = 0, z = 0;  // scaled loss values
  Tensor rows, slot, weight;  // device: I32 [N·K], I32 [N,K], [N,K]
};

struct StepStash {
  Tensor xa, xf;  // residual before the attention and before the FFN assembly
  Side attn, ffn;
  Tensor a_in, a_ln, a_mean, a_rstd, a_qkv_rows, qkv, probs, att, o_rows, proj_rows;
  Tensor f_in, f_out;
  MlpStash f_stash, shared_stash;
};

struct RoutedStage::Impl {
  const RoutedStageConfig cfg;
  const ParameterStore& P;
  const std::string prefix;
  const int C, n_head;
  const double eps;
  std::unique_ptr<router::RouterNet> router_attn, router_ffn;
  int B = 0, T = 0, N = 0, Ka = 1, Kf = 1;
  std::unique_ptr<Arena> arena;
  std::vector<StepStash> steps;
  // scratch, shared by all steps
  Tensor logits, dlogits, dweight, dy, datt, dqkv, d_in_rows, d_a_rows, d_qkv_rows, branch;
  MlpScratch mlp_scratch;
  Tensor d_ffn_out;
  double aux_scale = 1;

  Impl(const RoutedStageConfig& c, const ParameterStore& p, std::string pre, int c_, int nh, double e)
      : cfg(c), P(p), prefix(std::move(pre)), C(c_), n_head(nh), eps(e) {
    if (cfg.attn_routing == RoutingMode::Learned)
      router_attn =
          std::make_unique<router::RouterNet>(router_cfg(cfg, C, cfg.attn_modules), P, prefix + "router_attn/");
    if (cfg.ffn_routing == RoutingMode::Learned)
      router_ffn = std::make_unique<router::RouterNet>(router_cfg(cfg, C, cfg.ffn_modules), P, prefix + "router_ffn/");
    Ka = cfg.attn_routing == RoutingMode::Learned ? cfg.top_k : 1;
    Kf = cfg.ffn_routing == RoutingMode::Learned ? cfg.top_k : 1;
  }

  Backend& be() const { return P.backend(); }
  Tensor param(const char* side, const char* name, int j) const { return P.param(prefix + side + "/" + name)[j]; }
  Tensor grad(const char* side, const char* name, int j) const { return P.grad(prefix + side + "/" + name)[j]; }
  MlpWeights mlp(const char* side, int j, bool grads) const {
    auto g = [&](const char* n) { return grads ? grad(side, n, j) : param(side, n, j); };
    return {g("ln_weight"), g("ln_bias"), g("fc_weight"), g("fc_bias"), g("proj_weight"), g("proj_bias")};
  }

  void prepare(int B_, int T_) {
    if (arena && B_ == B && T_ == T) return;
    B = B_, T = T_, N = B * T;
    const int64_t n = N, Ma = n * Ka, Mf = n * Kf, c = C, H = cfg.steps;
    const int64_t max_classes = std::max(classes_of(cfg, cfg.attn_modules), classes_of(cfg, cfg.ffn_modules));
    const int64_t Kmax = std::max(Ka, Kf), Mmax = std::max(Ma, Mf);
    const DType f = P.dtype(), i32 = DType::I32;
    auto layout = [&](auto&& t) {
      for (int64_t h = 0; h < H; ++h) {
        StepStash& s = steps[h];
        s.xa = t(Shape{n, c}, f), s.xf = t(Shape{n, c}, f);
        for (Side* side : {&s.attn, &s.ffn}) {
          const int64_t K = side == &s.attn ? Ka : Kf;
          side->rows = t(Shape{n * K}, i32), side->slot = t(Shape{n, K}, i32), side->weight = t(Shape{n, K}, f);
        }
        s.a_in = t(Shape{Ma, c}, f), s.a_ln = t(Shape{Ma, c}, f), s.a_mean = t(Shape{Ma}, f),
        s.a_rstd = t(Shape{Ma}, f);
        s.a_qkv_rows = t(Shape{Ma, 3 * c}, f), s.qkv = t(Shape{n, 3 * c}, f);
        s.probs = t(Shape{B, n_head, T, T}, f), s.att = t(Shape{n, c}, f);
        s.o_rows = t(Shape{Ma, c}, f), s.proj_rows = t(Shape{Ma, c}, f);
        s.f_in = t(Shape{Mf, c}, f), s.f_out = t(Shape{Mf, c}, f);
        s.f_stash = {t(Shape{Mf, c}, f), t(Shape{Mf}, f), t(Shape{Mf}, f), t(Shape{Mf, 4 * c}, f),
                     t(Shape{Mf, 4 * c}, f)};
        if (cfg.shared_expert)
          s.shared_stash = {t(Shape{n, c}, f), t(Shape{n}, f), t(Shape{n}, f), t(Shape{n, 4 * c}, f),
                            t(Shape{n, 4 * c}, f)};
      }
      logits = t(Shape{n, max_classes}, f), dlogits = t(Shape{n, max_classes}, f), dweight = t(Shape{n, Kmax}, f);
      dy = t(Shape{n, c}, f), datt = t(Shape{n, c}, f), dqkv = t(Shape{n, 3 * c}, f), branch = t(Shape{n, c}, f);
      d_in_rows = t(Shape{Mmax, c}, f), d_a_rows = t(Shape{Mmax, c}, f), d_qkv_rows = t(Shape{Ma, 3 * c}, f);
      d_ffn_out = t(Shape{Mf, c}, f);
      const int64_t Mm = std::max(Mf, n);
      mlp_scratch = {t(Shape{Mm, c}, f), t(Shape{Mm, 4 * c}, f), t(Shape{Mm, 4 * c}, f)};
    };
    steps.assign(static_cast<size_t>(H), StepStash{});
    ArenaPlan plan;
    layout([&](Shape s, DType d) {
      plan.add(s, d);
      return Tensor{};
    });
    arena.reset();
    arena = std::make_unique<Arena>(be(), plan.bytes());
    layout([&](Shape s, DType d) { return arena->alloc(s, d); });
    if (router_attn) router_attn->prepare(N, cfg.steps);
    if (router_ffn) router_ffn->prepare(N, cfg.steps);
  }

  // Routing decision for one side at step h: selection, plan, aux losses, device copies.
  void route(Side& side, RoutingMode mode, router::RouterNet* net, int modules, int K, int h, const Tensor& x,
             bool is_ffn) {
    const int classes = mode == RoutingMode::Learned ? classes_of(cfg, modules) : modules;
    side.sel = {};
    side.balance = side.z = 0;
    side.dprobs_aux.clear();
    if (mode == RoutingMode::Learned) {
      const Tensor lg_view = leading_view(logits, classes);
      net->forward(h, x, lg_view);
      side.logits.resize(static_cast<size_t>(N) * classes);
      to_host(side.logits.data(), lg_view);
      const router::GateConfig gc{classes, modules, K, cfg.temperature, cfg.sigmoid, cfg.renormalise};
      router::gate_forward(gc, side.logits.data(), N, side.sel);
      const double scale = aux_scale / cfg.steps;
      if (cfg.balance_coef > 0) {
        side.dprobs_aux.assign(side.sel.probs.size(), 0.0);
        side.balance =
            cfg.balance_coef * scale * router::balance_loss(side.sel, cfg.balance_coef * scale, side.dprobs_aux.data());
      }
      if (cfg.z_coef > 0) side.z = cfg.z_coef * scale * router::z_loss(side.logits.data(), N, classes, 0, nullptr);
    } else {
      side.sel.N = N, side.sel.K = 1, side.sel.classes = classes;
      side.sel.probs.assign(static_cast<size_t>(N) * classes, 0.0);
      side.sel.choice.assign(static_cast<size_t>(N), mode == RoutingMode::Forced ? h % modules : 0);
      side.sel.weight.assign(static_cast<size_t>(N), 1.0);
      for (int t = 0; t < N; ++t) side.sel.probs[static_cast<size_t>(t) * classes + side.sel.choice[t]] = 1.0;
    }
    const router::CapacityConfig cap = is_ffn ? cfg.capacity : router::CapacityConfig{};
    side.plan = router::make_plan(side.sel, modules, cap);
    side.stats = router::routing_stats(side.sel, side.plan, modules);
    be().copy_from_host(side.rows.rows(0, side.plan.M()), side.plan.rows.data());
    be().copy_from_host(side.slot, side.plan.slot.data());
    from_host(side.weight, side.sel.weight.data());
  }

  // Host routing math is in double; device tensors are in the model's dtype.
  void to_host(double* dst, const Tensor& t) {
    if (t.dtype == DType::F64) return be().copy_to_host(dst, t);
    std::vector<float> tmp(static_cast<size_t>(t.numel()));
    be().copy_to_host(tmp.data(), t);
    for (size_t i = 0; i < tmp.size(); ++i) dst[i] = tmp[i];
  }
  void from_host(const Tensor& t, const double* src) {
    if (t.dtype == DType::F64) return be().copy_from_host(t, src);
    std::vector<float> tmp(src, src + t.numel());
    be().copy_from_host(t, tmp.data());
  }

  void forward(const Tensor& x_in, const Tensor& x) {
    Backend& b = be();
    if (x.data != x_in.data) b.copy(x, x_in);
    for (int h = 0; h < cfg.steps; ++h) {
      StepStash& s = steps[h];
      // ---- attention assembly: per-module LN + QKV, summed; one shared causal attention;
      // per-module output projection, combined with the routing weights.
      b.copy(s.xa, x);
      if (cfg.attn_routing == RoutingMode::Single) {
        // One module, every token, weight 1 (MoE's attention): the dense sub-layer itself, no
        // dispatch.
        attention_sublayer_forward(b, attn_weights(0, false), single_stash(s), x, branch, {B, T, n_head, eps});
        b.accumulate(x, branch);
      } else {
        route(s.attn, cfg.attn_routing, router_attn.get(), cfg.attn_modules, Ka, h, x, false);
        const auto& pa = s.attn.plan;
        const int64_t Ma = pa.M();
        b.gather_rows(s.a_in.rows(0, Ma), x, s.attn.rows.rows(0, Ma));
        b.run_modules(cfg.attn_modules, [&](int j) {
          const int64_t r0 = pa.offsets[j], r1 = pa.offsets[j + 1];
          if (r0 == r1) return;
          b.layernorm_forward(s.a_ln.rows(r0, r1), s.a_mean.rows(r0, r1), s.a_rstd.rows(r0, r1), s.a_in.rows(r0, r1),
                              param("attn", "ln_weight", j), param("attn", "ln_bias", j), eps);
          b.matmul_forward(s.a_qkv_rows.rows(r0, r1), s.a_ln.rows(r0, r1), param("attn", "qkv_weight", j),
                           param("attn", "qkv_bias", j));
        });
        b.zero(s.qkv);
        b.combine_rows(s.qkv, s.a_qkv_rows, s.attn.slot, cfg.weighted_qkv ? s.attn.weight : Tensor{});
        b.attention_forward(s.att.reshaped(Shape{B, T, C}), s.probs, s.qkv.reshaped(Shape{B, T, 3 * C}), n_head);
        b.gather_rows(s.o_rows.rows(0, Ma), s.att, s.attn.rows.rows(0, Ma));
        b.run_modules(cfg.attn_modules, [&](int j) {
          const int64_t r0 = pa.offsets[j], r1 = pa.offsets[j + 1];
          if (r0 == r1) return;
          b.matmul_forward(s.proj_rows.rows(r0, r1), s.o_rows.rows(r0, r1), param("attn", "proj_weight", j),
                           param("attn", "proj_bias", j));
        });
        b.combine_rows(x, s.proj_rows, s.attn.slot, s.attn.weight);
      }
      // ---- FFN assembly: per-module MLP on its rows, combined with the routing weights.
      b.copy(s.xf, x);
      route(s.ffn, cfg.ffn_routing, router_ffn.get(), cfg.ffn_modules, Kf, h, x, true);
      const auto& pf = s.ffn.plan;
      const int64_t Mf = pf.M();
      b.gather_rows(s.f_in.rows(0, Mf), x, s.ffn.rows.rows(0, Mf));
      b.run_modules(cfg.ffn_modules, [&](int j) {
        const int64_t r0 = pf.offsets[j], r1 = pf.offsets[j + 1];
        if (r0 == r1) return;
        mlp_sublayer_forward(b, mlp("ffn", j, false), rows_of(s.f_stash, r0, r1), s.f_in.rows(r0, r1),
                             s.f_out.rows(r0, r1), eps);
      });
      if (cfg.shared_expert) mlp_sublayer_forward(b, mlp("shared", 0, false), s.shared_stash, s.xf, branch, eps);
      b.combine_rows(x, s.f_out, s.ffn.slot, s.ffn.weight);
      if (cfg.shared_expert) b.accumulate(x, branch);
    }
  }

  // The scratch buffers are sized for the widest side; a side uses their first N·width
  // elements, viewed as [N, width].
  Tensor leading_view(const Tensor& buffer, int width) const {
    Tensor t = buffer;
    t.shape = Shape{N, width};
    return t;
  }

  AttentionWeights attn_weights(int j, bool grads) const {
    auto g = [&](const char* n) { return grads ? grad("attn", n, j) : param("attn", n, j); };
    return {g("ln_weight"), g("ln_bias"), g("qkv_weight"), g("qkv_bias"), g("proj_weight"), g("proj_bias")};
  }
  // The dense sub-layer's stash, carved from a step's buffers (Single routing: N rows).
  AttentionStash single_stash(const StepStash& s) const {
    return {s.a_ln.rows(0, N), s.a_mean.rows(0, N), s.a_rstd.rows(0, N), s.qkv, s.att, s.probs};
  }

  static MlpStash rows_of(const MlpStash& m, int64_t r0, int64_t r1) {
    return {m.ln.rows(r0, r1), m.ln_mean.rows(r0, r1), m.ln_rstd.rows(r0, r1), m.fc.rows(r0, r1), m.gelu.rows(r0, r1)};
  }
  static MlpScratch rows_of(const MlpScratch& m, int64_t r0, int64_t r1) {
    return {m.dln.rows(r0, r1), m.dfc.rows(r0, r1), m.dgelu.rows(r0, r1)};
  }

  // ∂L/∂g (device dweight) and the aux losses -> ∂L/∂logits -> the router network, into dres.
  void router_backward(Side& side, RoutingMode mode, router::RouterNet* net, int modules, int K, int h, const Tensor& x,
                       const Tensor& dres, double loss_scale) {
    if (mode != RoutingMode::Learned) return;
    const int classes = classes_of(cfg, modules);
    std::vector<double> dw(static_cast<size_t>(N) * K);
    to_host(dw.data(), leading_view(dweight, K));
    std::vector<double> extra;
    if (!side.dprobs_aux.empty()) {
      extra = side.dprobs_aux;
      for (double& v : extra) v *= loss_scale;
    }
    std::vector<double> dl(static_cast<size_t>(N) * classes, 0.0);
    const router::GateConfig gc{classes, modules, K, cfg.temperature, cfg.sigmoid, cfg.renormalise};
    router::gate_backward(gc, side.sel, dw.data(), extra.empty() ? nullptr : extra.data(), dl.data());
    if (cfg.z_coef > 0)
      router::z_loss(side.logits.data(), N, classes, cfg.z_coef * aux_scale / cfg.steps * loss_scale, dl.data());
    const Tensor dlg = leading_view(dlogits, classes);
    from_host(dlg, dl.data());
    net->backward(h, x, dlg, dres);
  }

  void backward(const Tensor& dres, double loss_scale) {
    Backend& b = be();
    for (int h = cfg.steps - 1; h >= 0; --h) {
      StepStash& s = steps[h];
      // ---- FFN assembly backward. dy = ∂L/∂(x after the FFN); dres keeps the identity path.
      {
        const auto& pf = s.ffn.plan;
        const int64_t Mf = pf.M();
        b.copy(dy, dres);
        const Tensor dwf = leading_view(dweight, Kf);
        b.zero(dwf);
        b.zero(d_ffn_out);
        b.combine_rows_backward(d_ffn_out, dwf, dy, s.f_out, s.ffn.slot, s.ffn.weight);
        b.zero(d_in_rows);
        b.run_modules(cfg.ffn_modules, [&](int j) {
          const int64_t r0 = pf.offsets[j], r1 = pf.offsets[j + 1];
          if (r0 == r1) return;
          mlp_sublayer_backward(b, mlp("ffn", j, false), mlp("ffn", j, true), rows_of(s.f_stash, r0, r1),
                                rows_of(mlp_scratch, r0, r1), s.f_in.rows(r0, r1), d_ffn_out.rows(r0, r1),
                                d_in_rows.rows(r0, r1));
        });
        if (cfg.shared_expert)
          mlp_sublayer_backward(b, mlp("shared", 0, false), mlp("shared", 0, true), s.shared_stash,
                                rows_of(mlp_scratch, 0, N), s.xf, dy, dres);
        b.combine_rows(dres, d_in_rows.rows(0, std::max<int64_t>(Mf, 1)), s.ffn.slot, Tensor{});
        router_backward(s.ffn, cfg.ffn_routing, router_ffn.get(), cfg.ffn_modules, Kf, h, s.xf, dres, loss_scale);
      }
      // ---- attention assembly backward.
      if (cfg.attn_routing == RoutingMode::Single) {
        const AttentionScratch scratch{d_a_rows.rows(0, N), dqkv, datt};
        attention_sublayer_backward(b, attn_weights(0, false), attn_weights(0, true), single_stash(s), scratch, s.xa,
                                    dres, dres, {B, T, n_head, eps});
      } else {
        const auto& pa = s.attn.plan;
        const int64_t Ma = pa.M();
        b.copy(dy, dres);
        const Tensor dwa = leading_view(dweight, Ka);
        b.zero(dwa);
        b.zero(d_a_rows);
        b.combine_rows_backward(d_a_rows, dwa, dy, s.proj_rows, s.attn.slot, s.attn.weight);
        b.zero(d_in_rows);  // here: ∂L/∂o_rows
        b.run_modules(cfg.attn_modules, [&](int j) {
          const int64_t r0 = pa.offsets[j], r1 = pa.offsets[j + 1];
          if (r0 == r1) return;
          b.matmul_backward(d_in_rows.rows(r0, r1), grad("attn", "proj_weight", j), grad("attn", "proj_bias", j),
                            d_a_rows.rows(r0, r1), s.o_rows.rows(r0, r1), param("attn", "proj_weight", j));
        });
        b.zero(datt);
        b.combine_rows(datt, d_in_rows, s.attn.slot, Tensor{});
        b.zero(dqkv);
        b.attention_backward(dqkv.reshaped(Shape{B, T, 3 * C}), datt.reshaped(Shape{B, T, C}),
                             s.qkv.reshaped(Shape{B, T, 3 * C}), s.probs, n_head);
        b.zero(d_qkv_rows);
        b.combine_rows_backward(d_qkv_rows, cfg.weighted_qkv ? dwa : Tensor{}, dqkv, s.a_qkv_rows, s.attn.slot,
                                cfg.weighted_qkv ? s.attn.weight : Tensor{});
        b.zero(d_a_rows);   // here: ∂L/∂LN output rows
        b.zero(d_in_rows);  // here: ∂L/∂gathered x rows
        b.run_modules(cfg.attn_modules, [&](int j) {
          const int64_t r0 = pa.offsets[j], r1 = pa.offsets[j + 1];
          if (r0 == r1) return;
          b.matmul_backward(d_a_rows.rows(r0, r1), grad("attn", "qkv_weight", j), grad("attn", "qkv_bias", j),
                            d_qkv_rows.rows(r0, r1), s.a_ln.rows(r0, r1), param("attn", "qkv_weight", j));
          b.layernorm_backward(d_in_rows.rows(r0, r1), grad("attn", "ln_weight", j), grad("attn", "ln_bias", j),
                               d_a_rows.rows(r0, r1), s.a_in.rows(r0, r1), param("attn", "ln_weight", j),
                               s.a_mean.rows(r0, r1), s.a_rstd.rows(r0, r1));
        });
        b.combine_rows(dres, d_in_rows.rows(0, std::max<int64_t>(Ma, 1)), s.attn.slot, Tensor{});
        router_backward(s.attn, cfg.attn_routing, router_attn.get(), cfg.attn_modules, Ka, h, s.xa, dres, loss_scale);
      }
    }
  }
};

RoutedStage::RoutedStage(const RoutedStageConfig& cfg, const ParameterStore& params, const std::string& prefix, int C,
                         int n_head, double ln_eps)
    : impl_(std::make_unique<Impl>(cfg, params, prefix, C, n_head, ln_eps)), cfg_(cfg) {}

RoutedStage::~RoutedStage() = default;

void RoutedStage::prepare(int B, int T) { impl_->prepare(B, T); }

void RoutedStage::forward(const Tensor& x_in, const Tensor& x_out, double aux_scale) {
  impl_->aux_scale = aux_scale;
  impl_->forward(x_in, x_out);
}

void RoutedStage::backward(const Tensor& dres, double loss_scale) { impl_->backward(dres, loss_scale); }

double RoutedStage::aux_loss() const {
  double s = 0;
  for (const auto& st : impl_->steps) s += st.attn.balance + st.attn.z + st.ffn.balance + st.ffn.z;
  return s;
}

nlohmann::json RoutedStage::stats() const {
  nlohmann::json out = nlohmann::json::array();
  for (size_t h = 0; h < impl_->steps.size(); ++h) {
    const StepStash& s = impl_->steps[h];
    nlohmann::json step;
    for (auto [name, side, mode] :
         {std::tuple{"attn", &s.attn, cfg_.attn_routing}, std::tuple{"ffn", &s.ffn, cfg_.ffn_routing}}) {
      if (mode != RoutingMode::Learned) continue;
      step[name] = {{"load", side->stats.load},
                    {"skip_rate", side->stats.skip_rate},
                    {"entropy", side->stats.entropy},
                    {"dropped", side->stats.dropped}};
    }
    out.push_back(step);
  }
  return out;
}

}  // namespace mom
