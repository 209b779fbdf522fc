#include "core/layers/routed_stage.h"

#include <cmath>

#include "core/error.h"
#include "core/layers/attention_sublayer.h"
#include "core/layers/mlp_sublayer.h"
#include "parallel/process_groups.h"
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

// `pool`: the module axis is sharded over the expert-parallel group (false for the shared
// expert, which every rank holds).
std::vector<ParamSpec> mlp_pool_specs(const std::string& p, int64_t n, int64_t C, double resid_std, bool pool) {
  return {{p + "ln_weight", Shape{n, C}, false, 0, 1, pool},
          {p + "ln_bias", Shape{n, C}, false, 0, 0, pool},
          {p + "fc_weight", Shape{n, 4 * C, C}, true, 0.02, 0, pool},
          {p + "fc_bias", Shape{n, 4 * C}, false, 0, 0, pool},
          {p + "proj_weight", Shape{n, C, 4 * C}, true, resid_std, 0, pool},
          {p + "proj_bias", Shape{n, C}, false, 0, 0, pool}};
}

// Tensors sized by the rows the all-to-all delivers, known only once it has run: carved from
// an arena that grows to the largest need seen (a quarter more each time, so growth stops).
class GrowingArena {
 public:
  Arena& fresh(Backend& be, size_t bytes) {
    if (!arena_ || arena_->capacity() < bytes) {
      arena_.reset();
      arena_ = std::make_unique<Arena>(be, bytes + bytes / 4 + 64);
    }
    arena_->reset();
    return *arena_;
  }

 private:
  std::unique_ptr<Arena> arena_;
};

// Carves `shapes` from a growing arena (sized first by an ArenaPlan).
std::vector<Tensor> carve(GrowingArena& g, Backend& be, DType f, std::initializer_list<Shape> shapes) {
  ArenaPlan plan;
  for (const Shape& s : shapes) plan.add(s, f);
  Arena& a = g.fresh(be, plan.bytes());
  std::vector<Tensor> out;
  for (const Shape& s : shapes) out.push_back(a.alloc(s, f));
  return out;
}

}  // namespace

std::vector<ParamSpec> routed_stage_param_specs(const RoutedStageConfig& c, int C64, const std::string& prefix,
                                                double resid_std) {
  const int64_t C = C64, NA = c.attn_modules, NF = c.ffn_modules;
  // MoE's single attention module is a dense layer that every rank holds.
  const bool ap = c.attn_routing != RoutingMode::Single;
  std::vector<ParamSpec> s = {{prefix + "attn/ln_weight", Shape{NA, C}, false, 0, 1, ap},
                              {prefix + "attn/ln_bias", Shape{NA, C}, false, 0, 0, ap},
                              {prefix + "attn/qkv_weight", Shape{NA, 3 * C, C}, true, 0.02, 0, ap},
                              {prefix + "attn/qkv_bias", Shape{NA, 3 * C}, false, 0, 0, ap},
                              {prefix + "attn/proj_weight", Shape{NA, C, C}, true, resid_std, 0, ap},
                              {prefix + "attn/proj_bias", Shape{NA, C}, false, 0, 0, ap}};
  for (auto& p : mlp_pool_specs(prefix + "ffn/", NF, C, resid_std, true)) s.push_back(p);
  if (c.attn_routing == RoutingMode::Learned)
    for (auto& p : router::router_param_specs(router_cfg(c, C64, c.attn_modules), prefix + "router_attn/"))
      s.push_back(p);
  if (c.ffn_routing == RoutingMode::Learned)
    for (auto& p : router::router_param_specs(router_cfg(c, C64, c.ffn_modules), prefix + "router_ffn/"))
      s.push_back(p);
  if (c.shared_expert)
    for (auto& p : mlp_pool_specs(prefix + "shared/", 1, C, resid_std, false)) s.push_back(p);
  return s;
}

