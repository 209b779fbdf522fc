#include "core/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>

#include "core/error.h"
#include "core/rng.h"
#include "core/sampling.h"

namespace mom {

std::vector<int32_t> generate(Gpt2& model, const std::vector<int32_t>& prompt, const SampleOptions& opt,
                              const std::function<void(int32_t)>& on_token) {
  require(!prompt.empty(), "generate: the prompt must hold at least one token");
  require(opt.temperature >= 0, "generate: --temperature must be >= 0");
  require(opt.top_k >= 0, "generate: --top-k must be >= 0");
  require(opt.top_p > 0 && opt.top_p <= 1, "generate: --top-p must be in (0, 1]");
  const int V = model.config().vocab_size, ctx = model.config().n_ctx;
  for (const int32_t t : prompt)
    require(t >= 0 && t < V, "generate: prompt token " + std::to_string(t) + " is outside the model's vocabulary (0.." +
                                 std::to_string(V - 1) +
                                 "): the tokenizer does not match the model; use the one it was trained or "
                                 "converted with (--tokenizer DIR)");
  Rng rng(opt.seed);
  std::vector<int32_t> seq = prompt, out, order;
  std::vector<float> logits;
  const SamplingParams sampling{opt.temperature, opt.top_k, opt.top_p};
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
      // A prefill runs alone on the fast kernels; single tokens run in batch-invariant mode,
      // as the routing service runs them beside other requests (router/service/engine.h), so
      // both give the same text.
      std::optional<BatchInvariant> invariant;
      if (cached > 0) invariant.emplace(model.backend());
      model.decode(seq.data() + window_start + cached, fresh, cached, logits);
      cached += fresh;
    }
    const int32_t next = sample_token(logits.data(), V, sampling, rng, order);
    if (next == opt.stop_token) break;
    seq.push_back(next);
    out.push_back(next);
    if (on_token) on_token(next);
  }
  return out;
}

}  // namespace mom
