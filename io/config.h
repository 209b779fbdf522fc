// RunConfig: the job configuration, from JSON files in jobs/configs/ plus command-line
// overrides (`--set train.lr=3e-4`).
//
// Why a schema: every key has a type, a default and a check; an unknown key, a wrong type or
// an invalid value is a UserError naming the key (and the closest known key for typos),
// before any work starts. The defaults are the embedded tiny CPU job, so `mom train` with no
// config trains the tiny model on the prepared Python corpus.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/gpt2.h"

namespace mom::io {

struct DataConfig {
  std::string train = "data/pystdlib/train_*.bin";
  std::string val = "data/pystdlib/val_*.bin";
  std::string format = "auto";  // auto | llmc | nanogpt
};

struct TrainConfig {
  std::string device = "cpu";
  // What f32 GEMMs may compute in (PyTorch's set_float32_matmul_precision): "highest" (f32),
  // "high" (TF32 tensor cores), "medium" (bf16 tensor cores, f32 accumulation). Storage, master
  // weights, moments, norms and losses stay f32 in every mode. CUDA only; the CPU computes f32.
  std::string matmul_precision = "highest";
  int threads = 0;  // 0: all cores
  int batch_size = 8;
  int seq_len = 256;
  int grad_accum = 1;
  int64_t steps = 300;
  double lr = 1e-3, min_lr = 1e-4;
  int64_t warmup_steps = 30;
  double weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, grad_clip = 1.0;
  uint64_t seed = 1337;
  int64_t eval_every = 50, eval_batches = 8, save_every = 100;
  // Expert-parallel group size: ranks that split each module pool between them (the world
  // size must be a multiple; the rest of the model is data-parallel over all ranks).
  int ep_size = 1;
  // Retention (core/run_folder.h): keep the newest keep_last checkpoints (0: all) and every
  // keep_every-th step's (0: none by this rule); the newest is always kept.
  int64_t keep_last = 0, keep_every = 0;
};

struct RunConfig {
  Gpt2Config model;
  DataConfig data;
  TrainConfig train;
  std::string run_dir = "runs/tiny";
  nlohmann::json json;  // the full, validated config as JSON (stored in checkpoints)
};

// The defaults as JSON (every key the schema knows).
nlohmann::json default_config_json();
// Loads `path` (empty: defaults only), applies `overrides` ("a.b=value", value parsed as JSON
// when it parses, else taken as a string), validates, and returns the config.
RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides);
// Validates a full JSON config (e.g. one stored in a checkpoint) and builds the struct.
RunConfig config_from_json(const nlohmann::json& j, const std::string& origin);

}  // namespace mom::io