// One routing side (attention or FFN) at one step: the decision, its device copies, and where
// its modules compute. With ep_size 1 the modules work on the plan-order rows themselves;
// otherwise the rows travel to the ranks owning the modules and back (TokenExchange).
struct Side {
  router::Selection sel;
  router::DispatchPlan plan;
  std::vector<double> logits;      // host copy, for the z-loss gradient
  std::vector<double> dprobs_aux;  // ∂(balance loss)/∂p, before the loss scale
  router::RoutingStats stats;
  double balance = 0, z = 0;        // scaled loss values
  Tensor rows, slot, weight;        // device: I32 [N·K], I32 [N,K], [N,K]
  parallel::ExchangeLayout layout;  // ep_size > 1: this routing's counts and row order
  std::vector<int64_t> offsets;     // local module l computes rows [offsets[l], offsets[l+1])
  GrowingArena local;               // ep_size > 1: the module-side tensors below
  int64_t R() const { return offsets.back(); }
};

// Plan-order tensors hold this rank's M = N·K routed rows; module-side tensors hold the R rows
// this rank's modules compute (the same tensors when ep_size is 1).
struct StepStash {
  Tensor xa, xf;  // residual before the attention and before the FFN assembly
  Side attn, ffn;
  // attention: plan order
  Tensor a_rows, a_qkv_rows, o_rows, proj_rows, qkv, probs, att;
  // attention: module side
  Tensor a_in, a_ln, a_mean, a_rstd, a_qkv, o_in, a_proj;
  // FFN: plan order, module side
  Tensor f_rows, f_out, f_in, f_res;
  MlpStash f_stash, shared_stash;
};

struct RoutedStage::Impl {
  const RoutedStageConfig cfg;
  const ParameterStore& P;
  const std::string prefix;
  const int C, n_head;
  const double eps;
  const int ep_size;  // ranks sharing the pools; each holds NA/ep_size and NF/ep_size modules
  const int local_attn, local_ffn;
  std::unique_ptr<router::RouterNet> router_attn, router_ffn;
  std::unique_ptr<parallel::TokenExchange> attn_exchange, ffn_exchange;
  int B = 0, T = 0, N = 0, Ka = 1, Kf = 1;
  std::unique_ptr<Arena> arena;
  std::vector<StepStash> steps;
  // scratch, shared by all steps (plan order)
  Tensor logits, dlogits, dweight, dy, datt, dqkv, d_in_rows, d_a_rows, d_qkv_rows, branch;
  MlpScratch mlp_scratch;
  Tensor d_ffn_out;
  GrowingArena backward_local;  // ep_size > 1: module-side gradients
  double aux_scale = 1;
  std::vector<uint8_t> disabled_attn, disabled_ffn;  // per router class; empty: none (ablation)

  Impl(const RoutedStageConfig& c, const ParameterStore& p, std::string pre, int c_, int nh, double e, Communicator* ep)
      : cfg(c),
        P(p),
        prefix(std::move(pre)),
        C(c_),
        n_head(nh),
        eps(e),
        ep_size(ep ? ep->size() : 1),
        local_attn(c.attn_routing == RoutingMode::Single ? 1 : c.attn_modules / ep_size),
        local_ffn(c.ffn_modules / ep_size) {
    if (cfg.attn_routing == RoutingMode::Learned)
      router_attn =
          std::make_unique<router::RouterNet>(router_cfg(cfg, C, cfg.attn_modules), P, prefix + "router_attn/");
    if (cfg.ffn_routing == RoutingMode::Learned)
      router_ffn = std::make_unique<router::RouterNet>(router_cfg(cfg, C, cfg.ffn_modules), P, prefix + "router_ffn/");
    Ka = cfg.attn_routing == RoutingMode::Learned ? cfg.top_k : 1;
    Kf = cfg.ffn_routing == RoutingMode::Learned ? cfg.top_k : 1;
    if (ep_size > 1) {
      if (cfg.attn_routing != RoutingMode::Single)
        attn_exchange =
            std::make_unique<parallel::TokenExchange>(*ep, parallel::ModuleSharding(cfg.attn_modules, ep_size));
      ffn_exchange = std::make_unique<parallel::TokenExchange>(*ep, parallel::ModuleSharding(cfg.ffn_modules, ep_size));
    }
  }

  Backend& be() const { return P.backend(); }
  // Module j of a pool, by its index on this rank.
  Tensor param(const char* side, const char* name, int j) const { return P.param(prefix + side + "/" + name)[j]; }
  Tensor grad(const char* side, const char* name, int j) const { return P.grad(prefix + side + "/" + name)[j]; }
  MlpWeights mlp(const char* side, int j, bool grads) const {
    auto g = [&](const char* n) { return grads ? grad(side, n, j) : param(side, n, j); };
    return {g("ln_weight"), g("ln_bias"), g("fc_weight"), g("fc_bias"), g("proj_weight"), g("proj_bias")};
  }

