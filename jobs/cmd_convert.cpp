// `mom convert hf-gpt2` and `mom convert to-hf`: Hugging Face GPT-2 folders in and out.
//
// Why built this way: the name mapping and file formats live in io/hf_gpt2 and
// io/safetensors; this file only moves tensors between them and a mom::Gpt2, so that the
// checkpoint is written by the same save_checkpoint (and checked by the same
// load_checkpoint) as a trained model's. The model is built on the CPU backend: conversion
// copies bytes and needs no accelerator.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/checkpointing.h"
#include "core/error.h"
#include "io/checkpoint_file.h"
#include "io/config.h"
#include "io/hf_gpt2.h"
#include "jobs/checkpoint_tokenizer.h"
#include "jobs/commands.h"

namespace mom::jobs {

namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

void hf_to_mom(const std::filesystem::path& dir, const std::filesystem::path& out, bool force) {
  std::error_code ec;
  // Before the (possibly long) read, so a forgotten --force fails at once.
  require(force || !std::filesystem::exists(out, ec),
          "checkpoint " + out.string() + " exists; pass --force to replace it");
  const io::HfGpt2Dir hf = io::read_hf_gpt2_dir(dir);

  // A weights-only run config: the model from config.json, everything else mom's defaults
  // (the sequence length capped at the model's context so that the config validates).
  nlohmann::json config = io::default_config_json();
  auto& m = config["model"];
  m["vocab_size"] = hf.config.vocab_size;
  m["n_ctx"] = hf.config.n_ctx;
  m["n_layer"] = hf.config.n_layer;
  m["n_head"] = hf.config.n_head;
  m["n_embd"] = hf.config.n_embd;
  m["ln_eps"] = hf.config.ln_eps;
  config["train"]["seq_len"] = std::min(config["train"]["seq_len"].get<int>(), hf.config.n_ctx);
  const io::RunConfig run = io::config_from_json(config, (dir / "config.json").string());

  Gpt2 model(run.model, backend_for(Device::CPU));
  ParameterStore& P = model.params();
  for (size_t i = 0; i < P.size(); ++i) {
    const ParamSpec& spec = P.specs()[i];
    const auto it = hf.params.find(spec.name);
    // The mapping table and gpt2_param_specs must agree; a mismatch is a bug, not bad input.
    if (it == hf.params.end() || it->second.shape != spec.shape.vec())
      throw std::logic_error("hf-gpt2 mapping disagrees with the model on parameter '" + spec.name + "' (" +
                             (it == hf.params.end() ? std::string("absent") : shape_text(it->second.shape)) + " vs " +
                             shape_text(spec.shape.vec()) + ")");
    P.backend().copy_from_host(P.param(i), it->second.data.data());
  }
  std::vector<std::pair<std::string, std::string>> extra;
  if (hf.has_tokenizer) extra = {{kTokenizerVocabDataset, hf.vocab_json}, {kTokenizerMergesDataset, hf.merges_txt}};
  save_checkpoint(out, model, nullptr, TrainState{}, run.json, force, &extra);
  std::printf("converted %s (GPT-2: %d layers, %d heads, width %d, context %d, vocabulary %d%s) to %s\n",
              dir.string().c_str(), hf.config.n_layer, hf.config.n_head, hf.config.n_embd, hf.config.n_ctx,
              hf.config.vocab_size, hf.has_tokenizer ? ", with tokenizer" : "", out.string().c_str());
}

void mom_to_hf(const std::filesystem::path& in, const std::filesystem::path& dir, bool force) {
  const io::RunConfig run = io::config_from_json(read_checkpoint_config(in), "checkpoint '" + in.string() + "'");
  Gpt2 model(run.model, backend_for(Device::CPU));
  load_checkpoint(in, model, nullptr, nullptr);
  io::HostTensors params;
  const ParameterStore& P = model.params();
  for (size_t i = 0; i < P.size(); ++i) {
    io::HostTensor& t = params[P.specs()[i].name];
    t.shape = P.specs()[i].shape.vec();
    t.data.resize(static_cast<size_t>(P.param(i).numel()));
    P.backend().copy_to_host(t.data.data(), P.param(i));
  }
  const io::CheckpointReader reader(in);
  const bool has_tokenizer = reader.has(kTokenizerVocabDataset) && reader.has(kTokenizerMergesDataset);
  const std::string vocab = has_tokenizer ? reader.read_bytes(kTokenizerVocabDataset) : "";
  const std::string merges = has_tokenizer ? reader.read_bytes(kTokenizerMergesDataset) : "";
  io::write_hf_gpt2_dir(dir, run.model, params, has_tokenizer, vocab, merges, force);
  std::printf("wrote %s: config.json, model.safetensors%s\n", dir.string().c_str(),
              has_tokenizer ? ", vocab.json, merges.txt"
                            : " (the checkpoint holds no tokenizer: copy vocab.json and merges.txt in yourself)");
}

}  // namespace

void add_convert_command(CLI::App& app) {
  CLI::App* convert =
      app.add_subcommand("convert", "Convert models: Hugging Face GPT-2 in and out, dense to MoM or MoE");
  convert->require_subcommand(1);
  struct Args {
    std::string from, to;
    bool force = false;
  };
  auto args = std::make_shared<Args>();

  CLI::App* in = convert->add_subcommand(
      "hf-gpt2", "Hugging Face GPT-2 folder (config.json, model.safetensors) to a weights-only mom checkpoint");
  in->add_option("dir", args->from, "Folder with config.json, model.safetensors [, vocab.json, merges.txt]")
      ->required();
  in->add_option("out", args->to, "Checkpoint to write (.h5)")->required();
  in->add_flag("--force", args->force, "Replace an existing checkpoint");
  in->callback([args] { hf_to_mom(args->from, args->to, args->force); });

  CLI::App* out = convert->add_subcommand(
      "to-hf", "mom checkpoint to a Hugging Face GPT-2 folder (GPT2LMHeadModel.from_pretrained reads it)");
  out->add_option("checkpoint", args->from, "Checkpoint (.h5)")->required();
  out->add_option("dir", args->to, "Folder to write (created when missing)")->required();
  out->add_flag("--force", args->force, "Replace existing files in the folder");
  out->callback([args] { mom_to_hf(args->from, args->to, args->force); });
  add_two_stage_commands(*convert);
}

}  // namespace mom::jobs
