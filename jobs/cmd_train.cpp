// `mom train` and `mom eval`: run configs through the trainer, or score a checkpoint.
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/checkpointing.h"
#include "core/error.h"
#include "core/trainer.h"
#include "io/config.h"
#include "io/dataloader.h"
#include "jobs/commands.h"
#include "jobs/scoring.h"
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
    run_on_world(parse_device(cfg.train.device), [&](Communicator& world) {
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
    ScoringOptions scoring;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("eval", "Loss and perplexity of a checkpoint on a data split");
  cmd->add_option("checkpoint", args->ckpt, "Checkpoint (.h5)")->required();
  cmd->add_option("--split", args->split, "Which split of the checkpoint's data config: train or val")
      ->check(CLI::IsMember({"train", "val"}));
  cmd->add_option("--data", args->data, "Token files to score instead (a path or a glob such as DIR/val_*.bin)");
  add_scoring_options(cmd, args->scoring);
  cmd->add_flag("--json", args->json, "Print one JSON object (loss to full precision) instead of the text line");
  cmd->callback([args] {
    const io::RunConfig cfg =
        io::config_from_json(read_checkpoint_config(args->ckpt), "checkpoint '" + args->ckpt + "'");
    const std::string pattern = !args->data.empty() ? args->data : args->split == "val" ? cfg.data.val : cfg.data.train;
    ScoringRun run = open_scoring(args->ckpt, {pattern}, args->scoring);
    std::vector<int32_t> x(static_cast<size_t>(run.B) * run.T), y(x.size());
    double sum = 0;
    for (int64_t i = 0; i < run.batches; ++i) {
      run.loader->next_batch(x.data(), y.data());
      sum += run.model->forward(x.data(), y.data(), run.B, run.T);
    }
    const double loss = sum / static_cast<double>(run.batches);
    if (args->json) {
      const nlohmann::json out = {{"data", pattern},
                                  {"batches", run.batches},
                                  {"batch_size", run.B},
                                  {"seq_len", run.T},
                                  {"tokens", run.batches * run.B * run.T},
                                  {"loss", loss},
                                  {"perplexity", std::exp(loss)},
                                  {"disabled_modules", args->scoring.disabled}};
      std::printf("%s\n", out.dump().c_str());
      return;
    }
    std::printf("%s\n", scoring_line(pattern, run, loss, args->scoring).c_str());
  });
}

}  // namespace mom::jobs
