#include "core/gpt2.h"

#include <cmath>
#include <stdexcept>

#include "core/error.h"

namespace mom {

std::vector<StackItem> effective_stack(const Gpt2Config& c) {
  if (!c.stack.empty()) return c.stack;
  StackItem dense;
  dense.dense_count = c.n_layer;
  return {dense};
}

std::string stage_prefix(const Gpt2Config& c, int routed_index) {
  int chunks = 0, moes = 0, i = 0;
  for (const auto& item : effective_stack(c)) {
    if (!item.routed) continue;
    const int n = item.stage.moe ? moes++ : chunks++;
    if (i++ == routed_index) return (item.stage.moe ? "moe/" : "chunks/") + std::to_string(n) + "/";
  }
  throw std::logic_error("stage_prefix: no routed stage " + std::to_string(routed_index));
}

std::vector<ParamSpec> gpt2_param_specs(const Gpt2Config& c) {
  const int64_t L = c.n_layer, C = c.n_embd, V = c.vocab_size;
  // Residual projections scale with the depth the residual stream actually sees: dense
  // blocks plus every assembly step of every routed stage.
  int64_t depth = L;
  for (const auto& item : effective_stack(c))
    if (item.routed) depth += item.stage.steps;
  const double std_ = 0.02, resid_std = 0.02 / std::sqrt(2.0 * static_cast<double>(std::max<int64_t>(depth, 1)));
  std::vector<ParamSpec> specs = {
      {"wte", Shape{V, C}, c.decay_embeddings, std_, 0},
      {"wpe", Shape{c.n_ctx, C}, c.decay_embeddings, std_, 0},
  };
  if (L > 0) {
    const std::vector<ParamSpec> blocks = {
        {"blocks/ln1_weight", Shape{L, C}, false, 0, 1},
        {"blocks/ln1_bias", Shape{L, C}, false, 0, 0},
        {"blocks/attn_qkv_weight", Shape{L, 3 * C, C}, true, std_, 0},
        {"blocks/attn_qkv_bias", Shape{L, 3 * C}, false, 0, 0},
        {"blocks/attn_proj_weight", Shape{L, C, C}, true, resid_std, 0},
        {"blocks/attn_proj_bias", Shape{L, C}, false, 0, 0},
        {"blocks/ln2_weight", Shape{L, C}, false, 0, 1},
        {"blocks/ln2_bias", Shape{L, C}, false, 0, 0},
        {"blocks/mlp_fc_weight", Shape{L, 4 * C, C}, true, std_, 0},
        {"blocks/mlp_fc_bias", Shape{L, 4 * C}, false, 0, 0},
        {"blocks/mlp_proj_weight", Shape{L, C, 4 * C}, true, resid_std, 0},
        {"blocks/mlp_proj_bias", Shape{L, C}, false, 0, 0},
    };
    specs.insert(specs.end(), blocks.begin(), blocks.end());
  }
  int r = 0;
  for (const auto& item : effective_stack(c))
    if (item.routed)
      for (auto& p : routed_stage_param_specs(item.stage, c.n_embd, stage_prefix(c, r++), resid_std))
        specs.push_back(p);
  specs.push_back({"ln_f_weight", Shape{C}, false, 0, 1});
  specs.push_back({"ln_f_bias", Shape{C}, false, 0, 0});
  return specs;
}

// Everything forward keeps for backward, plus backward's shared scratch, for one (B, T).
struct Gpt2::Activations {
  int B = 0, T = 0;
  std::unique_ptr<Arena> arena;
  Tensor tokens, targets, losses;
  Tensor encoded;                 // [N, C] embedding output = residual stream into layer 0
  std::vector<Tensor> resid_mid;  // per layer [N, C]: x + attn
  std::vector<Tensor> resid_out;  // per layer [N, C]: block output
  std::vector<Tensor> stage_out;  // per routed stage [N, C]: its output
  std::vector<AttentionStash> attn;
  std::vector<MlpStash> mlp;
  Tensor lnf, lnf_mean, lnf_rstd;
  // scratch
  Tensor branch_out;    // [N, C] a sub-layer's output before the residual add
  Tensor head_scratch;  // [rows, V]
  Tensor dres;          // [N, C] gradient of the residual stream
  AttentionScratch attn_scratch;
  MlpScratch mlp_scratch;
};

Gpt2::Gpt2(const Gpt2Config& cfg, Backend& backend, DType dtype, Communicator* ep)
    : cfg_(cfg), backend_(backend), dtype_(dtype), ep_(ep && ep->size() > 1 ? ep : nullptr) {
  require(cfg.n_embd % cfg.n_head == 0, "model.n_embd (" + std::to_string(cfg.n_embd) +
                                            ") must be divisible by model.n_head (" + std::to_string(cfg.n_head) + ")");
  items_ = effective_stack(cfg);
  int dense = 0;
  for (const auto& item : items_) dense += item.routed ? 0 : item.dense_count;
  require(dense == cfg.n_layer, "model.n_layer (" + std::to_string(cfg.n_layer) +
                                    ") must equal the dense blocks of model.stack (" + std::to_string(dense) + ")");
  const int E = ep_ ? ep_->size() : 1;
  int r = 0;
  for (const auto& item : items_) {
    if (!item.routed) continue;
    const std::string where = "model.stack routed stage " + stage_prefix(cfg, r++);
    for (auto [key, n] :
         {std::pair{"attn_modules", item.stage.attn_modules}, std::pair{"ffn_modules", item.stage.ffn_modules}}) {
      if (std::string(key) == "attn_modules" && item.stage.attn_routing == RoutingMode::Single) continue;
      require(n % E == 0,
              where + ": " +
                  (item.stage.moe && std::string(key) == "ffn_modules" ? std::string("experts") : std::string(key)) +
                  " (" + std::to_string(n) + ") is not a multiple of train.ep_size (" + std::to_string(E) +
                  "); every expert-parallel rank holds an equal share of each pool, so choose pool sizes "
                  "divisible by ep_size or another ep_size");
    }
  }
  params_ =
      std::make_unique<ParameterStore>(backend, dtype, gpt2_param_specs(cfg), PoolShard{ep_ ? ep_->rank() : 0, E});
  r = 0;
  for (const auto& item : items_)
    if (item.routed)
      stages_.push_back(std::make_unique<RoutedStage>(item.stage, *params_, stage_prefix(cfg, r++), cfg.n_embd,
                                                      cfg.n_head, cfg.ln_eps, ep_));
}

parallel::ExchangeStats Gpt2::exchange_stats() const {
  parallel::ExchangeStats sum;
  for (const auto& st : stages_) {
    const auto s = st->exchange_stats();
    sum.bytes_sent += s.bytes_sent, sum.bytes_received += s.bytes_received, sum.trips += s.trips,
        sum.seconds += s.seconds;
  }
  return sum;
}

void Gpt2::reset_exchange_stats() {
  for (auto& st : stages_) st->reset_exchange_stats();
}

// The KV cache and the buffers of incremental decoding, sized for n_ctx rows (a prompt can
// be fed in one call).
struct Gpt2::DecodeState {
  std::unique_ptr<Arena> arena;
  std::vector<Tensor> kcache, vcache;  // per layer [n_ctx, C]
  Tensor tokens, x, ln, mean, rstd, qkv, att, branch, fc, gelu, logits;
};

Gpt2::~Gpt2() = default;

void Gpt2::init_weights(uint64_t seed) { params_->initialize(seed); }

AttentionWeights Gpt2::attn_weights(bool grads, int l) const {
  auto get = [&](const char* name) { return grads ? params_->grad(name)[l] : params_->param(name)[l]; };
  return {get("blocks/ln1_weight"),    get("blocks/ln1_bias"),         get("blocks/attn_qkv_weight"),
          get("blocks/attn_qkv_bias"), get("blocks/attn_proj_weight"), get("blocks/attn_proj_bias")};
}

MlpWeights Gpt2::mlp_weights(bool grads, int l) const {
  auto get = [&](const char* name) { return grads ? params_->grad(name)[l] : params_->param(name)[l]; };
  return {get("blocks/ln2_weight"),  get("blocks/ln2_bias"),        get("blocks/mlp_fc_weight"),
          get("blocks/mlp_fc_bias"), get("blocks/mlp_proj_weight"), get("blocks/mlp_proj_bias")};
}

void Gpt2::prepare(int B, int T) {
  if (act_ && act_->B == B && act_->T == T) return;
  require(T >= 1 && T <= cfg_.n_ctx, "sequence length " + std::to_string(T) + " exceeds the model's context (n_ctx " +
                                         std::to_string(cfg_.n_ctx) + ")");
  const int64_t N = static_cast<int64_t>(B) * T, C = cfg_.n_embd, L = cfg_.n_layer, nh = cfg_.n_head;
  const int64_t V = cfg_.vocab_size;
  // The head works through the logits in chunks of rows; 128 rows keep GEMMs efficient
  // while the chunk stays a few percent of the model's memory.
  const int64_t head_rows = std::min<int64_t>(N, 128);
  const Shape NC{N, C}, N1{N}, N3C{N, 3 * C}, N4C{N, 4 * C}, P{B, nh, T, T};

  // Two passes over one list of allocations: first to size the arena, then to carve it.
  auto layout = [&](auto&& take, Activations* a) {
    auto t = [&](Shape s, DType d = DType::F32) { return take(s, d); };
    const DType f = dtype_;
    Tensor tok = t(N1, DType::I32), tgt = t(N1, DType::I32);
    Tensor losses = t(N1, f), enc = t(NC, f);
    std::vector<Tensor> mid, out;
    std::vector<AttentionStash> at;
    std::vector<MlpStash> ml;
    for (int64_t l = 0; l < L; ++l) {
      at.push_back({t(NC, f), t(N1, f), t(N1, f), t(N3C, f), t(NC, f), t(P, f)});
      mid.push_back(t(NC, f));
      ml.push_back({t(NC, f), t(N1, f), t(N1, f), t(N4C, f), t(N4C, f)});
      out.push_back(t(NC, f));
    }
    std::vector<Tensor> stage_out;
    for (size_t i = 0; i < stages_.size(); ++i) stage_out.push_back(t(NC, f));
    Tensor lnf = t(NC, f), lnf_mean = t(N1, f), lnf_rstd = t(N1, f);
    const size_t saved_end = a ? a->arena->used() : 0;
    Tensor branch = t(NC, f), dres = t(NC, f), dln = t(NC, f);
    // The head's logits chunk is needed only before the blocks' backward starts, so it shares
    // one region with their scratch (dqkv, datty, dfc, dgelu): peak memory is the larger of
    // the two, not the sum.
    ArenaPlan blocks_plan;
    for (Shape s : {N3C, NC, N4C, N4C}) blocks_plan.add(s, f);
    ArenaPlan head_plan;
    head_plan.add(Shape{head_rows, V}, f);
    const int64_t shared_elems = static_cast<int64_t>(std::max(blocks_plan.bytes(), head_plan.bytes()) / dtype_size(f));
    Tensor shared = t(Shape{shared_elems}, f);
    const bool planning = shared.empty();
    Tensor head = planning ? Tensor{} : shared.rows(0, head_rows * V).reshaped(Shape{head_rows, V});
    int64_t offset = 0;
    auto carve = [&](Shape s) {
      Tensor v = planning ? Tensor{} : shared.rows(offset, offset + s.numel()).reshaped(s);
      offset += static_cast<int64_t>(ArenaPlan::aligned_bytes(s, f) / dtype_size(f));
      return v;
    };
    Tensor dqkv = carve(N3C), datty = carve(NC), dfc = carve(N4C), dgelu = carve(N4C);
    AttentionScratch as{dln, dqkv, datty};
    MlpScratch ms{dln, dfc, dgelu};
    if (a) {
      a->tokens = tok, a->targets = tgt, a->losses = losses, a->encoded = enc;
      a->resid_mid = std::move(mid), a->resid_out = std::move(out), a->attn = std::move(at), a->mlp = std::move(ml);
      a->stage_out = std::move(stage_out);
      a->lnf = lnf, a->lnf_mean = lnf_mean, a->lnf_rstd = lnf_rstd;
      a->branch_out = branch, a->head_scratch = head, a->dres = dres, a->attn_scratch = as, a->mlp_scratch = ms;
      saved_bytes_ = saved_end;
    }
  };
  ArenaPlan plan;
  layout(
      [&](Shape s, DType d) {
        plan.add(s, d);
        return Tensor{};
      },
      nullptr);
  act_.reset();
  auto a = std::make_unique<Activations>();
  a->B = B, a->T = T;
  a->arena = std::make_unique<Arena>(backend_, plan.bytes());
  layout([&](Shape s, DType d) { return a->arena->alloc(s, d); }, a.get());
  act_ = std::move(a);
  for (auto& st : stages_) st->prepare(B, T);
}

size_t Gpt2::activation_bytes() const { return act_ ? act_->arena->used() : 0; }

int64_t Gpt2::active_parameters() const {
  int64_t total = 0;
  for (size_t i = 0; i < params_->size(); ++i) {
    const std::string& name = params_->specs()[i].name;
    if (name.rfind("chunks/", 0) != 0 && name.rfind("moe/", 0) != 0) total += params_->specs()[i].shape.numel();
  }
  for (int r = 0; r < static_cast<int>(stages_.size()); ++r) {
    const RoutedStageConfig& st = stages_[r]->config();
    const std::string prefix = stage_prefix(cfg_, r);
    int64_t per_step = 0;
    for (size_t i = 0; i < params_->size(); ++i) {
      const std::string& name = params_->specs()[i].name;
      if (name.rfind(prefix, 0) != 0) continue;
      const std::string local = name.substr(prefix.size());
      const int64_t n = params_->specs()[i].shape.numel();  // global: all modules of the pool
      if (local.rfind("attn/", 0) == 0)
        per_step += n / st.attn_modules * (st.attn_routing == RoutingMode::Learned ? st.top_k : 1);
      else if (local.rfind("ffn/", 0) == 0)
        per_step += n / st.ffn_modules * (st.ffn_routing == RoutingMode::Learned ? st.top_k : 1);
      else
        per_step += n;  // routers and the shared expert run once a step
    }
    total += per_step * st.steps;
  }
  return total;
}

double Gpt2::flops_per_token(int T) const {
  int64_t attention_layers = cfg_.n_layer;
  for (const auto& st : stages_) attention_layers += st->config().steps;
  return 6.0 * static_cast<double>(active_parameters()) + 6.0 * static_cast<double>(attention_layers) * cfg_.n_embd * T;
}

double Gpt2::aux_loss() const {
  double s = 0;
  for (const auto& st : stages_) s += st->aux_loss();
  return s;
}

nlohmann::json Gpt2::routing_stats() const {
  nlohmann::json out = nlohmann::json::array();
  for (int r = 0; r < static_cast<int>(stages_.size()); ++r)
    out.push_back({{"stage", stage_prefix(cfg_, r)}, {"steps", stages_[r]->stats()}});
  return out;
}

void Gpt2::dense_forward(int l, const Tensor& x, int B, int T) {
  Activations& a = *act_;
  const AttentionShape ash{B, T, cfg_.n_head, cfg_.ln_eps};
  attention_sublayer_forward(backend_, attn_weights(false, l), a.attn[l], x, a.branch_out, ash);
  backend_.add(a.resid_mid[l], x, a.branch_out);
  mlp_sublayer_forward(backend_, mlp_weights(false, l), a.mlp[l], a.resid_mid[l], a.branch_out, cfg_.ln_eps);
  backend_.add(a.resid_out[l], a.resid_mid[l], a.branch_out);
}

// a.dres carries ∂L/∂(residual stream) downwards: each sub-layer adds its branch's
// contribution to it in place (the residual's identity path is the value already there).
void Gpt2::dense_backward(int l, const Tensor& x, int B, int T) {
  Activations& a = *act_;
  const AttentionShape ash{B, T, cfg_.n_head, cfg_.ln_eps};
  mlp_sublayer_backward(backend_, mlp_weights(false, l), mlp_weights(true, l), a.mlp[l], a.mlp_scratch, a.resid_mid[l],
                        a.dres, a.dres);
  attention_sublayer_backward(backend_, attn_weights(false, l), attn_weights(true, l), a.attn[l], a.attn_scratch, x,
                              a.dres, a.dres, ash);
}

namespace {
// The aux losses average over stages of a kind (MoM chunks, MoE layers).
double aux_scale_of(const std::vector<std::unique_ptr<RoutedStage>>& stages, const RoutedStage& st) {
  int same = 0;
  for (const auto& s : stages) same += s->config().moe == st.config().moe;
  return 1.0 / same;
}
}  // namespace

void Gpt2::run_forward(const int32_t* tokens, int B, int T) {
  prepare(B, T);
  Activations& a = *act_;
  Backend& be = backend_;
  be.copy_from_host(a.tokens, tokens);
  be.embedding_forward(a.encoded, a.tokens, params_->param("wte"), params_->param("wpe"), T, 0);
  const Tensor* x = &a.encoded;
  int l = 0, r = 0;
  for (const auto& item : items_) {
    if (item.routed) {
      stages_[r]->forward(*x, a.stage_out[r], aux_scale_of(stages_, *stages_[r]));
      x = &a.stage_out[r++];
      continue;
    }
    for (int d = 0; d < item.dense_count; ++d, ++l) {
      dense_forward(l, *x, B, T);
      x = &a.resid_out[l];
    }
  }
  be.layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, *x, params_->param("ln_f_weight"), params_->param("ln_f_bias"),
                       cfg_.ln_eps);
}

