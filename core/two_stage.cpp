#include "core/two_stage.h"

#include "core/error.h"

namespace mom {

namespace {

// Dense tensor names of one sub-layer, matched with a pool's names.
struct Pair {
  const char* dense;
  const char* pool;
};
constexpr Pair kAttn[] = {{"ln1_weight", "ln_weight"},         {"ln1_bias", "ln_bias"},
                          {"attn_qkv_weight", "qkv_weight"},   {"attn_qkv_bias", "qkv_bias"},
                          {"attn_proj_weight", "proj_weight"}, {"attn_proj_bias", "proj_bias"}};
constexpr Pair kMlp[] = {{"ln2_weight", "ln_weight"},        {"ln2_bias", "ln_bias"},
                         {"mlp_fc_weight", "fc_weight"},     {"mlp_fc_bias", "fc_bias"},
                         {"mlp_proj_weight", "proj_weight"}, {"mlp_proj_bias", "proj_bias"}};

void copy(Backend& be, const Tensor& dst, const Tensor& src) {
  require(dst.shape == src.shape, "two-stage init: shapes " + src.shape.str() + " and " + dst.shape.str() + " differ");
  be.copy(dst, src);
}

}  // namespace

// Only pre-LN blocks, MoM chunks and MoE layers are made of a dense layer's tensors.
void require_made_of_dense_layers(const Gpt2Config& t) {
  for (const auto& item : effective_stack(t))
    require(item.type == BlockType::Dense || item.type == BlockType::Routed,
            "two-stage init: the target's model.stack holds SAS or SAS-P blocks, and no conversion from a Pre-LN "
            "GPT-2 can exist: it has no SAS weights (a SAS block has no W_V or W_O, its attention is shaped and its "
            "branches have their own gains); train SAS models from scratch");
  require(!t.altup.enabled(),
          "two-stage init: the target config sets model.altup; convert to the MoM or MoE model "
          "first, then widen it with 'mom convert dense-to-altup'");
}

void init_from_dense(const Gpt2& dense, Gpt2& target) {
  const Gpt2Config &d = dense.config(), &t = target.config();
  require(is_dense_gpt2(d),
          "two-stage init: the source checkpoint must be a dense GPT-2 (pre-LN blocks only, no AltUp); "
          "it has other blocks in model.stack");
  require_made_of_dense_layers(t);
  require(d.n_embd == t.n_embd && d.n_head == t.n_head && d.n_ctx == t.n_ctx && d.vocab_size == t.vocab_size,
          "two-stage init: the target config's model.n_embd, n_head, n_ctx and vocab_size must equal the dense "
          "model's (" +
              std::to_string(d.n_embd) + ", " + std::to_string(d.n_head) + ", " + std::to_string(d.n_ctx) + ", " +
              std::to_string(d.vocab_size) + ")");
  // Count what the target's stack consumes before touching anything.
  int needed = 0;
  for (const auto& item : effective_stack(t))
    needed += item.type == BlockType::Routed
                  ? (item.stage.moe ? 1 : std::max(item.stage.attn_modules, item.stage.ffn_modules))
                  : item.count;
  require(needed == d.n_layer,
          "two-stage init: the target's stack consumes " + std::to_string(needed) + " dense layers (dense runs and " +
              "anchors take their count, a MoM chunk max(attn_modules, ffn_modules), an MoE layer one) but the dense "
              "model has " +
              std::to_string(d.n_layer) + "; change model.stack so that they add up");

  Backend& be = target.backend();
  const ParameterStore& S = dense.params();
  ParameterStore& P = target.params();
  for (const char* name : {"wte", "wpe", "ln_f_weight", "ln_f_bias"}) copy(be, P.param(name), S.param(name));
  auto src = [&](const char* name, int layer) { return S.param(std::string("blocks/") + name)[layer]; };
  int next = 0, block = 0, routed = 0;
  for (const auto& item : effective_stack(t)) {
    if (item.type == BlockType::Dense) {
      for (int i = 0; i < item.count; ++i, ++next, ++block)
        for (const auto* pairs : {kAttn, kMlp})
          for (int k = 0; k < 6; ++k)
            copy(be, P.param(std::string("blocks/") + pairs[k].dense)[block], src(pairs[k].dense, next));
      continue;
    }
    const std::string prefix = stage_prefix(t, routed++);
    const RoutedStageConfig& st = item.stage;
    if (st.moe) {
      for (const auto& p : kAttn) copy(be, P.param(prefix + "attn/" + p.pool)[0], src(p.dense, next));
      for (int e = 0; e < st.ffn_modules; ++e)
        for (const auto& p : kMlp) copy(be, P.param(prefix + "ffn/" + p.pool)[e], src(p.dense, next));
      ++next;
      continue;
    }
    const int pool = std::max(st.attn_modules, st.ffn_modules);
    for (int j = 0; j < pool; ++j, ++next) {
      if (j < st.attn_modules)
        for (const auto& p : kAttn) copy(be, P.param(prefix + "attn/" + p.pool)[j], src(p.dense, next));
      if (j < st.ffn_modules)
        for (const auto& p : kMlp) copy(be, P.param(prefix + "ffn/" + p.pool)[j], src(p.dense, next));
    }
  }
}

void widen_with_altup(const Gpt2& source, Gpt2& target) {
  const AltUpConfig& a = target.config().altup;
  require(!source.config().altup.enabled(), "AltUp widening: the source checkpoint already has model.altup (K = " +
                                                std::to_string(source.config().altup.k) + ")");
  require(a.enabled(), "AltUp widening: the target has no model.altup");
  require(!a.wide,
          "AltUp widening: model.altup.mode \"wide\" cannot be made from a trained model: its embeddings "
          "are K·C wide and the model has width C; use mode \"recycled\" (the embedding replicated K times), "
          "the only widening that keeps what the model learned");
  const ParameterStore& S = source.params();
  ParameterStore& P = target.params();
  for (size_t i = 0; i < S.size(); ++i) {
    const std::string& name = S.specs()[i].name;
    copy(target.backend(), P.param(name), S.param(i));
  }
  for (size_t i = 0; i < P.size(); ++i) {
    const std::string& name = P.specs()[i].name;
    if (name.rfind("altup/", 0) != 0) S.index(name);  // every other tensor came from the source
  }
}

}  // namespace mom
