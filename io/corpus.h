// Corpus preparation: source files -> tokenised train/val llm.c shards + meta.json (the
// library behind `mom data prepare`).
//
// Why built this way: every file is one document (tokens then EOT), so the split can be
// decided per file by a hash of its relative path and the seed: adding or removing files
// never moves the others between train and val. Files are visited in sorted order and
// tokenised in parallel but written in that order, so the same inputs and options give
// byte-identical outputs. Everything is written into a temporary folder that replaces the
// output folder only at the end, so a failure never leaves a half-written dataset.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace mom::io {

class Gpt2Tokenizer;

// What preparation needs from a tokenizer. A set of values rather than a Gpt2Tokenizer so
// that tests can prepare a corpus with a trivial tokenizer.
struct CorpusTokenizer {
  // Called from several threads at once; must not modify shared state.
  std::function<std::vector<int32_t>(std::string_view)> encode;
  int32_t eot = 0;
  int32_t vocab_size = 0;
  std::string name;    // recorded in meta.json, e.g. "gpt2"
  std::string source;  // where its files came from, recorded in meta.json
};

// Wraps `tokenizer`, which must outlive the returned value.
CorpusTokenizer corpus_tokenizer(const Gpt2Tokenizer& tokenizer);

struct PrepareOptions {
  // Files or folders; folders are walked recursively (symlinked folders are not followed).
  std::vector<std::filesystem::path> inputs;
  // A file found in a folder is a document when its name ends with one of these (empty:
  // every file); an input that is a file is always one.
  std::vector<std::string> suffixes = {".py"};
  uint64_t max_bytes = 0;      // stop once this many source bytes are taken; 0: all
  double val_fraction = 0.05;  // in [0, 1); 0: no validation split at all
  uint64_t seed = 0;
  std::filesystem::path output_dir;
  bool force = false;          // replace a non-empty output_dir
  uint64_t shard_tokens = 100'000'000;
  CorpusTokenizer tokenizer;
  // Called on the calling thread as documents are written: (source bytes done, total).
  std::function<void(size_t done_bytes, size_t total_bytes)> progress;
};

struct PrepareSummary {
  uint64_t train_docs = 0, val_docs = 0;
  uint64_t train_tokens = 0, val_tokens = 0;
  uint64_t train_shards = 0, val_shards = 0;
  uint64_t bytes = 0;            // source bytes tokenised
  uint64_t skipped_files = 0;    // matched but unreadable
  double seconds = 0;
  std::filesystem::path output_dir;
};

// Throws UserError for: no inputs / a missing input, no matching readable files, a bad
// option, or a non-empty output_dir without force (which is then left untouched).
PrepareSummary prepare_corpus(const PrepareOptions& options);

}  // namespace mom::io