namespace {
double mean_loss(Backend& be, const Tensor& losses) {
  const int64_t n = losses.numel();
  double sum = 0;
  if (losses.dtype == DType::F32) {
    std::vector<float> h(static_cast<size_t>(n));
    be.copy_to_host(h.data(), losses);
    for (float x : h) sum += x;
  } else {
    std::vector<double> h(static_cast<size_t>(n));
    be.copy_to_host(h.data(), losses);
    for (double x : h) sum += x;
  }
  return sum / static_cast<double>(n);
}
}  // namespace

double Gpt2::forward(const int32_t* tokens, const int32_t* targets, int B, int T) {
  run_forward(tokens, B, T);
  Activations& a = *act_;
  backend_.copy_from_host(a.targets, targets);
  backend_.xent_head(a.losses, Tensor{}, Tensor{}, a.lnf, params_->param("wte"), a.targets, 0.0, a.head_scratch);
  return mean_loss(backend_, a.losses);
}

double Gpt2::forward_backward(const int32_t* tokens, const int32_t* targets, int B, int T, double grad_scale) {
  run_forward(tokens, B, T);
  Activations& a = *act_;
  Backend& be = backend_;
  ParameterStore& P = *params_;
  be.copy_from_host(a.targets, targets);
  // The head's backward runs inside its forward: dln_f lands in the sub-layers' shared dln.
  Tensor dlnf = a.attn_scratch.dln;
  be.zero(dlnf);
  be.xent_head(a.losses, dlnf, P.grad("wte"), a.lnf, P.param("wte"), a.targets, grad_scale, a.head_scratch);
  // Inputs of every unit of the stack, in order, to walk it backwards.
  std::vector<const Tensor*> inputs;
  const Tensor* x = &a.encoded;
  {
    int l = 0, r = 0;
    for (const auto& item : items_) {
      if (item.routed) {
        inputs.push_back(x);
        x = &a.stage_out[r++];
        continue;
      }
      for (int d = 0; d < item.dense_count; ++d, ++l) inputs.push_back(x), x = &a.resid_out[l];
    }
  }
  be.zero(a.dres);
  be.layernorm_backward(a.dres, P.grad("ln_f_weight"), P.grad("ln_f_bias"), dlnf, *x, P.param("ln_f_weight"),
                        a.lnf_mean, a.lnf_rstd);
  // The aux losses enter the objective once per micro-batch, like the mean cross-entropy.
  const double loss_scale = grad_scale * static_cast<double>(B) * T;
  int unit = static_cast<int>(inputs.size()), l = cfg_.n_layer, r = static_cast<int>(stages_.size());
  for (auto it = items_.rbegin(); it != items_.rend(); ++it) {
    if (it->routed) {
      --unit;
      stages_[--r]->backward(a.dres, loss_scale);
      continue;
    }
    for (int d = 0; d < it->dense_count; ++d) dense_backward(--l, *inputs[--unit], B, T);
  }
  be.embedding_backward(P.grad("wte"), P.grad("wpe"), a.dres, a.tokens, T, 0);
  return mean_loss(be, a.losses);
}

