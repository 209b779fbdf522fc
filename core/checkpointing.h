// Saving and restoring a training run: model parameters, AdamW moments and the loop's state,
// mapped onto the checkpoint file layer (io/checkpoint_file.h). The schema is in
// docs/checkpoint-format.md.
#pragma once
#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/gpt2.h"
#include "core/optimizer.h"

namespace mom {

struct TrainState {
  int64_t step = 0;         // optimizer steps completed
  int64_t tokens_seen = 0;  // training tokens consumed
  std::array<uint64_t, 4> rng{};
  uint64_t loader_epoch = 0, loader_batch = 0;
  // Samples in one loader batch of the saving run (ranks x batch size), so that a run with
  // another rank count or batch size can convert loader_batch into its own batches.
  int64_t loader_batch_samples = 0;
  int64_t ranks = 1, ep_size = 1;  // how the saving run was laid out (informational)
};

// Writes atomically (temp file + rename); refuses to replace `path` unless overwrite.
// `extra_bytes` (dataset name, raw bytes) are stored as byte datasets in the same commit,
// e.g. the tokenizer files of a converted Hugging Face model.
//
// Sharded pools: a pool tensor is stored whole, along its global module axis, so the file
// does not depend on the rank count. When the model's pools are sharded the call is
// collective over its expert-parallel group: each pool tensor (and its moments) is gathered
// to the group's first rank, one tensor at a time, and only the rank with `writes_file`
// (world rank 0) writes. Returns "" on success, else the writer's error message; the other
// ranks return "" and learn of a failure from the caller's agreement step, so no rank is left
// inside a collective when the disk fills up.
std::string save_checkpoint(const std::filesystem::path& path, const Gpt2& model, const AdamW* opt,
                            const TrainState& state, const nlohmann::json& config, bool overwrite,
                            const std::vector<std::pair<std::string, std::string>>* extra_bytes = nullptr,
                            bool writes_file = true);
// The config stored in a checkpoint (root attribute "config").
nlohmann::json read_checkpoint_config(const std::filesystem::path& path);
// Loads parameters (and, when given, moments and state) into an already-built model whose
// shapes must match the checkpoint's; a mismatch names the tensor and both shapes. A rank
// holding a block of a pool reads just its rows, so a checkpoint saved at any ep_size loads
// at any other.
void load_checkpoint(const std::filesystem::path& path, Gpt2& model, AdamW* opt, TrainState* state);

}  // namespace mom