  // Decoding: the step's rows while decode() runs (null when training), and each assembly
  // step's keys and values (one cache for MoE's dense attention).
  const DecodeRows* decoding = nullptr;
  bool laid_out_for_decoding = false;
  std::vector<KvCache> caches;

  // Storage for B·T tokens (decoding: for a step's rows, without what only backward needs).
  void prepare(int B_, int T_, bool for_decoding = false) {
    if (arena && B_ == B && T_ == T && for_decoding == laid_out_for_decoding) return;
    laid_out_for_decoding = for_decoding;
    B = B_, T = T_, N = B * T;
    const int64_t n = N, Ma = n * Ka, Mf = n * Kf, c = C, H = cfg.steps;
    const int64_t max_classes = std::max(classes_of(cfg, cfg.attn_modules), classes_of(cfg, cfg.ffn_modules));
    const int64_t Kmax = std::max(Ka, Kf), Mmax = std::max(Ma, Mf);
    const DType f = P.dtype(), i32 = DType::I32;
    // With ep_size 1 the module side is the plan-order tensors (aliases, filled in route()).
    const bool local = ep_size == 1;
    auto layout = [&](auto&& t) {
      for (int64_t h = 0; h < H; ++h) {
        StepStash& s = steps[h];
        s.xa = t(Shape{n, c}, f), s.xf = t(Shape{n, c}, f);
        for (Side* side : {&s.attn, &s.ffn}) {
          const int64_t K = side == &s.attn ? Ka : Kf;
          side->rows = t(Shape{n * K}, i32), side->slot = t(Shape{n, K}, i32), side->weight = t(Shape{n, K}, f);
        }
        s.a_rows = t(Shape{Ma, c}, f), s.a_qkv_rows = t(Shape{Ma, 3 * c}, f), s.qkv = t(Shape{n, 3 * c}, f);
        s.probs = for_decoding ? Tensor{} : t(Shape{B, n_head, T, T}, f);
        s.att = t(Shape{n, c}, f);
        s.o_rows = t(Shape{Ma, c}, f), s.proj_rows = t(Shape{Ma, c}, f);
        s.f_rows = t(Shape{Mf, c}, f), s.f_out = t(Shape{Mf, c}, f);
        // The attention LN stash is needed in plan order by Single routing (the dense
        // sub-layer, N rows) and on the module side otherwise.
        if (local || cfg.attn_routing == RoutingMode::Single)
          s.a_ln = t(Shape{Ma, c}, f), s.a_mean = t(Shape{Ma}, f), s.a_rstd = t(Shape{Ma}, f);
        if (local)
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
    steps.clear();
    steps.resize(static_cast<size_t>(H));
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

  // Routing decision for one side at step h: selection, plan, aux losses, device copies, and
  // (ep_size > 1) the count exchange that says how many rows this rank's modules receive.
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
      const router::GateConfig gc{
          classes, modules, K, cfg.temperature, cfg.sigmoid, cfg.renormalise, is_ffn ? disabled_ffn : disabled_attn};
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
    // Decoding is dropless: a token's route must not depend on the other rows of its step.
    const router::CapacityConfig cap = is_ffn && !decoding ? cfg.capacity : router::CapacityConfig{};
    side.plan = router::make_plan(side.sel, modules, cap);
    side.stats = router::routing_stats(side.sel, side.plan, modules);
    be().copy_from_host(side.rows.rows(0, side.plan.M()), side.plan.rows.data());
    be().copy_from_host(side.slot, side.plan.slot.data());
    from_host(side.weight, side.sel.weight.data());
    parallel::TokenExchange* ex = is_ffn ? ffn_exchange.get() : attn_exchange.get();
    if (ex) {
      side.layout = ex->exchange_counts(side.plan);
      side.offsets = side.layout.offsets;
    } else {
      side.offsets = side.plan.offsets;
    }
  }

  // Sets the module-side tensors of a step's side: views of the plan-order tensors with
  // ep_size 1, else fresh tensors of R rows.
  void place_attention(StepStash& s) {
    const int64_t Ma = s.attn.plan.M(), R = s.attn.R(), c = C;
    if (ep_size == 1) {
      s.a_in = s.a_rows.rows(0, Ma), s.a_qkv = s.a_qkv_rows.rows(0, Ma), s.o_in = s.o_rows.rows(0, Ma),
      s.a_proj = s.proj_rows.rows(0, Ma);
      return;
    }
    const auto t = carve(s.attn.local, be(), P.dtype(),
                         {Shape{R, c}, Shape{R, c}, Shape{R}, Shape{R}, Shape{R, 3 * c}, Shape{R, c}, Shape{R, c}});
    s.a_in = t[0], s.a_ln = t[1], s.a_mean = t[2], s.a_rstd = t[3], s.a_qkv = t[4], s.o_in = t[5], s.a_proj = t[6];
  }
  void place_ffn(StepStash& s) {
    const int64_t Mf = s.ffn.plan.M(), R = s.ffn.R(), c = C;
    if (ep_size == 1) {
      s.f_in = s.f_rows.rows(0, Mf), s.f_res = s.f_out.rows(0, Mf);
      return;
    }
    const auto t = carve(s.ffn.local, be(), P.dtype(),
                         {Shape{R, c}, Shape{R, c}, Shape{R, c}, Shape{R}, Shape{R}, Shape{R, 4 * c}, Shape{R, 4 * c}});
    s.f_in = t[0], s.f_res = t[1], s.f_stash = {t[2], t[3], t[4], t[5], t[6]};
  }

  // Plan-order rows -> the rows of this rank's modules, and back (no-ops with ep_size 1,
  // where both sides are the same memory).
  void to_owners(parallel::TokenExchange* ex, const Side& side, const Tensor& plan_rows, const Tensor& local) {
    if (!ex) return;
    be().synchronize();
    ex->to_owners(side.layout, plan_rows.data, row_bytes(local), local.data);
  }
  void to_sources(parallel::TokenExchange* ex, const Side& side, const Tensor& local, const Tensor& plan_rows) {
    if (!ex) return;
    be().synchronize();
    ex->to_sources(side.layout, local.data, row_bytes(local), plan_rows.data);
  }
  // Bytes of one row (the dimensions after the first), also when the tensor has no rows.
  static size_t row_bytes(const Tensor& t) {
    size_t n = dtype_size(t.dtype);
    for (int d = 1; d < t.shape.rank; ++d) n *= static_cast<size_t>(t.shape[d]);
    return n;
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

  // Runs `body(l, r0, r1)` for each local module l with rows, one module per task. Only the
  // modules with rows are handed to run_modules: when one module has them all (forced
  // routing, a collapsed router) it runs alone with every thread, exactly as a dense layer.
  template <class F>
  void for_modules(const Side& side, int local_modules, F&& body) {
    std::vector<int> busy;
    for (int l = 0; l < local_modules; ++l)
      if (side.offsets[l] != side.offsets[l + 1]) busy.push_back(l);
    be().run_modules(static_cast<int>(busy.size()), [&](int i) {
      const int l = busy[static_cast<size_t>(i)];
      body(l, side.offsets[l], side.offsets[l + 1]);
    });
  }

  void forward(const Tensor& x_in, const Tensor& x) {
    Backend& b = be();
    if (x.data != x_in.data) b.copy(x, x_in);
    for (int h = 0; h < cfg.steps; ++h) {
      StepStash& s = steps[h];
      // ---- attention assembly: per-module LN + QKV, summed; one shared causal attention;
      // per-module output projection, combined with the routing weights. With ep_size > 1 the
      // rows go to the module owners twice: before the QKV and before the output projection.
      b.copy(s.xa, x);
      if (cfg.attn_routing == RoutingMode::Single) {
        // One module, every token, weight 1 (MoE's attention): the dense sub-layer itself, no
        // dispatch.
        if (decoding) {
          const AttentionWeights w = attn_weights(0, false);
          const AttentionStash st = single_stash(s);
          b.layernorm_forward(st.ln, st.ln_mean, st.ln_rstd, x, w.ln_w, w.ln_b, eps);
          b.matmul_forward(st.qkv, st.ln, w.qkv_w, w.qkv_b);
          b.attention_forward_cached(st.atty, st.qkv, caches[0].k, caches[0].v, decoding->slot, decoding->pos, n_head);
          b.matmul_forward(branch, st.atty, w.proj_w, w.proj_b);
        } else {
          attention_sublayer_forward(b, attn_weights(0, false), single_stash(s), x, branch, {B, T, n_head, eps});
        }
        b.accumulate(x, branch);
      } else {
        route(s.attn, cfg.attn_routing, router_attn.get(), cfg.attn_modules, Ka, h, x, false);
        place_attention(s);
        parallel::TokenExchange* ex = attn_exchange.get();
        const int64_t Ma = s.attn.plan.M();
        b.gather_rows(s.a_rows.rows(0, Ma), x, s.attn.rows.rows(0, Ma));
        to_owners(ex, s.attn, s.a_rows.rows(0, Ma), s.a_in);
        for_modules(s.attn, local_attn, [&](int l, int64_t r0, int64_t r1) {
          b.layernorm_forward(s.a_ln.rows(r0, r1), s.a_mean.rows(r0, r1), s.a_rstd.rows(r0, r1), s.a_in.rows(r0, r1),
                              param("attn", "ln_weight", l), param("attn", "ln_bias", l), eps);
          b.matmul_forward(s.a_qkv.rows(r0, r1), s.a_ln.rows(r0, r1), param("attn", "qkv_weight", l),
                           param("attn", "qkv_bias", l));
        });
        to_sources(ex, s.attn, s.a_qkv, s.a_qkv_rows.rows(0, Ma));
        b.zero(s.qkv);
        b.combine_rows(s.qkv, s.a_qkv_rows, s.attn.slot, cfg.weighted_qkv ? s.attn.weight : Tensor{});
        if (decoding)
          b.attention_forward_cached(s.att, s.qkv, caches[h].k, caches[h].v, decoding->slot, decoding->pos, n_head);
        else
          b.attention_forward(s.att.reshaped(Shape{B, T, C}), s.probs, s.qkv.reshaped(Shape{B, T, 3 * C}), n_head);
        b.gather_rows(s.o_rows.rows(0, Ma), s.att, s.attn.rows.rows(0, Ma));
        to_owners(ex, s.attn, s.o_rows.rows(0, Ma), s.o_in);
        for_modules(s.attn, local_attn, [&](int l, int64_t r0, int64_t r1) {
          b.matmul_forward(s.a_proj.rows(r0, r1), s.o_in.rows(r0, r1), param("attn", "proj_weight", l),
                           param("attn", "proj_bias", l));
        });
        to_sources(ex, s.attn, s.a_proj, s.proj_rows.rows(0, Ma));
        b.combine_rows(x, s.proj_rows, s.attn.slot, s.attn.weight);
      }
      // ---- FFN assembly: per-module MLP on its rows, combined with the routing weights.
      b.copy(s.xf, x);
      route(s.ffn, cfg.ffn_routing, router_ffn.get(), cfg.ffn_modules, Kf, h, x, true);
      place_ffn(s);
      const int64_t Mf = s.ffn.plan.M();
      b.gather_rows(s.f_rows.rows(0, Mf), x, s.ffn.rows.rows(0, Mf));
      to_owners(ffn_exchange.get(), s.ffn, s.f_rows.rows(0, Mf), s.f_in);
      for_modules(s.ffn, local_ffn, [&](int l, int64_t r0, int64_t r1) {
        mlp_sublayer_forward(b, mlp("ffn", l, false), rows_of(s.f_stash, r0, r1), s.f_in.rows(r0, r1),
                             s.f_res.rows(r0, r1), eps);
      });
      to_sources(ffn_exchange.get(), s.ffn, s.f_res, s.f_out.rows(0, Mf));
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
    const router::GateConfig gc{classes,
                                modules,
                                K,
                                cfg.temperature,
                                cfg.sigmoid,
                                cfg.renormalise,
                                &side == &steps[h].ffn ? disabled_ffn : disabled_attn};
    router::gate_backward(gc, side.sel, dw.data(), extra.empty() ? nullptr : extra.data(), dl.data());
    if (cfg.z_coef > 0)
      router::z_loss(side.logits.data(), N, classes, cfg.z_coef * aux_scale / cfg.steps * loss_scale, dl.data());
    const Tensor dlg = leading_view(dlogits, classes);
    from_host(dlg, dl.data());
    net->backward(h, x, dlg, dres);
  }

  // Backward of a side's weighted combine: dy = ∂L/∂(x after the side) (dres keeps the identity
  // path), ∂L/∂(plan-order module outputs) into `doutputs`, ∂L/∂(routing weights) into the
  // returned view of dweight.
  Tensor combine_backward(const Side& side, int K, const Tensor& dres, const Tensor& outputs, const Tensor& doutputs) {
    Backend& b = be();
    b.copy(dy, dres);
    const Tensor dw = leading_view(dweight, K);
    b.zero(dw);
    b.zero(doutputs);
    b.combine_rows_backward(doutputs, dw, dy, outputs, side.slot, side.weight);
    return dw;
  }

  void backward(const Tensor& dres, double loss_scale) {
    Backend& b = be();
    const DType f = P.dtype();
    const int64_t c = C;
    for (int h = cfg.steps - 1; h >= 0; --h) {
      StepStash& s = steps[h];
      // ---- FFN assembly backward.
      {
        parallel::TokenExchange* ex = ffn_exchange.get();
        const int64_t Mf = s.ffn.plan.M(), R = s.ffn.R();
        combine_backward(s.ffn, Kf, dres, s.f_out, d_ffn_out);
        // Module side: ∂L/∂outputs, ∂L/∂inputs and the MLP's scratch, for R rows.
        Tensor dl_out = d_ffn_out.rows(0, Mf), dl_in = d_in_rows.rows(0, Mf);
        MlpScratch scratch = mlp_scratch;
        if (ex) {
          const auto t =
              carve(backward_local, b, f, {Shape{R, c}, Shape{R, c}, Shape{R, c}, Shape{R, 4 * c}, Shape{R, 4 * c}});
          dl_out = t[0], dl_in = t[1], scratch = {t[2], t[3], t[4]};
          to_owners(ex, s.ffn, d_ffn_out.rows(0, Mf), dl_out);
        }
        b.zero(dl_in);
        for_modules(s.ffn, local_ffn, [&](int l, int64_t r0, int64_t r1) {
          mlp_sublayer_backward(b, mlp("ffn", l, false), mlp("ffn", l, true), rows_of(s.f_stash, r0, r1),
                                rows_of(scratch, r0, r1), s.f_in.rows(r0, r1), dl_out.rows(r0, r1), dl_in.rows(r0, r1));
        });
        to_sources(ex, s.ffn, dl_in, d_in_rows.rows(0, Mf));
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
        parallel::TokenExchange* ex = attn_exchange.get();
        const int64_t Ma = s.attn.plan.M(), R = s.attn.R();
        const Tensor dwa = combine_backward(s.attn, Ka, dres, s.proj_rows, d_a_rows);
        // Module side: ∂L/∂(projection out), ∂L/∂(projection in), ∂L/∂QKV, ∂L/∂(LN out),
        // ∂L/∂(module in). With ep_size 1 they share the plan-order scratch, used in turn.
        Tensor dl_proj = d_a_rows.rows(0, Ma), dl_o = d_in_rows.rows(0, Ma), dl_qkv = d_qkv_rows.rows(0, Ma),
               dl_ln = d_a_rows.rows(0, Ma), dl_in = d_in_rows.rows(0, Ma);
        if (ex) {
          const auto t =
              carve(backward_local, b, f, {Shape{R, c}, Shape{R, c}, Shape{R, 3 * c}, Shape{R, c}, Shape{R, c}});
          dl_proj = t[0], dl_o = t[1], dl_qkv = t[2], dl_ln = t[3], dl_in = t[4];
          to_owners(ex, s.attn, d_a_rows.rows(0, Ma), dl_proj);
        }
        b.zero(dl_o);
        for_modules(s.attn, local_attn, [&](int l, int64_t r0, int64_t r1) {
          b.matmul_backward(dl_o.rows(r0, r1), grad("attn", "proj_weight", l), grad("attn", "proj_bias", l),
                            dl_proj.rows(r0, r1), s.o_in.rows(r0, r1), param("attn", "proj_weight", l));
        });
        to_sources(ex, s.attn, dl_o, d_in_rows.rows(0, Ma));
        b.zero(datt);
        b.combine_rows(datt, d_in_rows.rows(0, std::max<int64_t>(Ma, 1)), s.attn.slot, Tensor{});
        b.zero(dqkv);
        b.attention_backward(dqkv.reshaped(Shape{B, T, 3 * C}), datt.reshaped(Shape{B, T, C}),
                             s.qkv.reshaped(Shape{B, T, 3 * C}), s.probs, n_head);
        b.zero(d_qkv_rows);
        b.combine_rows_backward(d_qkv_rows, cfg.weighted_qkv ? dwa : Tensor{}, dqkv, s.a_qkv_rows, s.attn.slot,
                                cfg.weighted_qkv ? s.attn.weight : Tensor{});
        to_owners(ex, s.attn, d_qkv_rows.rows(0, Ma), dl_qkv);
        b.zero(dl_ln);
        b.zero(dl_in);
        for_modules(s.attn, local_attn, [&](int l, int64_t r0, int64_t r1) {
          b.matmul_backward(dl_ln.rows(r0, r1), grad("attn", "qkv_weight", l), grad("attn", "qkv_bias", l),
                            dl_qkv.rows(r0, r1), s.a_ln.rows(r0, r1), param("attn", "qkv_weight", l));
          b.layernorm_backward(dl_in.rows(r0, r1), grad("attn", "ln_weight", l), grad("attn", "ln_bias", l),
                               dl_ln.rows(r0, r1), s.a_in.rows(r0, r1), param("attn", "ln_weight", l),
                               s.a_mean.rows(r0, r1), s.a_rstd.rows(r0, r1));
        });
        to_sources(ex, s.attn, dl_in, d_in_rows.rows(0, Ma));
        b.combine_rows(dres, d_in_rows.rows(0, std::max<int64_t>(Ma, 1)), s.attn.slot, Tensor{});
        router_backward(s.attn, cfg.attn_routing, router_attn.get(), cfg.attn_modules, Ka, h, s.xa, dres, loss_scale);
      }
    }
  }

  parallel::ExchangeStats exchange_stats() const {
    parallel::ExchangeStats sum;
    for (const auto* ex : {attn_exchange.get(), ffn_exchange.get()}) {
      if (!ex) continue;
      const auto& st = ex->stats();
      sum.bytes_sent += st.bytes_sent, sum.bytes_received += st.bytes_received, sum.trips += st.trips,
          sum.seconds += st.seconds;
    }
    return sum;
  }
};

RoutedStage::RoutedStage(const RoutedStageConfig& cfg, const ModelDims& dims, std::string prefix, double aux_scale,
                         Communicator* ep)
    : cfg_(cfg),
      dims_(dims),
      prefix_(std::move(prefix)),
      aux_scale_(aux_scale),
      ep_(ep && ep->size() > 1 ? ep : nullptr) {}

RoutedStage::~RoutedStage() = default;

std::vector<ParamSpec> RoutedStage::param_specs() const {
  return routed_stage_param_specs(cfg_, dims_.C, prefix_, dims_.resid_std);
}

void RoutedStage::bind(const ParameterStore& params) {
  impl_ = std::make_unique<Impl>(cfg_, params, prefix_, dims_.C, dims_.n_head, dims_.eps, ep_);
  impl_->aux_scale = aux_scale_;
}

void RoutedStage::layout(int B, int T, Carver& saved, Carver&) {
  if (saved.planning()) return;
  train_B_ = B, train_T_ = T;
  impl_->prepare(B, T);
}

void RoutedStage::forward(const Tensor& x_in, const Tensor& x_out) {
  impl_->prepare(train_B_, train_T_);  // again if a decoding step used the storage since
  impl_->forward(x_in, x_out);
}

void RoutedStage::prepare_decode(int sequences, int, Carver& scratch) {
  if (scratch.planning()) return;  // the stage sizes its step tensors itself, per step
  impl_->caches.clear();
  impl_->caches.resize(cfg_.attn_routing == RoutingMode::Single ? 1 : static_cast<size_t>(cfg_.steps));
  for (KvCache& c : impl_->caches) c.allocate(impl_->be(), sequences, dims_.n_ctx, dims_.C, impl_->P.dtype());
}

void RoutedStage::decode(const Tensor& x, const DecodeRows& rows) {
  impl_->prepare(1, static_cast<int>(rows.M), /*for_decoding=*/true);
  impl_->decoding = &rows;
  impl_->forward(x, x);
  impl_->decoding = nullptr;
}

void RoutedStage::backward(const Tensor&, const Tensor& dres, double loss_scale) { impl_->backward(dres, loss_scale); }

int64_t RoutedStage::active_parameters() const {
  int64_t per_step = 0;
  for (const ParamSpec& p : param_specs()) {
    const std::string local = p.name.substr(prefix_.size());
    const int64_t n = p.shape.numel();  // global: all modules of the pool
    if (local.rfind("attn/", 0) == 0)
      per_step += n / cfg_.attn_modules * (cfg_.attn_routing == RoutingMode::Learned ? cfg_.top_k : 1);
    else if (local.rfind("ffn/", 0) == 0)
      per_step += n / cfg_.ffn_modules * (cfg_.ffn_routing == RoutingMode::Learned ? cfg_.top_k : 1);
    else
      per_step += n;  // routers and the shared expert run once a step
  }
  return per_step * cfg_.steps;
}

std::vector<RouterTrace> RoutedStage::routing_trace() const {
  std::vector<RouterTrace> out;
  for (size_t h = 0; h < impl_->steps.size(); ++h)
    for (auto [name, side, mode, modules] :
         {std::tuple{"attn", &impl_->steps[h].attn, cfg_.attn_routing, cfg_.attn_modules},
          std::tuple{"ffn", &impl_->steps[h].ffn, cfg_.ffn_routing, cfg_.ffn_modules}}) {
      if (mode != RoutingMode::Learned) continue;
      const router::Selection& sel = side->sel;
      RouterTrace t;
      t.step = static_cast<int>(h), t.router = name, t.N = sel.N, t.K = sel.K, t.classes = sel.classes;
      t.probs = sel.probs, t.weights = sel.weight;
      t.modules.resize(sel.choice.size());
      t.dropped.resize(sel.choice.size());
      for (size_t i = 0; i < sel.choice.size(); ++i) {
        const bool skip = sel.choice[i] >= modules;
        t.modules[i] = skip ? -1 : sel.choice[i];
        t.dropped[i] = !skip && side->plan.slot[i] < 0;
      }
      out.push_back(std::move(t));
    }
  return out;
}

void RoutedStage::disable_modules(const std::string& side, const std::vector<int>& modules) {
  const bool ffn = side == "ffn";
  require(ffn || side == "attn", "stage " + prefix_ + ": no router side '" + side + "' (use attn or ffn)");
  const RoutingMode mode = ffn ? cfg_.ffn_routing : cfg_.attn_routing;
  const int n = ffn ? cfg_.ffn_modules : cfg_.attn_modules;
  require(mode == RoutingMode::Learned, "stage " + prefix_ + side +
                                            ": has no learned router, so its modules cannot "
                                            "be disabled (an MoE layer's attention is one dense module)");
  std::vector<uint8_t>& mask = ffn ? impl_->disabled_ffn : impl_->disabled_attn;
  if (mask.empty()) mask.assign(static_cast<size_t>(n + (cfg_.skip ? 1 : 0)), 0);  // calls add up
  for (int m : modules) {
    require(m >= 0 && m < n, "stage " + prefix_ + side + ": module " + std::to_string(m) + " does not exist (it has " +
                                 std::to_string(n) + ": 0.." + std::to_string(n - 1) + ")");
    mask[static_cast<size_t>(m)] = 1;
  }
}

parallel::ExchangeStats RoutedStage::exchange_stats() const { return impl_->exchange_stats(); }

void RoutedStage::reset_exchange_stats() {
  for (auto* ex : {impl_->attn_exchange.get(), impl_->ffn_exchange.get()})
    if (ex) ex->reset_stats();
}

double RoutedStage::aux_loss() const {
  double s = 0;
  for (const auto& st : impl_->steps) s += st.attn.balance + st.attn.z + st.ffn.balance + st.ffn.z;
  return s;
}

nlohmann::json RoutedStage::routing_stats() const {
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
