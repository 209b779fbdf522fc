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
  order.resize(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  const int k = p.top_k > 0 ? std::min(p.top_k, V) : V;
  auto by_logit = [&](int32_t a, int32_t b) { return logits[a] != logits[b] ? logits[a] > logits[b] : a < b; };
  std::partial_sort(order.begin(), order.begin() + k, order.end(), by_logit);
  std::vector<double> probs(static_cast<size_t>(k));
  const double mx = logits[order[0]];
  double sum = 0;
  for (int j = 0; j < k; ++j) sum += probs[j] = std::exp((logits[order[j]] - mx) / p.temperature);
  // Nucleus: the smallest head of the sorted candidates whose share reaches top_p.
  int n = k;
  if (p.top_p < 1.0) {
    double head = 0;
    for (n = 0; n < k;) {
      head += probs[n++];
      if (head >= p.top_p * sum) break;
    }
    sum = head;
  }
  double u = rng.uniform() * sum;
  for (int j = 0; j < n; ++j) {
    if (u < probs[j]) return order[j];
    u -= probs[j];
  }
  return order[n - 1];
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
