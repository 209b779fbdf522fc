// The training loop: data -> forward/backward (with gradient accumulation) -> clip -> AdamW
// -> progress line, JSON-lines metrics, periodic evaluation and atomic checkpoints.
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "core/checkpointing.h"
#include "core/run_folder.h"
#include "io/config.h"
#include "parallel/communicator.h"

namespace mom {

struct TrainOptions {
  bool resume = false;        // continue from the newest complete checkpoint in run_dir
  bool auto_resume = false;   // resume when run_dir has a checkpoint, else start (batch jobs, requeues)
  bool force = false;         // start over in a run_dir that already has checkpoints
  int64_t until_step = -1;    // stop (and save) after this many steps; the schedule still spans train.steps
  std::string init_from;      // start from these weights with a fresh optimizer
};

struct TrainSummary {
  int64_t steps_done = 0;
  double last_train_loss = 0;
  std::optional<double> last_val_loss;  // none when no evaluation ran
  std::filesystem::path checkpoint;
  bool stopped_by_signal = false;  // SIGUSR1/SIGTERM: stopped after a step and saved a checkpoint
};

// Exit status of a run stopped by SIGUSR1 or SIGTERM after saving its checkpoint: the job
// should be requeued and resumed (EX_TEMPFAIL, "try again later").
inline constexpr int kStoppedBySignalExit = 75;

// Trains on every rank of `world` (collective; one process passes a SoloCommunicator). The
// ranks form world/ep_size expert-parallel groups (parallel/process_groups.h); each rank takes
// its own slice of every global batch. Rank 0 prints progress and writes metrics.jsonl and
// the checkpoints. On SIGUSR1 or SIGTERM every rank finishes its step, the checkpoint is
// saved and the summary says stopped_by_signal.
TrainSummary train(const io::RunConfig& cfg, const TrainOptions& opts, Communicator& world);


}  // namespace mom
