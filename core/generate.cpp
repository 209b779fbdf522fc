#include "core/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"

namespace mom {

std::vector<int32_t> generate(Gpt2& model, const std::vector<int32_t>& prompt, const SampleOptions& opt,
                              const std::function<void(int32_t)>& on_token) {
  require(!prompt.empty(), "generate: the prompt must hold at least one token");
  require(opt.temperature >= 0, "generate: --temperature must be >= 0");
  require(opt.top_k >= 0, "generate: --top-k must be >= 0");
  Rng rng(opt.seed);
  std::vector<int32_t> seq = prompt, out;
  std::vector<float> logits;
  const int V = model.config().vocab_size, ctx = model.config().n_ctx;
  std::vector<int32_t> order(static_cast<size_t>(V));
  std::vector<double> probs;
  // The prompt may be longer than the context: the window starts at its newest n_ctx tokens.
  int window_start = std::max(0, static_cast<int>(seq.size()) - ctx);
  int cached = 0;  // positions of seq[window_start..] already in the KV cache
  for (int i = 0; i < opt.max_new_tokens; ++i) {
    if (!opt.kv_cache) {  // the reference: recompute the whole prefix
      const int T = std::min<int>(static_cast<int>(seq.size()), ctx);
      model.last_logits(seq.data() + seq.size() - T, T, logits);
    } else {
      int fresh = static_cast<int>(seq.size()) - window_start - cached;
      if (cached + fresh > ctx) {  // slide: rebuild the cache from the newest half context
        const int keep = std::max(1, ctx / 2);
        window_start = static_cast<int>(seq.size()) - keep;
        cached = 0;
        fresh = keep;
      }
      model.decode(seq.data() + window_start + cached, fresh, cached, logits);
      cached += fresh;
    }
    int32_t next;
    if (opt.temperature == 0) {
      next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    } else {
      // Candidates sorted by logit (ties by id, so the choice is reproducible), cut to top_k.
      std::iota(order.begin(), order.end(), 0);
      const int k = opt.top_k > 0 ? std::min(opt.top_k, V) : V;
      auto by_logit = [&](int32_t a, int32_t b) { return logits[a] != logits[b] ? logits[a] > logits[b] : a < b; };
      std::partial_sort(order.begin(), order.begin() + k, order.end(), by_logit);
      probs.assign(static_cast<size_t>(k), 0.0);
      const double mx = logits[order[0]];
      double sum = 0;
      for (int j = 0; j < k; ++j) sum += probs[j] = std::exp((logits[order[j]] - mx) / opt.temperature);
      double u = rng.uniform() * sum;
      next = order[k - 1];
      for (int j = 0; j < k; ++j) {
        if (u < probs[j]) {
          next = order[j];
          break;
        }
        u -= probs[j];
      }
    }
    if (next == opt.stop_token) break;
    seq.push_back(next);
    out.push_back(next);
    if (on_token) on_token(next);
  }
  return out;
}

}  // namespace mom
