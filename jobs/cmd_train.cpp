// `mom train` and `mom eval`: run configs through the trainer, or score a checkpoint.
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/checkpointing.h"
#include "core/error.h"
#include "core/trainer.h"
#include "io/config.h"
#include "io/dataloader.h"
#include "jobs/commands.h"
#include "jobs/world.h"

namespace mom::jobs {

void add_train_command(CLI::App& app) {
  struct Args {
    std::string config;
    std::vector<std::string> overrides;
    TrainOptions opts;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("train", "Train a model from a JSON config (default: the tiny CPU GPT-2)");
  cmd->add_option("-c,--config", args->config, "JSON config (jobs/configs/*.json); omitted: the embedded tiny job");
  cmd->add_option("--set", args->overrides, "Override a config key, e.g. --set train.lr=3e-4 (repeatable)");
  cmd->add_flag("--resume", args->opts.resume, "Continue from the newest checkpoint in the run folder");
  cmd->add_flag("--auto-resume", args->opts.auto_resume,
                "Continue from the newest checkpoint when the run folder has one, else start (batch jobs)");
  cmd->add_flag("--force", args->opts.force, "Start over in a run folder that already has checkpoints");
  cmd->add_option("--until-step", args->opts.until_step,
                  "Stop and save after this step (the LR schedule still spans train.steps)");
  cmd->add_option("--init-from", args->opts.init_from, "Start from a checkpoint's weights with a fresh optimizer");
  cmd->callback([args] {
    const io::RunConfig cfg = io::load_config(args->config, args->overrides);
    bool stopped = false;
    run_on_world([&](Communicator& world) {
      const TrainSummary s = train(cfg, args->opts, world);
      stopped = s.stopped_by_signal;
      if (world.rank() == 0 && !stopped) {
        char val[32] = "n/a";  // no evaluation ran (train.eval_every or eval_batches 0)
        if (s.last_val_loss) std::snprintf(val, sizeof val, "%.4f", *s.last_val_loss);
        std::printf("done: %lld steps, train loss %.4f, val loss %s\n", static_cast<long long>(s.steps_done),
                    s.last_train_loss, val);
      }
    });
    if (stopped) throw ExitStatus{kStoppedBySignalExit};
  });
}

void add_eval_command(CLI::App& app) {
  struct Args {
    std::string ckpt, split = "val", data;
    std::vector<std::string> disabled;
    int64_t batches = 0;
    int batch_size = 0, threads = 0, seq_len = 0;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("eval", "Loss and perplexity of a checkpoint on a data split");
  cmd->add_option("checkpoint", args->ckpt, "Checkpoint (.h5)")->required();
  cmd->add_option("--split", args->split, "Which split of the checkpoint's data config: train or val")
      ->check(CLI::IsMember({"train", "val"}));
  cmd->add_option("--data", args->data, "Token files to score instead (a path or a glob such as DIR/val_*.bin)");
  cmd->add_option("--batches", args->batches, "Batches to score (0: the whole split)");
  cmd->add_option("--batch-size", args->batch_size, "Batch size (0: the config's)");
  cmd->add_option("--seq-len", args->seq_len,
                  "Window length T, at most the model's context (0: the config's train.seq_len); the split is cut "
                  "into windows of T+1 tokens at stride T (llm.c's convention, docs/data.md)");
  cmd->add_option("--threads", args->threads, "CPU threads (0: all cores)");
  cmd->add_option("--disable-module", args->disabled,
                  "Ablate a module of a routed stage, STAGE/SIDE/MODULE such as chunks/0/attn/1 (repeatable): a "
                  "token whose choice it was takes its next choice, SKIP when that is next (docs/routing.md)")
      ->allow_extra_args(false);
  cmd->add_flag("--json", args->json, "Print one JSON object (loss to full precision) instead of the text line");
  cmd->callback([args] {
    const io::RunConfig cfg =
        io::config_from_json(read_checkpoint_config(args->ckpt), "checkpoint '" + args->ckpt + "'");
    Backend& be = backend_for(parse_device(cfg.train.device));
    be.set_num_threads(args->threads);
    Gpt2 model(cfg.model, be);
    load_checkpoint(args->ckpt, model, nullptr, nullptr);
    for (const std::string& path : args->disabled) model.disable_module(path);
    const std::string pattern = !args->data.empty() ? args->data : args->split == "val" ? cfg.data.val : cfg.data.train;
    const int B = args->batch_size > 0 ? args->batch_size : cfg.train.batch_size;
    const int T = args->seq_len > 0 ? args->seq_len : cfg.train.seq_len;
    require(T <= cfg.model.n_ctx, "--seq-len " + std::to_string(T) + " exceeds the model's context (model.n_ctx " +
                                      std::to_string(cfg.model.n_ctx) + "); choose at most " +
                                      std::to_string(cfg.model.n_ctx));
    require(args->seq_len >= 0, "--seq-len must be >= 1 (0: the config's train.seq_len)");
    io::TokenLoader loader(
        {{pattern}, io::parse_shard_format(cfg.data.format), B, T, cfg.train.seed, false, 0, 1, cfg.model.vocab_size});
    const int64_t avail = static_cast<int64_t>(loader.batches_per_epoch());
    const int64_t n = args->batches > 0 ? std::min(args->batches, avail) : avail;
    std::vector<int32_t> x(static_cast<size_t>(B) * T), y(x.size());
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      loader.next_batch(x.data(), y.data());
      sum += model.forward(x.data(), y.data(), B, T);
    }
    const double loss = sum / static_cast<double>(n);
    if (args->json) {
      const nlohmann::json out = {{"data", pattern},
                                  {"batches", n},
                                  {"batch_size", B},
                                  {"seq_len", T},
                                  {"tokens", n * B * T},
                                  {"loss", loss},
                                  {"perplexity", std::exp(loss)},
                                  {"disabled_modules", args->disabled}};
      std::printf("%s\n", out.dump().c_str());
      return;
    }
    std::printf("%s: %lld batches x %d x %d tokens | loss %.4f | perplexity %.2f", pattern.c_str(),
                static_cast<long long>(n), B, T, loss, std::exp(loss));
    for (const std::string& path : args->disabled) std::printf(" | without %s", path.c_str());
    std::printf("\n");
  });
}

}  // namespace mom::jobs
