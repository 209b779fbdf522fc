// `mom convert dense-to-mom` and `mom convert dense-to-moe`: stage 2 of the two-stage recipe
// (a trained dense GPT-2 becomes a MoM's module pools) and MoE upcycling. The layer map is
// core/two_stage.h's; this file only reads, checks and writes.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "core/checkpointing.h"
#include "core/error.h"
#include "core/two_stage.h"
#include "io/checkpoint_file.h"
#include "io/config.h"
#include "jobs/commands.h"

namespace mom::jobs {

namespace {

void dense_to_routed(const std::string& config, const std::vector<std::string>& overrides, const std::string& in,
                     const std::string& out, bool force, bool moe) {
  const io::RunConfig target = io::load_config(config, overrides);
  const char* kind = moe ? "moe" : "mom";
  bool any = false, other = false;
  for (const auto& item : target.model.stack)
    if (item.type == BlockType::Routed) (item.stage.moe == moe ? any : other) = true;
  require(any && !other, "--config '" + config + "': model.stack must hold " + (moe ? "MoE layers" : "MoM chunks") +
                             " (entries with \"type\": \"" + kind + "\") and no other routed kind; see jobs/configs/");
  const io::RunConfig source = io::config_from_json(read_checkpoint_config(in), "checkpoint '" + in + "'");
  Backend& be = backend_for(Device::CPU);
  Gpt2 dense(source.model, be);
  load_checkpoint(in, dense, nullptr, nullptr);
  Gpt2 routed(target.model, be);
  routed.init_weights(target.train.seed);  // routers and gates start fresh
  init_from_dense(dense, routed);
  // Tokenizer files travel on, so that `mom convert to-hf` and `generate` keep working.
  std::vector<std::pair<std::string, std::string>> extra;
  const io::CheckpointReader reader(in);
  for (const char* name : {"tokenizer/vocab.json", "tokenizer/merges.txt"})
    if (reader.has(name)) extra.emplace_back(name, reader.read_bytes(name));
  save_checkpoint(out, routed, nullptr, TrainState{}, target.json, force, extra.empty() ? nullptr : &extra);
  std::printf("%s: %d dense layers -> %s (%.2fM parameters, %d routed stage%s); routers start fresh\n", out.c_str(),
              source.model.n_layer, kind, static_cast<double>(routed.params().num_elements()) / 1e6,
              routed.routed_stage_count(), routed.routed_stage_count() == 1 ? "" : "s");
  std::printf("continue with: mom train --config %s --init-from %s\n", config.c_str(), out.c_str());
}

}  // namespace

void add_two_stage_commands(CLI::App& convert) {
  struct Args {
    std::string config, from, to;
    std::vector<std::string> overrides;
    bool force = false;
  };
  for (const bool moe : {false, true}) {
    auto args = std::make_shared<Args>();
    CLI::App* cmd = convert.add_subcommand(
        moe ? "dense-to-moe" : "dense-to-mom",
        moe ? "Upcycle a dense checkpoint into an MoE model (each layer's MLP copied into every expert)"
            : "Two-stage init: a dense checkpoint's layers become a MoM model's module pools (MODELS.md §2)");
    cmd->add_option("-c,--config", args->config, "Config of the target model (its model.stack)")->required();
    cmd->add_option("--set", args->overrides, "Override a config key (repeatable)");
    cmd->add_option("in", args->from, "Dense checkpoint (.h5), e.g. trained or converted from Hugging Face")->required();
    cmd->add_option("out", args->to, "Checkpoint to write (.h5)")->required();
    cmd->add_flag("--force", args->force, "Replace an existing checkpoint");
    cmd->callback([args, moe] { dense_to_routed(args->config, args->overrides, args->from, args->to, args->force, moe); });
  }
}

}  // namespace mom::jobs
