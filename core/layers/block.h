// Block: one layer of the model's middle (a pre-LN dense block, a MoM chunk or MoE layer, a
// SAS or SAS-P block, or any of them wrapped by AltUp), behind one small interface.
//
// Why one interface: Gpt2 keeps only the embedding, ln_f, the head and the KV-cache plumbing and
// walks a list of blocks, so a new block kind is a new file under core/layers/ (and its stack
// entry in the config) and touches no other kind. A block's life:
//   1. built from its config; param_specs() says what it owns (names are checkpoint paths);
//   2. bind() once the model's ParameterStore holds those tensors;
//   3. layout() for each batch shape: the tensors kept from forward to backward come from
//      `saved`, backward's (and forward's) temporaries from `scratch`, a region every block
//      shares and reuses one block after another;
//   4. forward(x_in, x_out) over [rows, C], then backward(x_in, dres) with dres holding
//      ∂L/∂x_out on entry and ∂L/∂x_in on return (in place, the residual stream's gradient).
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/params.h"
#include "parallel/token_exchange.h"

namespace mom {

class RoutedStage;

// What every block of a model shares.
struct ModelDims {
  int C = 0, n_head = 0, n_ctx = 0;
  double eps = 1e-5;        // every norm's eps (model.ln_eps)
  double resid_std = 0.02;  // init scale of the pre-LN residual projections (GPT-2's 0.02/sqrt(2·depth))
};

// The rows of one decoding step (Gpt2::decode_step): row m is a token of sequence slot[m] at
// position pos[m]. A sequence's rows come in increasing position order, and its positions
// below its first row's were decoded by earlier steps.
struct DecodeRows {
  int64_t M = 0;
  Tensor slot, pos;  // I32 [M], on the device
};

// One attention's keys and values for decoding: [sequences, n_ctx, C] each, zeroed.
struct KvCache {
  std::unique_ptr<Arena> arena;
  Tensor k, v;
  void allocate(Backend& be, int sequences, int n_ctx, int C, DType dtype);
};

class Block {
 public:
  virtual ~Block() = default;
  // Checkpoint-path prefix naming this block in messages and statistics ("blocks/3",
  // "chunks/0/", "sas/2/").
  virtual std::string name() const = 0;
  // The parameters this block owns. A spec with `stacked` set is one row (leading axis 1) of a
  // tensor that several blocks share along a layer axis (GPT-2's blocks/*, AltUp's altup/*):
  // the model concatenates equal names in block order, so the block that lists it i-th uses
  // row i.
  virtual std::vector<ParamSpec> param_specs() const = 0;
  virtual void bind(const ParameterStore& params) = 0;
  // Tensors for B·T tokens (see the header comment).
  virtual void layout(int B, int T, Carver& saved, Carver& scratch) = 0;
  virtual void forward(const Tensor& x_in, const Tensor& x_out) = 0;
  // loss_scale multiplies the gradients of auxiliary losses (1/accumulation steps).
  virtual void backward(const Tensor& x_in, const Tensor& dres, double loss_scale) = 0;

  // Parameters one token uses in a forward pass (a pool counts its chosen modules only).
  virtual int64_t active_parameters() const = 0;
  // Layers that attend over the sequence (llm.c's FLOPs count 6·C·T for each).
  virtual int attention_layers() const = 0;
  // Training FLOPs a token costs here beyond llm.c's 6·active + 6·C·T per attention layer
  // (AltUp's predict and correct).
  virtual double extra_flops_per_token() const { return 0; }
  // Auxiliary (balance, z) loss of the last forward, already scaled.
  virtual double aux_loss() const { return 0; }
  // Routing statistics of the last forward; null for blocks that do not route.
  virtual nlohmann::json routing_stats() const { return nullptr; }
  // The MoM chunk or MoE layer this block is (or wraps), for routing traces and ablation.
  virtual RoutedStage* routed_stage() { return nullptr; }
  virtual parallel::ExchangeStats exchange_stats() const { return {}; }
  virtual void reset_exchange_stats() {}

  // KV-cached decoding, several sequences at a time. prepare_decode allocates (and clears)
  // caches for `sequences` sequences of up to n_ctx positions (the block's own arena) and
  // carves the temporaries of steps of up to `max_rows` rows from `scratch`, a region every
  // block shares (called with a planning carver first, to size it). decode updates x
  // [M, C] (AltUp: [K·M, C]) in place; each row attends over its own sequence's cache.
  virtual void prepare_decode(int sequences, int max_rows, Carver& scratch) = 0;
  virtual void decode(const Tensor& x, const DecodeRows& rows) = 0;
};

}  // namespace mom
