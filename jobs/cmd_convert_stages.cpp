// `mom convert dense-to-mom`, `dense-to-moe` and `dense-to-altup`: stage 2 of the two-stage
// recipe (a trained dense GPT-2 becomes a MoM's module pools), MoE upcycling, and
// Recycled-AltUp widening. The tensor maps are core/two_stage.h's; this file only reads,
// checks and writes.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "core/checkpointing.h"
#include "core/error.h"
#include "core/two_stage.h"
#include "io/checkpoint_file.h"
#include "io/config.h"
#include "jobs/checkpoint_tokenizer.h"
#include "jobs/commands.h"

namespace mom::jobs {

namespace {

// Tokenizer files travel on, so that `mom convert to-hf` and `generate` keep working.
std::vector<std::pair<std::string, std::string>> tokenizer_files(const std::string& in) {
  std::vector<std::pair<std::string, std::string>> extra;
  const io::CheckpointReader reader(in);
  for (const char* name : {kTokenizerVocabDataset, kTokenizerMergesDataset})
    if (reader.has(name)) extra.emplace_back(name, reader.read_bytes(name));
  return extra;
}

void dense_to_routed(const std::string& config, const std::vector<std::string>& overrides, const std::string& in,
                     const std::string& out, bool force, bool moe) {
  const io::RunConfig target = io::load_config(config, overrides);
  require_made_of_dense_layers(target.model);
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
  const auto extra = tokenizer_files(in);
  save_checkpoint(out, routed, nullptr, TrainState{}, target.json, force, extra.empty() ? nullptr : &extra);
  std::printf("%s: %d dense layers -> %s (%.2fM parameters, %d routed stage%s); routers start fresh\n", out.c_str(),
              source.model.n_layer, kind, static_cast<double>(routed.params().num_elements()) / 1e6,
              routed.routed_stage_count(), routed.routed_stage_count() == 1 ? "" : "s");
  std::printf("continue with: mom train --config %s --init-from %s\n", config.c_str(), out.c_str());
}

struct AltUpArgs {
  std::string from, to;
  int k = 2;
  std::string mode = "recycled", active = "alternate", layer_input = "activated", coefficients = "static";
  bool force = false;
};

void widen(const AltUpArgs& a) {
  nlohmann::json config = read_checkpoint_config(a.from);
  config["model"]["altup"] = {{"k", a.k},
                              {"mode", a.mode},
                              {"active", a.active},
                              {"layer_input", a.layer_input},
                              {"coefficients", a.coefficients}};
  const io::RunConfig source = io::config_from_json(read_checkpoint_config(a.from), "checkpoint '" + a.from + "'");
  const io::RunConfig target = io::config_from_json(config, "dense-to-altup options");
  Backend& be = backend_for(Device::CPU);
  Gpt2 model(source.model, be);
  load_checkpoint(a.from, model, nullptr, nullptr);
  Gpt2 wide(target.model, be);
  wide.init_weights(target.train.seed);
  widen_with_altup(model, wide);
  const auto extra = tokenizer_files(a.from);
  save_checkpoint(a.to, wide, nullptr, TrainState{}, target.json, a.force, extra.empty() ? nullptr : &extra);
  std::printf("%s: %s -> %s (%.2fM parameters); the widened model computes the source's logits up to ln_f's eps\n",
              a.to.c_str(), model.describe().c_str(), wide.describe().c_str(),
              static_cast<double>(wide.params().num_elements()) / 1e6);
}

}  // namespace

void add_two_stage_commands(CLI::App& convert) {
  auto altup = std::make_shared<AltUpArgs>();
  CLI::App* widen_cmd = convert.add_subcommand(
      "dense-to-altup",
      "Widen a checkpoint with Recycled-AltUp (MODELS.md §5): K copies of the residual stream, p = I, g = 1; the "
      "logits stay the source's up to LayerNorm's eps (any stack: dense, MoM, MoE, SAS)");
  widen_cmd->add_option("in", altup->from, "Checkpoint to widen (.h5), e.g. trained or converted from Hugging Face")
      ->required();
  widen_cmd->add_option("out", altup->to, "Checkpoint to write (.h5)")->required();
  widen_cmd->add_option("-k,--k", altup->k, "Blocks of the widened stream (model.altup.k)")->capture_default_str();
  widen_cmd->add_option("--mode", altup->mode, "model.altup.mode: only \"recycled\" can be made from a trained model")
      ->capture_default_str();
  widen_cmd->add_option("--active", altup->active, "model.altup.active: alternate | first")->capture_default_str();
  widen_cmd->add_option("--layer-input", altup->layer_input, "model.altup.layer_input: activated | predicted")
      ->capture_default_str();
  widen_cmd->add_option("--coefficients", altup->coefficients, "model.altup.coefficients: static | input_dependent")
      ->capture_default_str();
  widen_cmd->add_flag("--force", altup->force, "Replace an existing checkpoint");
  widen_cmd->callback([altup] { widen(*altup); });

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
    cmd->add_option("in", args->from, "Dense checkpoint (.h5), e.g. trained or converted from Hugging Face")
        ->required();
    cmd->add_option("out", args->to, "Checkpoint to write (.h5)")->required();
    cmd->add_flag("--force", args->force, "Replace an existing checkpoint");
    cmd->callback(
        [args, moe] { dense_to_routed(args->config, args->overrides, args->from, args->to, args->force, moe); });
  }
}

}  // namespace mom::jobs
