// Which tokenizer a command that reads a checkpoint uses (`mom generate`, `mom serve`): the
// folder given with --tokenizer; else the copy a converted Hugging Face checkpoint carries
// (datasets tokenizer/vocab.json and tokenizer/merges.txt, kept by every conversion); else
// GPT-2's default (io::Gpt2Tokenizer::default_dir()).
//
// Why one place: a checkpoint converted from a model with its own vocabulary must be read and
// written with that vocabulary by every command, not by whichever default a command assumed.
#pragma once
#include <optional>
#include <string>

#include "io/tokenizer.h"

namespace mom::jobs {

inline constexpr const char* kTokenizerVocabDataset = "tokenizer/vocab.json";
inline constexpr const char* kTokenizerMergesDataset = "tokenizer/merges.txt";

// Throws UserError for a given folder or a carried copy that is missing or malformed. Only
// when the default is needed and missing: nullopt, with the reason in `why`.
std::optional<io::Gpt2Tokenizer> tokenizer_for(const std::string& checkpoint, const std::string& dir, std::string& why);

}  // namespace mom::jobs
