#include "core/gpt2.h"

#include <functional>
#include <map>
#include <stdexcept>

#include "core/error.h"
#include "core/layers/blocks.h"

namespace mom {

std::vector<StackItem> effective_stack(const Gpt2Config& c) {
  if (!c.stack.empty()) return c.stack;
  StackItem dense;
  dense.count = c.n_layer;
  return {dense};
}

std::string stage_prefix(const Gpt2Config& c, int routed_index) {
  int chunks = 0, moes = 0, i = 0;
  for (const auto& item : effective_stack(c)) {
    if (item.type != BlockType::Routed) continue;
    const int n = item.stage.moe ? moes++ : chunks++;
    if (i++ == routed_index) return (item.stage.moe ? "moe/" : "chunks/") + std::to_string(n) + "/";
  }
  throw std::logic_error("stage_prefix: no routed stage " + std::to_string(routed_index));
}

bool is_dense_gpt2(const Gpt2Config& c) {
  for (const auto& item : effective_stack(c))
    if (item.type != BlockType::Dense) return false;
  return !c.altup.enabled();
}

// Everything the model itself keeps for one (B, T); the blocks lay out their own tensors in
// the same arena: saved ones after these, scratch in the shared region at its end.
struct Gpt2::Activations {
  int B = 0, T = 0;
  std::unique_ptr<Arena> arena;
  Tensor tokens, targets, losses;
  Tensor encoded;           // [N, E] embedding output (E = C, or K·C for wide AltUp)
  Tensor stream_in;         // AltUp: [K·N, C], the widened embedding
  std::vector<Tensor> out;  // per block: its output, [N, C] or AltUp's [K·N, C]
  Tensor summed;            // AltUp: [N, C], the blocks summed before ln_f
  Tensor lnf, lnf_mean, lnf_rstd;
  Tensor dres;          // gradient of the residual stream, shaped like out
  Tensor dlnf, dsum;    // [N, C]: ∂L/∂ln_f's output and (AltUp) ∂L/∂summed
  Tensor dencoded;      // AltUp: [N, E]
  Tensor head, dhead;   // wide AltUp: the tied head's [V, C] weight and its gradient
  Tensor head_scratch;  // [rows, V], in the shared scratch
};

Gpt2::Gpt2(const Gpt2Config& cfg, Backend& backend, DType dtype, Communicator* ep)
    : cfg_(cfg), backend_(backend), dtype_(dtype), ep_(ep && ep->size() > 1 ? ep : nullptr) {
  require(cfg.n_embd % cfg.n_head == 0, "model.n_embd (" + std::to_string(cfg.n_embd) +
                                            ") must be divisible by model.n_head (" + std::to_string(cfg.n_head) + ")");
  int dense = 0;
  for (const auto& item : effective_stack(cfg)) dense += item.type == BlockType::Dense ? item.count : 0;
  require(dense == cfg.n_layer, "model.n_layer (" + std::to_string(cfg.n_layer) +
                                    ") must equal the dense blocks of model.stack (" + std::to_string(dense) + ")");
  const int E = ep_ ? ep_->size() : 1;
  int r = 0;
  for (const auto& item : effective_stack(cfg)) {
    if (item.type != BlockType::Routed) continue;
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
  blocks_ = build_blocks(cfg, ep_);
  if (cfg.altup.enabled()) altup_ = std::make_unique<AltUpStream>(cfg.altup, backend, cfg.n_embd, cfg.vocab_size);

  // Parameters: the embeddings, then the tensors blocks share along a layer axis (blocks/*,
  // altup/*: rows concatenated in block order), then every block's own, then ln_f.
  const int64_t C = cfg.n_embd, width = altup_ ? altup_->embedding_width() : C;
  std::vector<ParamSpec> specs = {{"wte", Shape{cfg.vocab_size, width}, cfg.decay_embeddings, 0.02, 0},
                                  {"wpe", Shape{cfg.n_ctx, width}, cfg.decay_embeddings, 0.02, 0}};
  std::vector<ParamSpec> own;
  std::map<std::string, size_t> stacked_at;
  for (const auto& b : blocks_)
    for (const ParamSpec& s : b->param_specs()) {
      if (!s.stacked) {
        own.push_back(s);
        continue;
      }
      const auto [it, fresh] = stacked_at.emplace(s.name, specs.size());
      if (fresh)
        specs.push_back(s);
      else
        specs[it->second].shape.dim[0] += 1;
    }
  specs.insert(specs.end(), own.begin(), own.end());
  specs.push_back({"ln_f_weight", Shape{C}, false, 0, 1});
  specs.push_back({"ln_f_bias", Shape{C}, false, 0, 0});
  params_ = std::make_unique<ParameterStore>(backend, dtype, std::move(specs), PoolShard{ep_ ? ep_->rank() : 0, E});
  for (auto& b : blocks_) b->bind(*params_);
}

parallel::ExchangeStats Gpt2::exchange_stats() const {
  parallel::ExchangeStats sum;
  for (const auto& b : blocks_) {
    const auto s = b->exchange_stats();
    sum.bytes_sent += s.bytes_sent, sum.bytes_received += s.bytes_received, sum.trips += s.trips,
        sum.seconds += s.seconds;
  }
  return sum;
}

void Gpt2::reset_exchange_stats() {
  for (auto& b : blocks_) b->reset_exchange_stats();
}

// The KV caches live in the blocks; these are the model's own buffers of a decoding step
// and the blocks' shared scratch, for up to max_rows rows.
struct Gpt2::DecodeState {
  int sequences = 0, max_rows = 0;
  std::unique_ptr<Arena> arena;
  Tensor tokens, slot, pos, want;  // I32 [R]
  Tensor x;                        // [K·R, C] the stream (K = 1 without AltUp)
  Tensor enc, wpe_rows;            // [R, E] embedding rows
  Tensor summed, last, ln, mean, rstd;
  Tensor head;    // wide AltUp: the folded [V, C] head
  Tensor logits;  // [min(R, sequences), V]
};

Gpt2::~Gpt2() = default;

void Gpt2::init_weights(uint64_t seed) { params_->initialize(seed); }

void Gpt2::prepare(int B, int T) {
  if (act_ && act_->B == B && act_->T == T) return;
  require(T >= 1 && T <= cfg_.n_ctx, "sequence length " + std::to_string(T) + " exceeds the model's context (n_ctx " +
                                         std::to_string(cfg_.n_ctx) + ")");
  const int64_t N = static_cast<int64_t>(B) * T, C = cfg_.n_embd, V = cfg_.vocab_size;
  const int64_t K = altup_ ? altup_->k() : 1, E = altup_ ? altup_->embedding_width() : C, R = K * N;
  if (altup_) altup_->prepare(N);
  // The head works through the logits in chunks of rows; 128 rows keep GEMMs efficient
  // while the chunk stays a few percent of the model's memory.
  const int64_t head_rows = std::min<int64_t>(N, 128);
  const DType f = dtype_;

  // The model's tensors and every block's saved ones from `saved`; each block's scratch from
  // the start of one shared region, which also holds the head's logits chunk (needed only
  // before the blocks' backward starts): its size is the largest single need.
  auto layout = [&](Carver& saved, const std::function<Carver()>& scratch, Activations* a) {
    Activations m;
    m.tokens = saved.take(Shape{N}, DType::I32), m.targets = saved.take(Shape{N}, DType::I32);
    m.losses = saved.take(Shape{N}, f), m.encoded = saved.take(Shape{N, E}, f);
    for (size_t i = 0; i < blocks_.size(); ++i) m.out.push_back(saved.take(Shape{R, C}, f));
    m.lnf = saved.take(Shape{N, C}, f), m.lnf_mean = saved.take(Shape{N}, f), m.lnf_rstd = saved.take(Shape{N}, f);
    m.dres = saved.take(Shape{R, C}, f), m.dlnf = saved.take(Shape{N, C}, f);
    if (altup_) {
      m.stream_in = saved.take(Shape{R, C}, f), m.summed = saved.take(Shape{N, C}, f);
      m.dsum = saved.take(Shape{N, C}, f), m.dencoded = saved.take(Shape{N, E}, f);
      if (altup_->wide()) m.head = saved.take(Shape{V, C}, f), m.dhead = saved.take(Shape{V, C}, f);
    }
    size_t need = 0;
    for (auto& b : blocks_) {
      Carver s = scratch();
      b->layout(B, T, saved, s);
      need = std::max(need, s.used());
    }
    Carver s = scratch();
    m.head_scratch = s.take(Shape{head_rows, V}, f);
    need = std::max(need, s.used());
    if (a) *a = std::move(m);
    return need;
  };
  Carver plan_saved;
  const size_t scratch_bytes = layout(
      plan_saved, [] { return Carver(); }, nullptr);
  act_.reset();
  const size_t saved_bytes = plan_saved.used();
  auto arena = std::make_unique<Arena>(backend_, saved_bytes + scratch_bytes);
  char* base = static_cast<char*>(arena->base());
  auto a = std::make_unique<Activations>();
  Carver saved(base, saved_bytes, backend_.device());
  layout(
      saved, [&] { return Carver(base + saved_bytes, scratch_bytes, backend_.device()); }, a.get());
  a->B = B, a->T = T, a->arena = std::move(arena);
  saved_bytes_ = saved_bytes;
  act_ = std::move(a);
}

size_t Gpt2::activation_bytes() const { return act_ ? act_->arena->capacity() : 0; }

int64_t Gpt2::active_parameters() const {
  int64_t total = params_->specs()[params_->index("wte")].shape.numel() +
                  params_->specs()[params_->index("wpe")].shape.numel() + 2 * int64_t{cfg_.n_embd};
  for (const auto& b : blocks_) total += b->active_parameters();
  return total;
}

double Gpt2::flops_per_token(int T) const {
  int64_t attention_layers = 0;
  double extra = 0;
  for (const auto& b : blocks_) attention_layers += b->attention_layers(), extra += b->extra_flops_per_token();
  // Wide AltUp's embeddings are K·C wide, but the head multiplies by a [V, C] matrix, as in
  // every other model: only that width counts as matmul work.
  const int64_t wide_extra =
      altup_ && altup_->wide() ? int64_t{altup_->k() - 1} * (cfg_.vocab_size + cfg_.n_ctx) * cfg_.n_embd : 0;
  return 6.0 * static_cast<double>(active_parameters() - wide_extra) +
         6.0 * static_cast<double>(attention_layers) * cfg_.n_embd * T + extra;
}

double Gpt2::aux_loss() const {
  double s = 0;
  for (const auto& b : blocks_) s += b->aux_loss();
  return s;
}

int Gpt2::routed_stage_count() const {
  int n = 0;
  for (const auto& item : effective_stack(cfg_)) n += item.type == BlockType::Routed;
  return n;
}

std::vector<Gpt2::StageTrace> Gpt2::routing_trace() const {
  std::vector<StageTrace> out;
  for (const auto& b : blocks_)
    if (const RoutedStage* st = b->routed_stage()) out.push_back({st->name(), st->routing_trace()});
  return out;
}

void Gpt2::disable_module(const std::string& path) {
  // stage prefix ("chunks/0/"), then side and module: "chunks/0/attn/1"
  const size_t last = path.rfind('/'), side_at = last == std::string::npos ? last : path.rfind('/', last - 1);
  std::string known;
  for (const auto& b : blocks_)
    if (RoutedStage* st = b->routed_stage()) {
      known += (known.empty() ? "" : ", ") + st->name();
      if (side_at == std::string::npos || path.compare(0, side_at + 1, st->name()) != 0) continue;
      const std::string side = path.substr(side_at + 1, last - side_at - 1), index = path.substr(last + 1);
      require(!index.empty() && index.size() <= 9 && index.find_first_not_of("0123456789") == std::string::npos,
              "--disable-module '" + path + "': the module must be a number, as in chunks/0/attn/1");
      try {
        st->disable_modules(side, {std::stoi(index)});
      } catch (const UserError& e) {
        throw UserError("--disable-module '" + path + "': " + e.what());
      }
      return;
    }
  throw UserError(
      "--disable-module '" + path + "': no such routed stage; write STAGE/SIDE/MODULE, e.g. " +
      "chunks/0/attn/1, with STAGE one of: " + (known.empty() ? std::string("(this model has none)") : known));
}

std::string Gpt2::describe() const {
  int counts[5] = {};  // dense, MoM chunks, MoE layers, SAS, SAS-P
  for (const auto& item : effective_stack(cfg_)) {
    switch (item.type) {
      case BlockType::Dense:
        counts[0] += item.count;
        break;
      case BlockType::Routed:
        counts[item.stage.moe ? 2 : 1] += 1;
        break;
      case BlockType::Sas:
        counts[3] += item.count;
        break;
      case BlockType::SasP:
        counts[4] += item.count;
        break;
    }
  }
  const char* names[5][2] = {{"dense block", "dense blocks"},
                             {"MoM chunk", "MoM chunks"},
                             {"MoE layer", "MoE layers"},
                             {"SAS block", "SAS blocks"},
                             {"SAS-P block", "SAS-P blocks"}};
  std::string out;
  for (int i = 0; i < 5; ++i)
    if (counts[i]) out += (out.empty() ? "" : ", ") + std::to_string(counts[i]) + " " + names[i][counts[i] != 1];
  if (out.empty()) out = "no blocks";
  if (cfg_.altup.enabled())
    out += "; AltUp K=" + std::to_string(cfg_.altup.k) + " (" + (cfg_.altup.wide ? "wide" : "recycled") + ", " +
           (cfg_.altup.first ? "first" : "alternate") + ", " +
           (cfg_.altup.predicted_input ? "predicted" : "activated") + " input, " +
           (cfg_.altup.input_dependent ? "input-dependent" : "static") + " coefficients)";
  return out;
}

nlohmann::json Gpt2::routing_stats() const {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& b : blocks_) {
    nlohmann::json st = b->routing_stats();
    if (!st.is_null()) out.push_back({{"stage", b->name()}, {"steps", std::move(st)}});
  }
  return out;
}

Tensor Gpt2::head_weight() {
  if (!altup_ || !altup_->wide()) return params_->param("wte");
  altup_->fold_head(params_->param("wte"), act_->head);
  return act_->head;
}

void Gpt2::run_forward(const int32_t* tokens, int B, int T) {
  prepare(B, T);
  Activations& a = *act_;
  Backend& be = backend_;
  be.copy_from_host(a.tokens, tokens);
  be.embedding_forward(a.encoded, a.tokens, params_->param("wte"), params_->param("wpe"), T, 0);
  const Tensor* x = &a.encoded;
  if (altup_) {
    altup_->prepare(static_cast<int64_t>(B) * T);  // a decoding step may have changed its size
    altup_->widen(a.encoded, a.stream_in);
    x = &a.stream_in;
  }
  for (size_t i = 0; i < blocks_.size(); ++i) {
    blocks_[i]->forward(*x, a.out[i]);
    x = &a.out[i];
  }
  if (altup_) altup_->narrow(*x, a.summed), x = &a.summed;
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
  backend_.xent_head(a.losses, Tensor{}, Tensor{}, a.lnf, head_weight(), a.targets, 0.0, a.head_scratch);
  return mean_loss(backend_, a.losses);
}

void Gpt2::token_losses(std::vector<double>& out) const {
  require(act_ != nullptr, "token_losses: no forward has run");
  const Tensor& l = act_->losses;
  out.resize(static_cast<size_t>(l.numel()));
  if (l.dtype == DType::F64) return backend_.copy_to_host(out.data(), l);
  std::vector<float> h(out.size());
  backend_.copy_to_host(h.data(), l);
  for (size_t i = 0; i < h.size(); ++i) out[i] = h[i];
}

double Gpt2::forward_backward(const int32_t* tokens, const int32_t* targets, int B, int T, double grad_scale) {
  run_forward(tokens, B, T);
  Activations& a = *act_;
  Backend& be = backend_;
  ParameterStore& P = *params_;
  be.copy_from_host(a.targets, targets);
  // The head's backward runs inside its forward.
  const bool wide = altup_ && altup_->wide();
  be.zero(a.dlnf);
  if (wide) be.zero(a.dhead);
  be.xent_head(a.losses, a.dlnf, wide ? a.dhead : P.grad("wte"), a.lnf, head_weight(), a.targets, grad_scale,
               a.head_scratch);
  if (wide) altup_->fold_head_backward(a.dhead, P.grad("wte"));
  const Tensor& last = blocks_.empty() ? (altup_ ? a.stream_in : a.encoded) : a.out.back();
  const Tensor& final_in = altup_ ? a.summed : last;
  const Tensor& dfinal = altup_ ? a.dsum : a.dres;
  be.zero(dfinal);
  be.layernorm_backward(dfinal, P.grad("ln_f_weight"), P.grad("ln_f_bias"), a.dlnf, final_in, P.param("ln_f_weight"),
                        a.lnf_mean, a.lnf_rstd);
  if (altup_) altup_->narrow_backward(a.dsum, a.dres);
  // The aux losses enter the objective once per micro-batch, like the mean cross-entropy.
  const double loss_scale = grad_scale * static_cast<double>(B) * T;
  const Tensor& first_in = altup_ ? a.stream_in : a.encoded;
  for (size_t i = blocks_.size(); i-- > 0;) blocks_[i]->backward(i ? a.out[i - 1] : first_in, a.dres, loss_scale);
  if (altup_) altup_->widen_backward(a.dencoded, a.dres);
  be.embedding_backward(P.grad("wte"), P.grad("wpe"), altup_ ? a.dencoded : a.dres, a.tokens, T, 0);
  return mean_loss(be, a.losses);
}

void Gpt2::logits(const int32_t* tokens, int B, int T, std::vector<double>& out) {
  run_forward(tokens, B, T);
  const int64_t N = static_cast<int64_t>(B) * T, V = cfg_.vocab_size;
  ArenaPlan plan;
  plan.add(Shape{N, V}, dtype_);
  Arena arena(backend_, plan.bytes());
  Tensor lg = arena.alloc(Shape{N, V}, dtype_);
  backend_.matmul_forward(lg, act_->lnf, head_weight(), Tensor{});
  out.resize(static_cast<size_t>(N * V));
  if (dtype_ == DType::F64) {
    backend_.copy_to_host(out.data(), lg);
  } else {
    std::vector<float> h(static_cast<size_t>(N * V));
    backend_.copy_to_host(h.data(), lg);
    for (size_t i = 0; i < h.size(); ++i) out[i] = h[i];
  }
}

void Gpt2::prepare_decode(int sequences, int max_rows) {
  require(sequences >= 1 && max_rows >= 1, "prepare_decode: needs at least one sequence and one row");
  const int64_t R = max_rows, C = cfg_.n_embd, V = cfg_.vocab_size;
  const int64_t K = altup_ ? altup_->k() : 1, E = altup_ ? altup_->embedding_width() : C;
  const int64_t W = std::min<int64_t>(R, sequences);
  const DType f = dtype_;
  auto layout = [&](Carver& c, DecodeState& d) {
    d.tokens = c.take(Shape{R}, DType::I32), d.slot = c.take(Shape{R}, DType::I32);
    d.pos = c.take(Shape{R}, DType::I32), d.want = c.take(Shape{R}, DType::I32);
    d.x = c.take(Shape{K * R, C}, f), d.enc = c.take(Shape{R, E}, f), d.wpe_rows = c.take(Shape{R, E}, f);
    d.summed = c.take(Shape{R, C}, f), d.last = c.take(Shape{W, C}, f), d.ln = c.take(Shape{W, C}, f);
    d.mean = c.take(Shape{W}, f), d.rstd = c.take(Shape{W}, f), d.logits = c.take(Shape{W, V}, f);
    if (altup_ && altup_->wide()) d.head = c.take(Shape{V, C}, f);
  };
  DecodeState plan;
  Carver own_plan;
  layout(own_plan, plan);
  size_t scratch = 0;
  for (auto& b : blocks_) {
    Carver s;
    b->prepare_decode(sequences, max_rows, s);
    scratch = std::max(scratch, s.used());
  }
  dec_.reset();
  auto d = std::make_unique<DecodeState>();
  d->arena = std::make_unique<Arena>(backend_, own_plan.used() + scratch);
  char* base = static_cast<char*>(d->arena->base());
  Carver own(base, own_plan.used(), backend_.device());
  layout(own, *d);
  for (auto& b : blocks_) {
    Carver s(base + own_plan.used(), scratch, backend_.device());
    b->prepare_decode(sequences, max_rows, s);
  }
  d->sequences = sequences, d->max_rows = max_rows;
  dec_ = std::move(d);
}

int Gpt2::decode_sequences() const { return dec_ ? dec_->sequences : 0; }

void Gpt2::decode_step(const int32_t* tokens, const int32_t* slots, const int32_t* positions, int M,
                       const std::vector<int>& logit_rows, std::vector<float>& out) {
  require(dec_ != nullptr, "decode_step: call prepare_decode first");
  DecodeState& d = *dec_;
  require(M >= 0 && M <= d.max_rows, "decode_step: " + std::to_string(M) + " rows, the buffers hold " +
                                         std::to_string(d.max_rows) + " (prepare_decode)");
  const int W = static_cast<int>(logit_rows.size());
  require(W <= d.logits.shape[0] && (W >= 1 || M == 0), "decode_step: logits of " + std::to_string(W) +
                                                            " rows asked, at least 1 and at most " +
                                                            std::to_string(d.logits.shape[0]));
  for (int m = 0; m < M; ++m)
    require(slots[m] >= 0 && slots[m] < d.sequences && positions[m] >= 0 && positions[m] < cfg_.n_ctx,
            "decode_step: row " + std::to_string(m) + " (sequence " + std::to_string(slots[m]) + ", position " +
                std::to_string(positions[m]) + ") is outside the caches (" + std::to_string(d.sequences) +
                " sequences, context " + std::to_string(cfg_.n_ctx) + ")");
  for (int r : logit_rows) require(r >= 0 && r < M, "decode_step: logit row " + std::to_string(r) + " out of range");
  Backend& be = backend_;
  const ParameterStore& P = *params_;
  const int64_t K = altup_ ? altup_->k() : 1, V = cfg_.vocab_size;
  auto rows = [](const Tensor& t, int64_t n) { return t.rows(0, n); };
  const DecodeRows dr{M, rows(d.slot, M), rows(d.pos, M)};
  be.copy_from_host(rows(d.tokens, M), tokens);
  be.copy_from_host(dr.slot, slots);
  be.copy_from_host(dr.pos, positions);
  be.copy_from_host(rows(d.want, W), logit_rows.data());
  // x = wte[token] + wpe[position], each row at its own position.
  const Tensor enc = rows(d.enc, M);
  be.gather_rows(enc, P.param("wte"), rows(d.tokens, M));
  be.gather_rows(rows(d.wpe_rows, M), P.param("wpe"), dr.pos);
  be.accumulate(enc, rows(d.wpe_rows, M));
  Tensor x = enc;
  if (altup_) {
    altup_->prepare(M);
    x = rows(d.x, K * M);
    altup_->widen(enc, x);
  }
  for (auto& b : blocks_) b->decode(x, dr);
  if (W == 0) return;  // an expert-parallel peer's part in another rank's step (no rows of its own)
  if (altup_) altup_->narrow(x, rows(d.summed, M)), x = rows(d.summed, M);
  const Tensor last = rows(d.last, W), ln = rows(d.ln, W), lg = rows(d.logits, W);
  be.gather_rows(last, x, rows(d.want, W));
  be.layernorm_forward(ln, rows(d.mean, W), rows(d.rstd, W), last, P.param("ln_f_weight"), P.param("ln_f_bias"),
                       cfg_.ln_eps);
  Tensor head = P.param("wte");
  if (altup_ && altup_->wide()) altup_->fold_head(head, d.head), head = d.head;
  be.matmul_forward(lg, ln, head, Tensor{});
  out.resize(static_cast<size_t>(W * V));
  if (dtype_ == DType::F32) return be.copy_to_host(out.data(), lg);
  std::vector<double> h(out.size());
  be.copy_to_host(h.data(), lg);
  for (size_t i = 0; i < h.size(); ++i) out[i] = static_cast<float>(h[i]);
}

void Gpt2::decode(const int32_t* tokens, int n, int pos, std::vector<float>& out) {
  require(n >= 1 && pos >= 0 && pos + n <= cfg_.n_ctx, "decode: positions " + std::to_string(pos) + ".." +
                                                           std::to_string(pos + n - 1) + " exceed n_ctx " +
                                                           std::to_string(cfg_.n_ctx));
  if (!dec_ || dec_->max_rows < n) prepare_decode(std::max(1, decode_sequences()), cfg_.n_ctx);
  std::vector<int32_t> slots(static_cast<size_t>(n), 0), positions(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) positions[static_cast<size_t>(i)] = pos + i;
  decode_step(tokens, slots.data(), positions.data(), n, {n - 1}, out);
}

void Gpt2::last_logits(const int32_t* tokens, int T, std::vector<float>& out) {
  require(dtype_ == DType::F32, "last_logits needs an f32 model");
  run_forward(tokens, 1, T);
  const int64_t V = cfg_.vocab_size;
  ArenaPlan plan;
  plan.add(Shape{1, V}, dtype_);
  Arena arena(backend_, plan.bytes());
  Tensor lg = arena.alloc(Shape{1, V}, dtype_);
  backend_.matmul_forward(lg, act_->lnf.rows(T - 1, T), head_weight(), Tensor{});
  out.resize(static_cast<size_t>(V));
  backend_.copy_to_host(out.data(), lg);
}

}  // namespace mom
