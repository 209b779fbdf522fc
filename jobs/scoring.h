// What `mom eval` and `mom route` share: the options that say which tokens to score and how
// (batches, batch size, window length, threads, ablated modules), and opening the checkpoint's
// model and a loader over those tokens in eval's windows (T+1 tokens at stride T, stream order).
// One place, so that route's mean loss is eval's by construction, not by two copies agreeing.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/gpt2.h"
#include "io/config.h"
#include "io/dataloader.h"

namespace mom::jobs {

struct ScoringOptions {
  std::vector<std::string> disabled;  // --disable-module STAGE/SIDE/MODULE
  int64_t batches = 0;                // 0: the whole file
  int batch_size = 0, threads = 0, seq_len = 0;
  std::string device = "cpu";
};

// Adds --batches, --batch-size, --seq-len, --threads, --device and --disable-module to `cmd`.
void add_scoring_options(CLI::App* cmd, ScoringOptions& options);

// A checkpoint's model with the ablations applied and a loader over `data`.
struct ScoringRun {
  nlohmann::json config_json;
  io::RunConfig cfg;
  std::unique_ptr<Gpt2> model;
  std::unique_ptr<io::TokenLoader> loader;
  int B = 0, T = 0;
  int64_t batches = 0;  // batches to score: --batches, at most the file's
};
// `data` empty: the checkpoint's data.val. UserError for bad options or files.
ScoringRun open_scoring(const std::string& checkpoint, std::vector<std::string> data, const ScoringOptions& options);

// "DATA: N batches x B x T tokens | loss L | perplexity P | without M ..." (no newline).
std::string scoring_line(const std::string& data, const ScoringRun& run, double loss, const ScoringOptions& options);

}  // namespace mom::jobs
