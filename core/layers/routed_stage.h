// RoutedStage: a Mixture-of-Modules chunk (MODELS.md §2) or a Mixture-of-Experts layer (§3),
// written once as router -> dispatch plan -> module compute -> fixed-order combine.
//
// Why one class for both: an MoE layer is a chunk with one attention module always chosen
// with weight 1, E FFN modules behind a linear gate, and one step. The pieces stay separate
// and testable alone: the router network (router/router_net.h), gating and balancing
// (router/gating.h), the plan (router/dispatch_plan.h), and the module math, which reuses the
// dense sub-layers' kernels on each module's contiguous block of rows. Every module runs one
// GEMM per projection; an empty module is skipped and keeps exactly-zero gradients.
//
// Expert/module parallelism: with an expert-parallel group of E ranks each rank holds NA/E
// attention and NF/E FFN modules. Every rank routes its own tokens over the global module ids;
// the token exchange (parallel/token_exchange.h) carries the rows to the modules' owners and
// the results back, twice per MoM attention step (before the QKV and before the output
// projection), once per FFN step and MoE layer; backward mirrors each trip. Combines and
// scatter-adds stay in plan order on the token's own rank, so the result is that of one process.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/layers/block.h"
#include "core/params.h"
#include "parallel/token_exchange.h"
#include "router/dispatch_plan.h"
#include "router/router_net.h"

namespace mom {

enum class RoutingMode {
  Learned,  // a router network picks top-K (MoM's attention and FFN, MoE's FFN)
  Single,   // one module, every token, weight 1 (MoE's dense attention)
  Forced,   // module h at assembly step h, weight 1 (dense GPT-2 as a chunk; tests, conversion checks)
};

struct RoutedStageConfig {
  bool moe = false;      // naming, metrics and defaults only; the math is the same
  int attn_modules = 1;  // NA
  int ffn_modules = 1;   // NF (experts for MoE)
  RoutingMode attn_routing = RoutingMode::Learned;
  RoutingMode ffn_routing = RoutingMode::Learned;
  bool skip = false;  // a SKIP class for the learned routers
  int steps = 1;      // H
  int top_k = 1;      // K
  router::RouterKind router = router::RouterKind::Mlp;
  int router_dim = 256;
  bool router_bias = true;  // false: the MoE gate
  double temperature = 1.0;
  bool sigmoid = false;  // MoE gate option
  bool renormalise = true;
  bool weighted_qkv = false;
  double balance_coef = 0;          // Switch balance (MoM balance_coef, MoE aux_coef)
  double z_coef = 0;                // router z-loss
  router::CapacityConfig capacity;  // FFN side only
  bool shared_expert = false;       // FFN side only: an MLP every token uses with weight 1
};

// Parameters of a stage under `prefix` ("chunks/0/", "moe/1/"): attention pool attn/* [NA,…],
// FFN pool ffn/* [NF,…], routers router_attn/* and router_ffn/*, shared/* [1,…].
std::vector<ParamSpec> routed_stage_param_specs(const RoutedStageConfig& cfg, int C, const std::string& prefix,
                                                double resid_std);

// One router's decisions at one assembly step of the last forward, on the host: what
// `mom route` writes and the routing service reports (docs/serving.md).
struct RouterTrace {
  int step = 0;
  std::string router;             // "attn" or "ffn"
  int N = 0, K = 0, classes = 0;  // tokens, choices per token, router classes (modules + SKIP)
  std::vector<int32_t> modules;   // [N, K] module ids in descending probability, -1 for SKIP
  std::vector<double> weights;    // [N, K] gate weights g
  std::vector<double> probs;      // [N, classes] the router's distribution (SKIP last)
  std::vector<uint8_t> dropped;   // [N, K] 1 where capacity dropped the assignment
};

class RoutedStage final : public Block {
 public:
  // `prefix` names its parameters ("chunks/0/", "moe/1/"). aux_scale multiplies this stage's
  // balance and z losses (1/number of such stages, so that they average). `ep`: the
  // expert-parallel group sharing the module pools (nullptr or one rank: all modules here).
  // With more ranks, the store holds this rank's block of each pool, and every forward and
  // backward is collective over `ep`.
  RoutedStage(const RoutedStageConfig& cfg, const ModelDims& dims, std::string prefix, double aux_scale,
              Communicator* ep = nullptr);
  ~RoutedStage() override;
  std::string name() const override { return prefix_; }
  std::vector<ParamSpec> param_specs() const override;
  void bind(const ParameterStore& params) override;
  // The stage keeps its own arenas (the rows its modules receive are known only once routed).
  void layout(int B, int T, Carver& saved, Carver& scratch) override;
  void forward(const Tensor& x_in, const Tensor& x_out) override;
  void backward(const Tensor& x_in, const Tensor& dres, double loss_scale) override;
  // A MoM chunk caches, per assembly step, the keys and values each token produced with its
  // own modules; an MoE layer's attention is dense and cached as usual. Decoding is dropless.
  void prepare_decode(int sequences, int max_rows, Carver& scratch) override;
  void decode(const Tensor& x, const DecodeRows& rows) override;
  // Everything outside the pools, plus per assembly step top_k attention and top_k FFN
  // modules, the routers and the shared expert (nominal: SKIP choices make the real count lower).
  int64_t active_parameters() const override;
  int attention_layers() const override { return cfg_.steps; }  // every assembly step attends
  double aux_loss() const override;
  // Per step and router: load, SKIP rate, entropy, drops.
  nlohmann::json routing_stats() const override;
  const RoutedStageConfig& config() const { return cfg_; }
  RoutedStage* routed_stage() override { return this; }
  // Every learned router's decisions of the last forward, step by step (attention, then FFN).
  std::vector<RouterTrace> routing_trace() const;
  // Module ablation: modules of `side` ("attn" or "ffn") that no token may choose from now on
  // (calls add up);
  // a token takes its next choice instead (SKIP when that is next). UserError for a side
  // without a learned router or a module out of range.
  void disable_modules(const std::string& side, const std::vector<int>& modules);
  // Traffic and time of this stage's token exchanges since the last reset (zero with one rank).
  parallel::ExchangeStats exchange_stats() const override;
  void reset_exchange_stats() override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  RoutedStageConfig cfg_;
  ModelDims dims_;
  std::string prefix_;
  double aux_scale_;
  Communicator* ep_;
  int train_B_ = 0, train_T_ = 0;  // the batch shape layout() last prepared
};

}  // namespace mom
