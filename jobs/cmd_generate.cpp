// `mom generate`: prompt text in, sampled text out, streamed as tokens are made.
#include <cstdio>
#include <memory>
#include <string>

#include "core/checkpointing.h"
#include "core/error.h"
#include "core/generate.h"
#include "io/config.h"
#include "io/tokenizer.h"
#include "jobs/checkpoint_tokenizer.h"
#include "jobs/commands.h"

namespace mom::jobs {

void add_generate_command(CLI::App& app) {
  struct Args {
    std::string ckpt, prompt = "\n", tokenizer;
    SampleOptions sample;
    int threads = 0;
    std::string device = "cpu";
    bool no_stop = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("generate", "Sample text from a checkpoint");
  cmd->add_option("checkpoint", args->ckpt, "Checkpoint (.h5)")->required();
  cmd->add_option("-p,--prompt", args->prompt, "Prompt text");
  cmd->add_option("-n,--max-tokens", args->sample.max_new_tokens, "Tokens to generate at most")
      ->check(CLI::PositiveNumber);
  cmd->add_option("-t,--temperature", args->sample.temperature, "Sampling temperature (0: greedy)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("-k,--top-k", args->sample.top_k, "Sample among the k most likely tokens (0: all)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", args->sample.top_p, "Nucleus sampling: the smallest set of tokens with this probability")
      ->check(CLI::Range(1e-9, 1.0));
  cmd->add_option("-s,--seed", args->sample.seed, "Random seed");
  cmd->add_flag("--no-stop", args->no_stop, "Do not stop at <|endoftext|>");
  cmd->add_option("--tokenizer", args->tokenizer, "Folder with vocab.json+merges.txt or encoder.json+vocab.bpe");
  cmd->add_option("--threads", args->threads, "CPU threads (0: all cores)");
  add_device_option(cmd, args->device);
  cmd->callback([args] {
    const io::RunConfig cfg =
        io::config_from_json(read_checkpoint_config(args->ckpt), "checkpoint '" + args->ckpt + "'");
    std::string no_tokenizer;
    const auto found = tokenizer_for(args->ckpt, args->tokenizer, no_tokenizer);
    require(found.has_value(), no_tokenizer);
    const io::Gpt2Tokenizer& tok = *found;
    Backend& be = backend_for(parse_device(args->device));
    be.set_num_threads(args->threads);
    Gpt2 model(cfg.model, be);
    load_checkpoint(args->ckpt, model, nullptr, nullptr);
    SampleOptions opt = args->sample;
    opt.stop_token = args->no_stop ? -1 : tok.eot();
    std::string shown;
    std::fputs(args->prompt.c_str(), stdout);
    generate(model, tok.encode(args->prompt), opt, [&](int32_t t) {
      if (t >= tok.vocab_size()) return;  // a padded vocabulary's unused rows
      std::fputs(tok.decode_one(t).c_str(), stdout);
      std::fflush(stdout);
    });
    std::fputs("\n", stdout);
  });
}

}  // namespace mom::jobs