void Gpt2::logits(const int32_t* tokens, int B, int T, std::vector<double>& out) {
  run_forward(tokens, B, T);
  const int64_t N = static_cast<int64_t>(B) * T, V = cfg_.vocab_size;
  ArenaPlan plan;
  plan.add(Shape{N, V}, dtype_);
  Arena arena(backend_, plan.bytes());
  Tensor lg = arena.alloc(Shape{N, V}, dtype_);
  backend_.matmul_forward(lg, act_->lnf, params_->param("wte"), Tensor{});
  out.resize(static_cast<size_t>(N * V));
  if (dtype_ == DType::F64) {
    backend_.copy_to_host(out.data(), lg);
  } else {
    std::vector<float> h(static_cast<size_t>(N * V));
    backend_.copy_to_host(h.data(), lg);
    for (size_t i = 0; i < h.size(); ++i) out[i] = h[i];
  }
}

void Gpt2::decode(const int32_t* tokens, int n, int pos, std::vector<float>& out) {
  require(dtype_ == DType::F32, "decode needs an f32 model");
  require(stages_.empty(), "decode: the KV cache serves dense models; routed models recompute the prefix");
  require(n >= 1 && pos >= 0 && pos + n <= cfg_.n_ctx, "decode: positions " + std::to_string(pos) + ".." +
                                                           std::to_string(pos + n - 1) + " exceed n_ctx " +
                                                           std::to_string(cfg_.n_ctx));
  const int64_t R = cfg_.n_ctx, C = cfg_.n_embd, V = cfg_.vocab_size;
  if (!dec_) {
    auto layout = [&](auto&& take, DecodeState* d) {
      const DType f = DType::F32;
      std::vector<Tensor> k, v;
      for (int l = 0; l < cfg_.n_layer; ++l) k.push_back(take(Shape{R, C}, f)), v.push_back(take(Shape{R, C}, f));
      Tensor tok = take(Shape{R}, DType::I32), x = take(Shape{R, C}, f), ln = take(Shape{R, C}, f);
      Tensor mean = take(Shape{R}, f), rstd = take(Shape{R}, f), qkv = take(Shape{R, 3 * C}, f);
      Tensor att = take(Shape{R, C}, f), br = take(Shape{R, C}, f), fc = take(Shape{R, 4 * C}, f);
      Tensor ge = take(Shape{R, 4 * C}, f), lg = take(Shape{1, V}, f);
      if (d) *d = {nullptr, k, v, tok, x, ln, mean, rstd, qkv, att, br, fc, ge, lg};
    };
    ArenaPlan plan;
    layout(
        [&](Shape s, DType t) {
          plan.add(s, t);
          return Tensor{};
        },
        nullptr);
    auto d = std::make_unique<DecodeState>();
    auto arena = std::make_unique<Arena>(backend_, plan.bytes());
    layout([&](Shape s, DType t) { return arena->alloc(s, t); }, d.get());
    d->arena = std::move(arena);
    dec_ = std::move(d);
  }
  DecodeState& d = *dec_;
  Backend& be = backend_;
  const ParameterStore& P = *params_;
  auto rows = [n](const Tensor& t) { return t.rows(0, n); };
  be.copy_from_host(rows(d.tokens), tokens);
  // positions pos..pos+n-1: the embedding's position is (row mod T) + pos0 with T = n.
  be.embedding_forward(rows(d.x), rows(d.tokens), P.param("wte"), P.param("wpe"), n, pos);
  for (int l = 0; l < cfg_.n_layer; ++l) {
    const AttentionWeights aw = attn_weights(false, l);
    be.layernorm_forward(rows(d.ln), rows(d.mean), rows(d.rstd), rows(d.x), aw.ln_w, aw.ln_b, cfg_.ln_eps);
    be.matmul_forward(rows(d.qkv), rows(d.ln), aw.qkv_w, aw.qkv_b);
    be.attention_forward_cached(rows(d.att), rows(d.qkv), d.kcache[l], d.vcache[l], pos, cfg_.n_head);
    be.matmul_forward(rows(d.branch), rows(d.att), aw.proj_w, aw.proj_b);
    be.accumulate(rows(d.x), rows(d.branch));
    const MlpStash ms{rows(d.ln), rows(d.mean), rows(d.rstd), rows(d.fc), rows(d.gelu)};
    mlp_sublayer_forward(be, mlp_weights(false, l), ms, rows(d.x), rows(d.branch), cfg_.ln_eps);
    be.accumulate(rows(d.x), rows(d.branch));
  }
  const Tensor last = d.x.rows(n - 1, n);
  be.layernorm_forward(d.ln.rows(0, 1), d.mean.rows(0, 1), d.rstd.rows(0, 1), last, P.param("ln_f_weight"),
                       P.param("ln_f_bias"), cfg_.ln_eps);
  be.matmul_forward(d.logits, d.ln.rows(0, 1), P.param("wte"), Tensor{});
  out.resize(static_cast<size_t>(V));
  be.copy_to_host(out.data(), d.logits);
}

void Gpt2::last_logits(const int32_t* tokens, int T, std::vector<float>& out) {
  require(dtype_ == DType::F32, "last_logits needs an f32 model");
  run_forward(tokens, 1, T);
  const int64_t V = cfg_.vocab_size;
  ArenaPlan plan;
  plan.add(Shape{1, V}, dtype_);
  Arena arena(backend_, plan.bytes());
  Tensor lg = arena.alloc(Shape{1, V}, dtype_);
  backend_.matmul_forward(lg, act_->lnf.rows(T - 1, T), params_->param("wte"), Tensor{});
  out.resize(static_cast<size_t>(V));
  backend_.copy_to_host(out.data(), lg);
}

}  // namespace mom
