#include "core/layers/blocks.h"

#include <cmath>

#include "core/layers/dense_block.h"

namespace mom {

ModelDims model_dims(const Gpt2Config& c) {
  // Residual projections of pre-LN blocks scale with the depth the residual stream sees: dense
  // blocks plus every assembly step of every routed stage (simplified blocks have no such
  // projections and keep their own init, MODELS.md §4).
  int64_t depth = c.n_layer;
  for (const auto& item : effective_stack(c))
    if (item.type == BlockType::Routed) depth += item.stage.steps;
  ModelDims d;
  d.C = c.n_embd, d.n_head = c.n_head, d.n_ctx = c.n_ctx, d.eps = c.ln_eps;
  d.resid_std = 0.02 / std::sqrt(2.0 * static_cast<double>(std::max<int64_t>(depth, 1)));
  return d;
}

std::vector<std::unique_ptr<Block>> build_blocks(const Gpt2Config& c, Communicator* ep) {
  const ModelDims dims = model_dims(c);
  const std::vector<StackItem> stack = effective_stack(c);
  // The aux losses average over stages of a kind (MoM chunks, MoE layers).
  int chunks = 0, moes = 0;
  for (const auto& item : stack)
    if (item.type == BlockType::Routed) ++(item.stage.moe ? moes : chunks);
  std::vector<std::unique_ptr<Block>> blocks;
  int dense = 0, sas = 0, sas_p = 0, chunk = 0, moe = 0;
  for (const auto& item : stack) {
    switch (item.type) {
      case BlockType::Dense:
        for (int i = 0; i < item.count; ++i) blocks.push_back(std::make_unique<DenseBlock>(dims, dense++));
        break;
      case BlockType::Routed: {
        const bool is_moe = item.stage.moe;
        const std::string prefix = (is_moe ? "moe/" : "chunks/") + std::to_string(is_moe ? moe++ : chunk++) + "/";
        blocks.push_back(std::make_unique<RoutedStage>(item.stage, dims, prefix, 1.0 / (is_moe ? moes : chunks), ep));
        break;
      }
      case BlockType::Sas:
        for (int i = 0; i < item.count; ++i)
          blocks.push_back(std::make_unique<SasBlock>(item.simplified, dims, sas++, i == 0));
        break;
      case BlockType::SasP:
        for (int i = 0; i < item.count; ++i)
          blocks.push_back(std::make_unique<SasPBlock>(item.simplified, dims, sas_p++, i == 0));
        break;
    }
  }
  if (c.altup.enabled())
    for (size_t l = 0; l < blocks.size(); ++l)
      blocks[l] = std::make_unique<AltUpLayer>(c.altup, dims, static_cast<int>(l), std::move(blocks[l]));
  return blocks;
}

}  // namespace mom
