// Choosing the next token from logits, the same way everywhere a model generates (`mom
// generate`, the routing service): greedy, or temperature with top-k and top-p (nucleus), one
// uniform draw from a per-request Rng; and the log-probabilities a client asks for.
//
// Why one function: a request's text must depend only on its prompt, its options and its seed,
// whichever path produced it. The candidates are the top-k and the nucleus by logit (ties by
// id: a strict total order, so the set does not depend on the sort algorithm); the draw walks
// them in id order, so plain temperature sampling over the whole vocabulary needs no sort
// (one pass over V instead of sorting V per token), and top-p sorts only the head it needs.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "core/rng.h"

namespace mom {

struct SamplingParams {
  double temperature = 1.0;  // 0: greedy (ties: the lowest id)
  int top_k = 0;             // sample among the k most likely (0: all)
  double top_p = 1.0;        // then among the smallest head whose probability reaches top_p
};

// `order`: scratch, reused between calls.
int32_t sample_token(const float* logits, int V, const SamplingParams& p, Rng& rng, std::vector<int32_t>& order);
// log softmax(logits)[token], the model's own distribution (temperature 1).
double token_logprob(const float* logits, int V, int32_t token);
// The n most likely tokens with their log-probabilities, most likely first.
std::vector<std::pair<int32_t, double>> top_logprobs(const float* logits, int V, int n);

}  // namespace mom
