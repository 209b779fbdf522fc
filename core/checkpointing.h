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
};

// Writes atomically (temp file + rename); refuses to replace `path` unless overwrite.
// `extra_bytes` (dataset name, raw bytes) are stored as byte datasets in the same commit,
// e.g. the tokenizer files of a converted Hugging Face model.
void save_checkpoint(const std::filesystem::path& path, const Gpt2& model, const AdamW* opt, const TrainState& state,
                     const nlohmann::json& config, bool overwrite,
                     const std::vector<std::pair<std::string, std::string>>* extra_bytes = nullptr);
// The config stored in a checkpoint (root attribute "config").
nlohmann::json read_checkpoint_config(const std::filesystem::path& path);
// Loads parameters (and, when given, moments and state) into an already-built model whose
// shapes must match the checkpoint's; a mismatch names the tensor and both shapes.
void load_checkpoint(const std::filesystem::path& path, Gpt2& model, AdamW* opt, TrainState* state);

}  // namespace mom
