// Alternating Updates (MODELS.md §5): the residual stream widened to K blocks of width C, each
// layer computing on one active block while the others are predicted and corrected.
//
//   predict:  x̂ⁱ = Σ_j p_ij·x^j           (p = I at init)
//   compute:  x̃ = L(x^{j*})  (paper)  or  L(x̂^{j*})  (Gemma 3n)
//   correct:  x_newⁱ = x̂ⁱ + g_i·(x̃ − x̂^{j*})   (g = 1 at init)
//
// Why a wrapper: AltUpLayer is itself a Block around any width-C block (dense, SAS, SAS-P, a
// whole MoM chunk, an MoE layer), so the stack, the routed stages' expert parallelism and the
// block kinds know nothing of it. The stream is block-major, [K·N, C], so that each x^j is a
// contiguous [N, C] tensor a wrapped block reads directly. AltUpStream widens the embedding
// into that stream (Recycled: K copies of the width-C embedding; wide: a K·C embedding split
// into its blocks), sums the blocks before ln_f, and for wide AltUp ties the head to the sum of
// the embedding's K blocks (ours).
//
// Parameters (docs/checkpoint-format.md), one row per layer ℓ:
//   static:          altup/predict [L,K,K] (I), altup/correct [L,K] (1)
//   input_dependent: altup/router_norm_weight [L,C] (1), altup/router_weight [L,K,C]
//                    (N(0, 0.02)), altup/predict_weight [L,K·K,K] (0), altup/correct_weight
//                    [L,K,K] (0); m = tanh(W_r·RMSNorm(x^{j*})/C), p = I + reshape(W_p·m),
//                    g = 1 + W_g·m, with W_p and W_g clamped to ±120.
#pragma once
#include <memory>

#include "core/layers/block.h"

namespace mom {

struct AltUpConfig {
  int k = 0;                     // K blocks; 0: AltUp off
  bool wide = false;             // mode "wide" (K·C embeddings), else "recycled"
  bool first = false;            // active "first" (always block 0), else "alternate" (layer mod K)
  bool predicted_input = false;  // layer_input "predicted" (Gemma 3n), else "activated" (paper)
  bool input_dependent = false;  // coefficients "input_dependent" (Gemma 3n's router), else "static"
  bool enabled() const { return k > 0; }
};

class AltUpLayer final : public Block {
 public:
  // Wraps `inner`, the stack's layer number `layer`.
  AltUpLayer(const AltUpConfig& cfg, const ModelDims& dims, int layer, std::unique_ptr<Block> inner);
  std::string name() const override { return inner_->name(); }
  std::vector<ParamSpec> param_specs() const override;
  void bind(const ParameterStore& params) override;
  void layout(int B, int T, Carver& saved, Carver& scratch) override;
  // x_in, x_out: the stream [K·N, C].
  void forward(const Tensor& x_in, const Tensor& x_out) override;
  void backward(const Tensor& x_in, const Tensor& dres, double loss_scale) override;
  void prepare_decode(int sequences, int max_rows, Carver& scratch) override;
  // x [K·M, C]: predict, the wrapped block decodes its input's rows, correct.
  void decode(const Tensor& x, const DecodeRows& rows) override;
  int64_t active_parameters() const override;
  int attention_layers() const override { return inner_->attention_layers(); }
  double aux_loss() const override { return inner_->aux_loss(); }
  nlohmann::json routing_stats() const override { return inner_->routing_stats(); }
  RoutedStage* routed_stage() override { return inner_->routed_stage(); }
  parallel::ExchangeStats exchange_stats() const override { return inner_->exchange_stats(); }
  void reset_exchange_stats() override { inner_->reset_exchange_stats(); }
  int active_block() const { return active_; }
  // Predict, correct and the coefficient router, plus the wrapped block's own.
  double extra_flops_per_token() const override;

 private:
  // Block j of a stream of N tokens.
  static Tensor block(const Tensor& stream, int j, int64_t N) { return stream.rows(j * N, (j + 1) * N); }
  Tensor param(const char* name) const { return P_->param(std::string("altup/") + name)[layer_]; }
  Tensor grad(const char* name) const { return P_->grad(std::string("altup/") + name)[layer_]; }
  // One forward's tensors (training's, kept for backward, or a decoding step's).
  struct Work {
    Tensor xhat, y;                  // the prediction [K·N, C], the wrapped block's output [N, C]
    Tensor r, rms, m, wp, wg, p, g;  // input_dependent: the router's stash, per-token p [N,K·K], g [N,K]
    Work rows(int64_t M) const;      // for the first M tokens
  };
  Work carve(Carver& c, int64_t N) const;
  // p and g for the step: static parameters, or Gemma 3n's router on the active block `xa`.
  std::pair<Tensor, Tensor> coefficients_forward(const Tensor& xa, const Work& w, int64_t N);
  void coefficients_backward(const Tensor& xa, const Tensor& dxa);

  AltUpConfig cfg_;
  ModelDims dims_;
  int layer_, active_;
  std::unique_ptr<Block> inner_;
  const ParameterStore* P_ = nullptr;
  int64_t N_ = 0;
  std::unique_ptr<Arena> constants_;  // input_dependent: vec(I) [K·K] and ones [K], the coefficient biases
  Tensor eye_, ones_;
  Work train_, dec_;
  // scratch
  Tensor dxhat_, dy_, dp_, dg_, dm_, dz_, dr_, dwp_, dwg_;
};

// The stream's ends: embedding -> [K·N, C] and [K·N, C] -> the width-C sum before ln_f.
class AltUpStream {
 public:
  AltUpStream(const AltUpConfig& cfg, Backend& backend, int C, int vocab_size);
  int k() const { return cfg_.k; }
  bool wide() const { return cfg_.wide; }
  // Width of the embedding tables: C (recycled) or K·C (wide).
  int embedding_width() const { return cfg_.wide ? cfg_.k * C_ : C_; }
  // For N tokens (cheap when N is unchanged; decoding steps change it).
  void prepare(int64_t N);
  // encoded [N, embedding_width] -> stream [K·N, C], and its backward (dencoded is overwritten).
  void widen(const Tensor& encoded, const Tensor& stream);
  void widen_backward(const Tensor& dencoded, const Tensor& dstream);
  // stream [K·N, C] -> sum [N, C], and its backward (dstream is overwritten).
  void narrow(const Tensor& stream, const Tensor& sum);
  void narrow_backward(const Tensor& dsum, const Tensor& dstream);
  // Wide only: the tied head's [V, C] weight as the sum of wte's K blocks, and dwte += its
  // gradient spread back over the blocks.
  void fold_head(const Tensor& wte, const Tensor& head);
  void fold_head_backward(const Tensor& dhead, const Tensor& dwte);

 private:
  AltUpConfig cfg_;
  Backend& be_;
  int C_, V_;
  int64_t N_ = -1;
  std::unique_ptr<Arena> arena_, head_arena_;
  Tensor to_blocks_, to_tokens_;     // wide: gather indices between token-major and block-major, for N
  Tensor head_slots_, head_spread_;  // wide: wte's K blocks -> head, and back
};

}  // namespace mom
