#include "core/optimizer.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace mom {

AdamW::AdamW(ParameterStore& params, const AdamWConfig& cfg) : params_(params), cfg_(cfg) {
  ArenaPlan plan;
  // The moments have the shapes this rank holds (a pool's local block of modules).
  for (size_t i = 0; i < params.size(); ++i)
    plan.add(params.param(i).shape, params.dtype()), plan.add(params.param(i).shape, params.dtype());
  arena_ = std::make_unique<Arena>(params.backend(), plan.bytes());
  for (size_t i = 0; i < params.size(); ++i) {
    m_.push_back(arena_->alloc(params.param(i).shape, params.dtype()));
    v_.push_back(arena_->alloc(params.param(i).shape, params.dtype()));
  }
}

void AdamW::step(double lr) {
  ++t_;
  for (size_t i = 0; i < params_.size(); ++i) {
    const double wd = params_.specs()[i].decay ? cfg_.weight_decay : 0.0;
    params_.backend().adamw(params_.param(i), params_.grad(i), m_[i], v_[i], lr, cfg_.beta1, cfg_.beta2, cfg_.eps, wd,
                            t_);
  }
}

double LrSchedule::at(int64_t step) const {
  if (step < warmup_steps) return max_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - warmup_steps) / static_cast<double>(decay_steps));
  return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
}

namespace {

double sum_squares(const ParameterStore& params, const Tensor& t) {
  return t.numel() ? params.backend().sum_squares(t) : 0.0;
}

void allreduce(Communicator& c, const Tensor& t) {
  if (c.size() == 1 || t.numel() == 0) return;
  if (t.dtype == DType::F64)
    c.allreduce_sum(t.ptr<double>(), static_cast<size_t>(t.numel()));
  else
    c.allreduce_sum(t.ptr<float>(), static_cast<size_t>(t.numel()));
}

}  // namespace

void allreduce_gradients(ParameterStore& params, Communicator& world, Communicator& pool_replicas) {
  params.backend().synchronize();
  allreduce(world, params.dense_grads());
  allreduce(pool_replicas, params.pool_grads());
}

double clip_grad_norm(ParameterStore& params, double clip, Communicator* pool_group) {
  double pool_sq = sum_squares(params, params.pool_grads());
  if (pool_group) pool_group->allreduce_sum(&pool_sq, 1);
  const double norm = std::sqrt(sum_squares(params, params.dense_grads()) + pool_sq);
  if (clip > 0 && norm > clip) params.backend().scale(params.flat_grads(), clip / (norm + 1e-6));
  return norm;
}

}  // namespace mom
