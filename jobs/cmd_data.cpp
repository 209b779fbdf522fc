// `mom data prepare`: source files -> tokenised train/val shards. With no inputs it takes the
// Python standard library's sources on this machine: real Python code, like the CodeParrot
// corpus the MoM paper trained on.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/corpus.h"
#include "io/tokenizer.h"
#include "jobs/commands.h"

namespace mom::jobs {

namespace fs = std::filesystem;

namespace {
// The newest /usr/lib/python3.N folder, the Debian location of the standard library.
fs::path python_stdlib() {
  fs::path best;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/usr/lib", ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("python3.", 0) == 0 && fs::exists(e.path() / "os.py") && name > best.filename().string())
      best = e.path();
  }
  require(!best.empty(), "no Python standard library found under /usr/lib/python3.*; pass --input DIR with source files");
  return best;
}
}  // namespace

void add_data_command(CLI::App& app) {
  CLI::App* data = app.add_subcommand("data", "Data preparation");
  data->require_subcommand(1);
  struct Args {
    std::vector<std::string> inputs, suffixes;
    std::string out = "data/pystdlib", tokenizer;
    double max_mb = 0, val_fraction = 0.05;
    uint64_t seed = 1337;
    bool force = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = data->add_subcommand("prepare", "Tokenise source files into llm.c-format train/val shards");
  cmd->add_option("-i,--input", args->inputs, "Files or folders (default: the Python standard library)");
  cmd->add_option("--suffix", args->suffixes, "File name endings to take (default .py; repeatable)");
  cmd->add_option("-o,--out", args->out, "Output folder")->capture_default_str();
  cmd->add_option("--max-mb", args->max_mb, "Stop after this many MB of source (0: all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--val-fraction", args->val_fraction, "Share of files held out for validation")
      ->check(CLI::Range(0.0, 0.99))
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "Seed of the train/val split")->capture_default_str();
  cmd->add_option("--tokenizer", args->tokenizer, "Folder with vocab.json+merges.txt or encoder.json+vocab.bpe");
  cmd->add_flag("--force", args->force, "Replace an existing output folder");
  cmd->callback([args] {
    const io::Gpt2Tokenizer tok =
        io::Gpt2Tokenizer::load(args->tokenizer.empty() ? io::Gpt2Tokenizer::default_dir() : fs::path(args->tokenizer));
    io::PrepareOptions o;
    if (args->inputs.empty()) o.inputs.push_back(python_stdlib());
    for (const auto& i : args->inputs) o.inputs.emplace_back(i);
    if (!args->suffixes.empty()) o.suffixes = args->suffixes;
    o.max_bytes = static_cast<uint64_t>(args->max_mb * 1e6);
    o.val_fraction = args->val_fraction;
    o.seed = args->seed;
    o.output_dir = args->out;
    o.force = args->force;
    o.tokenizer = io::corpus_tokenizer(tok);
    const bool tty = isatty(fileno(stdout));
    o.progress = [tty](size_t done, size_t total) {
      if (tty) std::printf("\rtokenising: %.1f / %.1f MB", static_cast<double>(done) / 1e6, static_cast<double>(total) / 1e6);
      std::fflush(stdout);
    };
    std::printf("preparing %s from", o.output_dir.c_str());
    for (const auto& i : o.inputs) std::printf(" %s", i.c_str());
    std::printf("\n");
    const io::PrepareSummary s = io::prepare_corpus(o);
    if (tty) std::printf("\n");
    std::printf("train: %llu files, %llu tokens in %llu shard(s) | val: %llu files, %llu tokens | %.1f MB in %.1fs (%.1f MB/s)\n",
                static_cast<unsigned long long>(s.train_docs), static_cast<unsigned long long>(s.train_tokens),
                static_cast<unsigned long long>(s.train_shards), static_cast<unsigned long long>(s.val_docs),
                static_cast<unsigned long long>(s.val_tokens), static_cast<double>(s.bytes) / 1e6, s.seconds,
                static_cast<double>(s.bytes) / 1e6 / std::max(s.seconds, 1e-9));
    if (s.skipped_files) std::printf("skipped %llu unreadable file(s)\n", static_cast<unsigned long long>(s.skipped_files));
  });
}

}  // namespace mom::jobs
