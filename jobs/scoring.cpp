#include "jobs/scoring.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/checkpointing.h"
#include "core/error.h"
#include "jobs/commands.h"

namespace mom::jobs {

void add_scoring_options(CLI::App* cmd, ScoringOptions& options) {
  cmd->add_option("--batches", options.batches, "Batches to score (0: all of the data)");
  cmd->add_option("--batch-size", options.batch_size, "Batch size (0: the config's)");
  cmd->add_option("--seq-len", options.seq_len,
                  "Window length T, at most the model's context (0: the config's train.seq_len); the data is cut "
                  "into windows of T+1 tokens at stride T (llm.c's convention, docs/data.md)");
  cmd->add_option("--threads", options.threads, "CPU threads (0: all cores)");
  add_device_option(cmd, options.device);
  cmd->add_option("--disable-module", options.disabled,
                  "Ablate a module of a routed stage, STAGE/SIDE/MODULE such as chunks/0/attn/1 (repeatable): a "
                  "token whose choice it was takes its next choice, SKIP when that is next (docs/routing.md)")
      ->allow_extra_args(false);
}

ScoringRun open_scoring(const std::string& checkpoint, std::vector<std::string> data, const ScoringOptions& options) {
  require(options.seq_len >= 0, "--seq-len must be >= 1 (0: the config's train.seq_len)");
  require(options.batch_size >= 0, "--batch-size must be >= 1 (0: the config's train.batch_size)");
  require(options.batches >= 0, "--batches must be >= 1 (0: all of the data)");
  ScoringRun run;
  run.config_json = read_checkpoint_config(checkpoint);
  run.cfg = io::config_from_json(run.config_json, "checkpoint '" + checkpoint + "'");
  const io::RunConfig& cfg = run.cfg;
  run.B = options.batch_size > 0 ? options.batch_size : cfg.train.batch_size;
  run.T = options.seq_len > 0 ? options.seq_len : cfg.train.seq_len;
  require(run.T <= cfg.model.n_ctx, "--seq-len " + std::to_string(run.T) +
                                        " exceeds the model's context (model.n_ctx " + std::to_string(cfg.model.n_ctx) +
                                        "); choose at most " + std::to_string(cfg.model.n_ctx));
  Backend& be = backend_for(parse_device(options.device));
  be.set_num_threads(options.threads);
  run.model = std::make_unique<Gpt2>(cfg.model, be);
  load_checkpoint(checkpoint, *run.model, nullptr, nullptr);
  for (const std::string& path : options.disabled) run.model->disable_module(path);
  if (data.empty()) data = {cfg.data.val};
  run.loader = std::make_unique<io::TokenLoader>(io::LoaderOptions{
      data, io::parse_shard_format(cfg.data.format), run.B, run.T, cfg.train.seed, false, 0, 1, cfg.model.vocab_size});
  const int64_t avail = static_cast<int64_t>(run.loader->batches_per_epoch());
  run.batches = options.batches > 0 ? std::min(options.batches, avail) : avail;
  return run;
}

std::string scoring_line(const std::string& data, const ScoringRun& run, double loss, const ScoringOptions& options) {
  char buf[160];
  std::snprintf(buf, sizeof buf, ": %lld batches x %d x %d tokens | loss %.4f | perplexity %.2f",
                static_cast<long long>(run.batches), run.B, run.T, loss, std::exp(loss));
  std::string line = data + buf;
  for (const std::string& path : options.disabled) line += " | without " + path;
  return line;
}

}  // namespace mom::jobs
