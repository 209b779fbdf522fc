// Gpt2: the dense GPT-2 model (MODELS.md §1) on any backend.
//
// Parameters are stacked along a leading layer axis ("blocks/attn_qkv_weight" is
// [L, 3C, C]); that axis becomes the module axis of MoM/MoE pools later, and is the axis a
// checkpoint is sharded along. Activations are planned once per batch geometry in one arena.
// Training runs forward and the head's backward in one pass (the fused, chunked
// cross-entropy never holds the full [B·T, V] logits), then the blocks' backward.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/layers/attention_sublayer.h"
#include "core/layers/mlp_sublayer.h"
#include "core/layers/routed_stage.h"
#include "core/params.h"

namespace mom {

// One entry of the model's middle: a run of dense blocks, or a routed stage (a MoM chunk or an
// MoE layer). A chunk's anchor is a one-block dense run after it.
struct StackItem {
  bool routed = false;
  int dense_count = 0;      // dense run: number of blocks
  RoutedStageConfig stage;  // routed stage
};

struct Gpt2Config {
  int vocab_size = 50257;
  int n_ctx = 1024;    // context length, rows of wpe
  int n_layer = 12;    // dense blocks in all (the stack's dense runs add up to this)
  int n_head = 12;
  int n_embd = 768;
  double ln_eps = 1e-5;
  bool decay_embeddings = false;  // weight decay on wte/wpe (matrices always decay; biases and norms never)
  std::vector<StackItem> stack;   // empty: n_layer dense blocks (GPT-2)
};

// The stack with the GPT-2 default filled in (one dense run of n_layer blocks when empty).
std::vector<StackItem> effective_stack(const Gpt2Config& cfg);
// Parameter-name prefix of the i-th routed stage ("chunks/0/", "moe/0/").
std::string stage_prefix(const Gpt2Config& cfg, int routed_index);

class Gpt2 {
 public:
  // `ep`: the expert-parallel group over which the module pools are sharded (nullptr: one
  // process holds every module). Its size must divide every pool's module count (UserError).
  Gpt2(const Gpt2Config& cfg, Backend& backend, DType dtype = DType::F32, Communicator* ep = nullptr);
  ~Gpt2();
  const Gpt2Config& config() const { return cfg_; }
  ParameterStore& params() { return *params_; }
  const ParameterStore& params() const { return *params_; }
  Backend& backend() const { return backend_; }

  // GPT-2 initialisation (MODELS.md §1), deterministic in `seed`.
  void init_weights(uint64_t seed);

  // Mean cross-entropy over the B·T targets; no gradients.
  double forward(const int32_t* tokens, const int32_t* targets, int B, int T);
  // Same loss, and accumulates ∂(grad_scale·Σ losses)/∂θ into the gradient buffer. Pass
  // grad_scale = 1/(B·T·accumulation_steps) for the gradient of the mean loss.
  double forward_backward(const int32_t* tokens, const int32_t* targets, int B, int T, double grad_scale);
  // Full logits [B·T, V] into host memory (tests and small models); as float or double.
  void logits(const int32_t* tokens, int B, int T, std::vector<double>& out);
  // Logits of the last position only [V], recomputing the whole prefix (the reference for
  // the cached path below).
  void last_logits(const int32_t* tokens, int T, std::vector<float>& out);
  // Incremental decoding of one sequence with a KV cache: feeds n tokens at positions
  // pos..pos+n-1 (the cache must hold positions 0..pos-1 from earlier calls; pos 0 starts
  // over) and returns the logits after the last one. pos + n must not exceed n_ctx.
  void decode(const int32_t* tokens, int n, int pos, std::vector<float>& out);

  // Parameters one token uses in a forward pass: everything outside the pools, plus, for each
  // assembly step of each routed stage, top_k attention modules, top_k FFN modules, the
  // routers and the shared expert (nominal: SKIP choices make the real count lower).
  int64_t active_parameters() const;
  // Training FLOPs per token, llm.c's form: 6·active + 6·(attention layers)·C·T, where every
  // assembly step counts as an attention layer.
  double flops_per_token(int T) const;
  // Auxiliary (balance and z) loss of the last forward, summed over routed stages.
  double aux_loss() const;
  // Routing statistics of the last forward: per stage, per step, per router.
  nlohmann::json routing_stats() const;
  const std::vector<std::unique_ptr<RoutedStage>>& stages() const { return stages_; }
  // Token-exchange traffic and time of all routed stages since the last reset.
  parallel::ExchangeStats exchange_stats() const;
  void reset_exchange_stats();
  // The expert-parallel group (nullptr when the pools are not sharded).
  Communicator* expert_parallel_group() const { return ep_; }

  // Bytes held by activations for the current batch geometry (saved for backward + scratch).
  size_t activation_bytes() const;
  size_t saved_activation_bytes() const { return saved_bytes_; }

 private:
  struct Activations;
  struct DecodeState;
  void prepare(int B, int T);
  void run_forward(const int32_t* tokens, int B, int T);
  AttentionWeights attn_weights(bool grads, int layer) const;
  MlpWeights mlp_weights(bool grads, int layer) const;
  void dense_forward(int layer, const Tensor& x, int B, int T);
  void dense_backward(int layer, const Tensor& x, int B, int T);

  Gpt2Config cfg_;
  Backend& backend_;
  DType dtype_;
  Communicator* ep_;
  std::unique_ptr<ParameterStore> params_;
  std::unique_ptr<Activations> act_;
  std::unique_ptr<DecodeState> dec_;
  std::vector<StackItem> items_;
  std::vector<std::unique_ptr<RoutedStage>> stages_;
  size_t saved_bytes_ = 0;
};

std::vector<ParamSpec> gpt2_param_specs(const Gpt2Config& cfg);

}  // namespace mom
