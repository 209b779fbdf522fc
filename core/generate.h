// Autoregressive sampling from a Gpt2: temperature, top-k, top-p, a seed, and a stop token.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "core/gpt2.h"

namespace mom {

struct SampleOptions {
  int max_new_tokens = 128;
  double temperature = 1.0;  // 0: greedy
  int top_k = 0;             // 0: the whole vocabulary
  double top_p = 1.0;        // nucleus sampling (core/sampling.h)
  uint64_t seed = 1337;
  int32_t stop_token = -1;   // e.g. <|endoftext|>; -1: none
  bool kv_cache = true;      // false: recompute the whole prefix for every token (reference)
};

// Returns the new tokens (the prompt not included). `on_token` sees each as it is made.
// With the KV cache each new token costs one position; when the sequence fills the context,
// the cache is rebuilt from the newest n_ctx/2 tokens (a sliding window that moves in
// half-context jumps, so the rebuild cost is paid once every n_ctx/2 tokens).
std::vector<int32_t> generate(Gpt2& model, const std::vector<int32_t>& prompt, const SampleOptions& opt,
                              const std::function<void(int32_t)>& on_token = {});

}  // namespace mom
