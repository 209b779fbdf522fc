// TokenLoader. See dataloader.h for the design and docs/data.md for the exact sampling rule.
//
// Why the permutation is rebuilt from (seed, epoch) instead of carried along: it makes
// restore() independent of history (jumping to epoch 7 costs one shuffle, not seven) and
// means a checkpoint needs only two integers.
#include "io/dataloader.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"

namespace mom::io {

namespace {

// splitmix64's finaliser: spreads consecutive epoch numbers over all 64 bits so that
// seed ^ mix(epoch) never repeats another (seed, epoch) pair's stream in practice.
uint64_t mix_epoch(uint64_t epoch) {
  uint64_t z = epoch + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

TokenLoader::TokenLoader(const LoaderOptions& o)
    : B_(o.batch_size),
      T_(o.seq_len),
      rank_(o.rank),
      world_(o.world),
      seed_(o.seed),
      shuffle_(o.shuffle),
      vocab_size_(o.vocab_size) {
  require(B_ > 0, "batch size must be positive (got " + std::to_string(B_) + ")");
  require(T_ > 0, "sequence length must be positive (got " + std::to_string(T_) + ")");
  require(world_ > 0 && rank_ >= 0 && rank_ < world_,
          "data-parallel rank " + std::to_string(rank_) + " is not in [0, world=" +
              std::to_string(world_) + ")");
  require(vocab_size_ >= 0, "vocab size for the token check must not be negative");
  require(!o.shards.empty(), "no token files given; pass the data path or pattern");

  for (const auto& path : expand_shard_paths(o.shards)) {
    shard_start_.push_back(total_tokens_);
    shards_.emplace_back(path, o.format);
    total_tokens_ += shards_.back().size();
  }

  const uint64_t global_samples = static_cast<uint64_t>(B_) * static_cast<uint64_t>(world_);
  num_samples_ = total_tokens_ > 0 ? (total_tokens_ - 1) / static_cast<uint64_t>(T_) : 0;
  batches_per_epoch_ = num_samples_ / global_samples;
  if (batches_per_epoch_ == 0) {
    const uint64_t needed = global_samples * static_cast<uint64_t>(T_) + 1;
    std::string what = shards_.size() == 1 ? "token file '" + shards_[0].path().string() + "'"
                                           : std::to_string(shards_.size()) + " token files";
    throw UserError(what + " hold " + std::to_string(total_tokens_) +
                    " tokens, too few for one global batch of world*B*T+1 = " +
                    std::to_string(world_) + "*" + std::to_string(B_) + "*" +
                    std::to_string(T_) + "+1 = " + std::to_string(needed) +
                    " tokens; use more data or a smaller batch size / sequence length");
  }
  window_.resize(static_cast<size_t>(T_) + 1);
  build_order(0);
}

void TokenLoader::build_order(uint64_t epoch) {
  epoch_ = epoch;
  if (!shuffle_) {
    order_.clear();
    return;
  }
  order_.resize(num_samples_);
  std::iota(order_.begin(), order_.end(), uint64_t{0});
  // Fisher-Yates from the back; Rng::below is exact and portable, unlike std::shuffle.
  Rng rng(seed_ ^ mix_epoch(epoch));
  for (uint64_t i = num_samples_ - 1; i > 0; --i) std::swap(order_[i], order_[rng.below(i + 1)]);
}

void TokenLoader::copy_window(uint64_t start, int32_t* dst, size_t n) const {
  size_t s = static_cast<size_t>(
      std::upper_bound(shard_start_.begin(), shard_start_.end(), start) - shard_start_.begin() - 1);
  uint64_t offset = start - shard_start_[s];
  while (n > 0) {
    const auto tokens = shards_[s].tokens();
    const size_t take = static_cast<size_t>(std::min<uint64_t>(n, tokens.size() - offset));
    for (size_t i = 0; i < take; ++i) {
      const int32_t t = tokens[offset + i];
      if (vocab_size_ > 0 && t >= vocab_size_)
        throw UserError("token file '" + shards_[s].path().string() + "' holds token " +
                        std::to_string(t) + " at position " + std::to_string(offset + i) +
                        ", not below the model's vocab size " + std::to_string(vocab_size_) +
                        "; the data was made with a different tokenizer, re-create it");
      dst[i] = t;
    }
    dst += take;
    n -= take;
    offset = 0;
    ++s;
  }
}

void TokenLoader::next_batch(int32_t* inputs, int32_t* targets) {
  if (batch_ == batches_per_epoch_) {
    build_order(epoch_ + 1);
    batch_ = 0;
  }
  const uint64_t first = (batch_ * static_cast<uint64_t>(world_) + static_cast<uint64_t>(rank_)) *
                         static_cast<uint64_t>(B_);
  const size_t T = static_cast<size_t>(T_);
  for (size_t b = 0; b < static_cast<size_t>(B_); ++b) {
    const uint64_t slot = first + b;
    const uint64_t sample = shuffle_ ? order_[slot] : slot;
    copy_window(sample * T, window_.data(), T + 1);
    std::copy(window_.begin(), window_.end() - 1, inputs + b * T);
    std::copy(window_.begin() + 1, window_.end(), targets + b * T);
  }
  ++batch_;
}

LoaderState TokenLoader::state() const {
  // The position after an epoch's last batch is reported as the start of the next epoch,
  // so that equal positions always compare equal.
  if (batch_ == batches_per_epoch_) return {epoch_ + 1, 0};
  return {epoch_, batch_};
}

void TokenLoader::restore(const LoaderState& s) {
  require(s.batch_in_epoch <= batches_per_epoch_,
          "saved data position (epoch " + std::to_string(s.epoch) + ", batch " +
              std::to_string(s.batch_in_epoch) + ") is past this data's " +
              std::to_string(batches_per_epoch_) +
              " batches per epoch; the data, batch size, sequence length or world size "
              "changed since it was saved");
  if (s.batch_in_epoch == batches_per_epoch_) {
    restore({s.epoch + 1, 0});
    return;
  }
  if (s.epoch != epoch_) build_order(s.epoch);
  batch_ = s.batch_in_epoch;
}

}  // namespace mom::io
