// Gpt2: a GPT-2-family model (MODELS.md) on any backend: token and position embeddings, a
// middle made of blocks (core/layers/block.h: pre-LN dense blocks, MoM chunks, MoE layers, SAS
// and SAS-P blocks, optionally wrapped by AltUp), the final LayerNorm ln_f and the tied head.
//
// Why this split: Gpt2 keeps only the embedding, ln_f, the head and the KV-cache plumbing; each
// block kind is one file under core/layers/ and the stack is a list of them, built by
// core/layers/blocks.h from the config. Activations are planned once per batch geometry in one
// arena: each block's saved tensors, plus one scratch region every block (and the head's logits
// chunk) reuses in turn. Training runs forward and the head's backward in one pass (the fused,
// chunked cross-entropy never holds the full [B·T, V] logits), then the blocks' backward.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/layers/altup.h"
#include "core/layers/block.h"
#include "core/layers/routed_stage.h"
#include "core/layers/simplified_block.h"
#include "core/params.h"

namespace mom {

enum class BlockType {
  Dense,   // GPT-2's pre-LN block
  Routed,  // a MoM chunk or an MoE layer (RoutedStageConfig::moe)
  Sas,     // simplified block, sequential (MODELS.md §4)
  SasP,    // simplified block, parallel
};

// One entry of the model's middle: a run of `count` dense, SAS or SAS-P blocks, or one routed
// stage. A chunk's anchor is a one-block dense run after it.
struct StackItem {
  BlockType type = BlockType::Dense;
  int count = 1;                // dense, SAS, SAS-P runs: blocks in the run
  RoutedStageConfig stage;      // routed
  SimplifiedConfig simplified;  // SAS, SAS-P
};

struct Gpt2Config {
  int vocab_size = 50257;
  int n_ctx = 1024;  // context length, rows of wpe
  int n_layer = 12;  // pre-LN dense blocks in all (the stack's dense runs add up to this)
  int n_head = 12;
  int n_embd = 768;
  double ln_eps = 1e-5;
  bool decay_embeddings = false;  // weight decay on wte/wpe (matrices always decay; biases, norms, gains never)
  std::vector<StackItem> stack;   // empty: n_layer dense blocks (GPT-2)
  AltUpConfig altup;              // k = 0: off
};

// The stack with the GPT-2 default filled in (one dense run of n_layer blocks when empty).
std::vector<StackItem> effective_stack(const Gpt2Config& cfg);
// Parameter-name prefix of the i-th routed stage ("chunks/0/", "moe/0/").
std::string stage_prefix(const Gpt2Config& cfg, int routed_index);
// True when every block of the stack is a pre-LN dense block (and AltUp is off).
bool is_dense_gpt2(const Gpt2Config& cfg);

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

  // Initialisation of every parameter from its spec (GPT-2's for dense blocks, MODELS.md §1,
  // §4, §5 for the others), deterministic in `seed`.
  void init_weights(uint64_t seed);

  // Mean cross-entropy over the B·T targets; no gradients.
  double forward(const int32_t* tokens, const int32_t* targets, int B, int T);
  // Same loss, and accumulates ∂(grad_scale·Σ losses)/∂θ into the gradient buffer. Pass
  // grad_scale = 1/(B·T·accumulation_steps) for the gradient of the mean loss.
  double forward_backward(const int32_t* tokens, const int32_t* targets, int B, int T, double grad_scale);
  // The last forward's per-token cross-entropy [B·T] (−log p(target)), into host memory.
  void token_losses(std::vector<double>& out) const;
  // Full logits [B·T, V] into host memory (tests and small models); as float or double.
  void logits(const int32_t* tokens, int B, int T, std::vector<double>& out);
  // Logits of the last position only [V], recomputing the whole prefix (the reference for
  // the cached path below).
  void last_logits(const int32_t* tokens, int T, std::vector<float>& out);
  // KV-cached decoding, for every block kind. prepare_decode allocates (and clears) caches
  // for `sequences` sequences of up to n_ctx positions and buffers for steps of up to
  // `max_rows` rows.
  void prepare_decode(int sequences, int max_rows);
  // One step over M rows: row m is token tokens[m] of sequence slots[m] at position
  // positions[m] (a sequence's rows in increasing position order, its earlier positions
  // decoded by earlier steps). Writes the logits of the rows listed in `logit_rows`, in that
  // order, to `logits` [W, V]. With sharded pools (an expert-parallel group) the step is
  // collective: a rank with no rows of its own takes part with M = 0 and no logit rows, its
  // modules computing the rows the others send. A row's numbers do not depend on the other
  // rows of the step
  // when the backend is in batch-invariant mode (Backend::set_batch_invariant), which
  // serving turns on for steps that mix sequences.
  void decode_step(const int32_t* tokens, const int32_t* slots, const int32_t* positions, int M,
                   const std::vector<int>& logit_rows, std::vector<float>& logits);
  // Incremental decoding of one sequence (slot 0): feeds n tokens at positions
  // pos..pos+n-1 (the cache must hold positions 0..pos-1 from earlier calls; pos 0 starts
  // over) and returns the logits after the last one. pos + n must not exceed n_ctx.
  void decode(const int32_t* tokens, int n, int pos, std::vector<float>& out);
  int decode_sequences() const;  // sequences the caches hold (0 before prepare_decode)

  // Parameters one token uses in a forward pass: the embeddings, ln_f and every block's
  // active parameters (a routed stage counts its chosen modules per step).
  int64_t active_parameters() const;
  // Training FLOPs per token, llm.c's form: 6·(parameters in matmuls a token uses) +
  // 6·(attention layers)·C·T, where every assembly step counts as an attention layer.
  double flops_per_token(int T) const;
  // Auxiliary (balance and z) loss of the last forward, summed over routed stages.
  double aux_loss() const;
  // Routing statistics of the last forward: per routed stage, per step, per router.
  nlohmann::json routing_stats() const;
  // Every routed stage's router decisions of the last forward ("chunks/0/", "moe/1/"), in
  // stack order; empty for models without routed stages.
  struct StageTrace {
    std::string stage;
    std::vector<RouterTrace> routers;
  };
  std::vector<StageTrace> routing_trace() const;
  // Module ablation: "chunks/0/attn/1" (stage, router side, module) is never chosen again
  // (RoutedStage::disable_modules); UserError naming the path when it does not exist.
  void disable_module(const std::string& path);
  // The middle in words: "2 dense blocks, 1 MoM chunk, 4 SAS-P blocks; AltUp K=2 (recycled)".
  std::string describe() const;
  // Routed stages (MoM chunks and MoE layers) in the stack.
  int routed_stage_count() const;
  const std::vector<std::unique_ptr<Block>>& blocks() const { return blocks_; }
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
  // The tied head's weight [V, C]: wte itself, or with wide AltUp its K blocks summed.
  Tensor head_weight();

  Gpt2Config cfg_;
  Backend& backend_;
  DType dtype_;
  Communicator* ep_;
  std::vector<std::unique_ptr<Block>> blocks_;
  std::unique_ptr<AltUpStream> altup_;  // null: AltUp off
  std::unique_ptr<ParameterStore> params_;
  std::unique_ptr<Activations> act_;
  std::unique_ptr<DecodeState> dec_;
  size_t saved_bytes_ = 0;
};

}  // namespace mom
