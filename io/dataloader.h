// TokenLoader: (inputs, targets) batches from memory-mapped token shards.
//
// Why this design: the shards are viewed as one token stream cut into fixed windows, so a
// sample is just an index; an epoch is a permutation of indices made by a seeded
// Fisher-Yates with mom::Rng, which depends only on (seed, epoch, sample count). A position
// is therefore two integers (epoch, batch), and a resumed run, or any rank of any process,
// recomputes exactly the same batches without saving the permutation. Data-parallel ranks
// take disjoint consecutive slices of each global batch. See docs/data.md.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "io/shards.h"

namespace mom::io {

struct LoaderState {
  uint64_t epoch = 0;
  uint64_t batch_in_epoch = 0;  // global batches already consumed in `epoch`
  bool operator==(const LoaderState&) const = default;
};

struct LoaderOptions {
  // Shard paths and/or patterns with wildcards in the file name ("DIR/train_*.bin");
  // each pattern expands to its matches in sorted order.
  std::vector<std::string> shards;
  ShardFormat format = ShardFormat::Auto;
  int batch_size = 1;   // B: samples per rank per batch
  int seq_len = 1024;   // T
  uint64_t seed = 0;
  bool shuffle = true;  // false: samples in stream order (evaluation)
  int rank = 0;
  int world = 1;
  // Every token served must be below this (0: no check); a larger one is a UserError
  // naming the file and position, as it means the data was made with another tokenizer.
  int32_t vocab_size = 0;
};

class TokenLoader {
 public:
  // Maps every shard and validates the sizes. Throws UserError for bad options, bad files,
  // or data too small for one global batch (saying how many tokens are needed).
  explicit TokenLoader(const LoaderOptions& options);

  // Fills B*T inputs and B*T targets (row-major [B][T]) and advances by one global batch.
  // After the last batch of an epoch, the next call starts the following epoch.
  void next_batch(int32_t* inputs, int32_t* targets);

  LoaderState state() const;
  // Continues from `state` exactly as the run that saved it would have. Throws UserError
  // when the state cannot belong to this data and batch geometry.
  void restore(const LoaderState& state);
  void reset() { restore({}); }

  uint64_t batches_per_epoch() const { return batches_per_epoch_; }
  uint64_t num_samples() const { return num_samples_; }
  uint64_t num_tokens() const { return total_tokens_; }
  size_t num_shards() const { return shards_.size(); }
  int batch_size() const { return B_; }
  int seq_len() const { return T_; }

 private:
  void build_order(uint64_t epoch);
  void copy_window(uint64_t start, int32_t* dst, size_t n) const;

  std::vector<MappedShard> shards_;
  std::vector<uint64_t> shard_start_;  // global offset of each shard's first token
  uint64_t total_tokens_ = 0;
  int B_, T_, rank_, world_;
  uint64_t seed_;
  bool shuffle_;
  int32_t vocab_size_;
  uint64_t num_samples_ = 0;
  uint64_t batches_per_epoch_ = 0;
  uint64_t epoch_ = 0;
  uint64_t batch_ = 0;
  std::vector<uint64_t> order_;  // this epoch's sample permutation (empty without shuffle)
  std::vector<int32_t> window_;  // scratch for one T+1 window
};

}  // namespace mom::io
