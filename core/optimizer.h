// AdamW over a ParameterStore, the learning-rate schedule, and global gradient-norm clipping.
//
// Moments live in two buffers with the parameters' exact layout, so checkpoints store them
// under the same names as the parameters and a sharded pool's moments shard the same way.
#pragma once
#include <memory>

#include "core/params.h"
#include "parallel/communicator.h"

namespace mom {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

class AdamW {
 public:
  AdamW(ParameterStore& params, const AdamWConfig& cfg);
  // One update with learning rate lr; increments the step count t (bias correction).
  void step(double lr);
  int64_t t() const { return t_; }
  void set_t(int64_t t) { t_ = t; }
  const Tensor& m(size_t i) const { return m_[i]; }
  const Tensor& v(size_t i) const { return v_[i]; }

 private:
  ParameterStore& params_;
  AdamWConfig cfg_;
  std::unique_ptr<Arena> arena_;
  std::vector<Tensor> m_, v_;
  int64_t t_ = 0;
};

// Cosine decay from max_lr to min_lr after a linear warmup from max_lr/warmup.
struct LrSchedule {
  double max_lr = 6e-4, min_lr = 6e-5;
  int64_t warmup_steps = 0, total_steps = 1;
  double at(int64_t step) const;  // step is 0-based
};

// Global L2 norm of all gradients; when clip > 0 and the norm exceeds it, gradients are scaled
// by clip/(norm + 1e-6) (PyTorch's clip_grad_norm_). Returns the norm before clipping. With
// sharded pools, `pool_group` is the expert-parallel group: each of its ranks holds other
// modules, so their squares are summed over it (the replicated tensors count once).
double clip_grad_norm(ParameterStore& params, double clip, Communicator* pool_group = nullptr);

// Data-parallel gradient sum: replicated tensors over `world`, this rank's pool blocks over
// `pool_replicas` (the ranks holding the same modules: the expert-data-parallel group). The
// caller scales the loss so that the sum is the gradient of the global mean.
void allreduce_gradients(ParameterStore& params, Communicator& world, Communicator& pool_replicas);

}  // namespace mom
