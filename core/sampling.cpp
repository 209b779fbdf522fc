#include "core/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace mom {

namespace {
double log_sum_exp(const float* logits, int V) {
  const double mx = *std::max_element(logits, logits + V);
  double s = 0;
  for (int v = 0; v < V; ++v) s += std::exp(static_cast<double>(logits[v]) - mx);
  return mx + std::log(s);
}
}  // namespace

int32_t sample_token(const float* logits, int V, const SamplingParams& p, Rng& rng, std::vector<int32_t>& order) {
  if (p.temperature == 0) return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
  const double mx = *std::max_element(logits, logits + V);
  auto weight = [&](int32_t v) { return std::exp((static_cast<double>(logits[v]) - mx) / p.temperature); };
  const int k = p.top_k > 0 ? std::min(p.top_k, V) : V;
  if (k == V && p.top_p >= 1.0) {  // every token a candidate: one exp per token, no sort
    thread_local std::vector<double> w;
    w.resize(static_cast<size_t>(V));
    double sum = 0;
    for (int v = 0; v < V; ++v) sum += w[static_cast<size_t>(v)] = weight(v);
    double u = rng.uniform() * sum;
    for (int v = 0; v < V; ++v) {
      if (u < w[static_cast<size_t>(v)]) return v;
      u -= w[static_cast<size_t>(v)];
    }
    return V - 1;
  }
  order.resize(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) { return logits[a] != logits[b] ? logits[a] > logits[b] : a < b; };
  const auto cand_end = order.begin() + k;
  // A small top-k by heap selection (one pass in which most tokens lose one comparison, the k
  // come out sorted); a large one by introselect.
  if (k <= 1024 && k < V)
    std::partial_sort(order.begin(), cand_end, order.end(), by_logit);
  else if (k < V)
    std::nth_element(order.begin(), cand_end - 1, order.end(), by_logit);
  int n = k;
  if (p.top_p < 1.0) {
    // Nucleus: the smallest head of the candidates, most likely first, whose share reaches
    // top_p. The head is sorted in growing slices, so a peaked distribution sorts a few dozen.
    double sum = 0;
    for (auto it = order.begin(); it != cand_end; ++it) sum += weight(*it);
    double head = 0;
    bool reached = false;
    for (int sorted = 0, upto = std::min(k, 64); !reached; sorted = upto, upto = std::min(k, upto * 4)) {
      std::partial_sort(order.begin() + sorted, order.begin() + upto, cand_end, by_logit);
      for (int j = sorted; j < upto && !reached; ++j) {
        head += weight(order[static_cast<size_t>(j)]);
        if (head >= p.top_p * sum) n = j + 1, reached = true;
      }
      if (upto == k) break;
    }
  }
  // The draw walks the candidates in id order: the same set gives the same token whichever
  // way it was found.
  std::sort(order.begin(), order.begin() + n);
  double sum = 0;
  for (int j = 0; j < n; ++j) sum += weight(order[static_cast<size_t>(j)]);
  double u = rng.uniform() * sum;
  for (int j = 0; j < n; ++j) {
    const double w = weight(order[static_cast<size_t>(j)]);
    if (u < w) return order[static_cast<size_t>(j)];
    u -= w;
  }
  return order[static_cast<size_t>(n - 1)];
}

double token_logprob(const float* logits, int V, int32_t token) { return logits[token] - log_sum_exp(logits, V); }

std::vector<std::pair<int32_t, double>> top_logprobs(const float* logits, int V, int n) {
  n = std::min(n, V);
  std::vector<int32_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + n, order.end(),
                    [&](int32_t a, int32_t b) { return logits[a] != logits[b] ? logits[a] > logits[b] : a < b; });
  const double lse = log_sum_exp(logits, V);
  std::vector<std::pair<int32_t, double>> out;
  for (int j = 0; j < n; ++j) out.emplace_back(order[j], logits[order[j]] - lse);
  return out;
}

}  // namespace mom
