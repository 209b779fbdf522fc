#include "core/optimizer.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace mom {

AdamW::AdamW(ParameterStore& params, const AdamWConfig& cfg) : params_(params), cfg_(cfg) {
  ArenaPlan plan;
  for (const auto& s : params.specs()) plan.add(s.shape, params.dtype()), plan.add(s.shape, params.dtype());
  arena_ = std::make_unique<Arena>(params.backend(), plan.bytes());
  for (const auto& s : params.specs()) {
    m_.push_back(arena_->alloc(s.shape, params.dtype()));
    v_.push_back(arena_->alloc(s.shape, params.dtype()));
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

double clip_grad_norm(ParameterStore& params, double clip) {
  const double norm = std::sqrt(params.backend().sum_squares(params.flat_grads()));
  if (clip > 0 && norm > clip) params.backend().scale(params.flat_grads(), clip / (norm + 1e-6));
  return norm;
}

}  // namespace mom
