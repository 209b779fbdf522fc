#include "jobs/checkpoint_tokenizer.h"

#include "core/error.h"
#include "io/checkpoint_file.h"

namespace mom::jobs {

std::optional<io::Gpt2Tokenizer> tokenizer_for(const std::string& checkpoint, const std::string& dir,
                                               std::string& why) {
  if (!dir.empty()) return io::Gpt2Tokenizer::load(dir);
  const io::CheckpointReader r(checkpoint);
  if (r.has(kTokenizerVocabDataset) && r.has(kTokenizerMergesDataset))
    return io::Gpt2Tokenizer::from_text(r.read_bytes(kTokenizerVocabDataset), r.read_bytes(kTokenizerMergesDataset),
                                        checkpoint + ":" + kTokenizerVocabDataset,
                                        checkpoint + ":" + kTokenizerMergesDataset);
  try {
    return io::Gpt2Tokenizer::load(io::Gpt2Tokenizer::default_dir());
  } catch (const UserError& e) {
    why = e.what();
    return std::nullopt;
  }
}

}  // namespace mom::jobs
