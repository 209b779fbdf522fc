// Router interface (MODELS.md §2-3): maps each token's residual row to routing probabilities
// over module classes, then a top-K selection with renormalised weights.
//
// Only the interface exists so far; the mlp, gru and linear routers, the balancing and z
// losses and the dispatch plans come with the MoM/MoE issue. Dense GPT-2 has no router.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace mom {

// One token's selection: up to K (class, weight) pairs; a class equal to the pool size is SKIP.
struct RoutingChoice {
  std::vector<int32_t> classes;
  std::vector<float> weights;
};

class Router {
 public:
  virtual ~Router() = default;
  // probs [N, classes] from x [N, C]; `step` is the assembly step (GRU routers carry state).
  virtual void forward(const Tensor& x, const Tensor& probs, int step) = 0;
  // dx += ∂L/∂x and parameter gradients from dprobs.
  virtual void backward(const Tensor& dprobs, const Tensor& dx, int step) = 0;
  virtual int num_classes() const = 0;
};

}  // namespace mom
