// The training loop: data -> forward/backward (with gradient accumulation) -> clip -> AdamW
// -> progress line, JSON-lines metrics, periodic evaluation and atomic checkpoints.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>

#include "core/checkpointing.h"
#include "io/config.h"

namespace mom {

struct TrainOptions {
  bool resume = false;        // continue from the newest complete checkpoint in run_dir
  bool force = false;         // start over in a run_dir that already has checkpoints
  int64_t until_step = -1;    // stop (and save) after this many steps; the schedule still spans train.steps
  std::string init_from;      // start from these weights with a fresh optimizer
};

struct TrainSummary {
  int64_t steps_done = 0;
  double last_train_loss = 0, last_val_loss = 0;
  std::filesystem::path checkpoint;
};

TrainSummary train(const io::RunConfig& cfg, const TrainOptions& opts);

// Newest complete checkpoint (ckpt_NNNNNNNN.h5) in a run folder, or empty.
std::filesystem::path latest_checkpoint(const std::filesystem::path& run_dir);
std::filesystem::path checkpoint_path(const std::filesystem::path& run_dir, int64_t step);

}  // namespace mom
