#include "core/params.h"

#include <stdexcept>

#include "core/rng.h"

namespace mom {

ParameterStore::ParameterStore(Backend& backend, DType dtype, std::vector<ParamSpec> specs)
    : backend_(backend), dtype_(dtype), specs_(std::move(specs)) {
  // Tensors are packed without padding so that the flat views cover exactly the parameters.
  for (const auto& s : specs_) total_ += s.shape.numel();
  const size_t bytes = ArenaPlan::aligned_bytes(Shape{total_}, dtype);  // the arena rounds up to 64 bytes
  param_arena_ = std::make_unique<Arena>(backend, bytes);
  grad_arena_ = std::make_unique<Arena>(backend, bytes);
  flat_params_ = param_arena_->alloc(Shape{total_}, dtype);
  flat_grads_ = grad_arena_->alloc(Shape{total_}, dtype);
  int64_t offset = 0;
  for (const auto& s : specs_) {
    const int64_t n = s.shape.numel();
    params_.push_back(flat_params_.rows(offset, offset + n).reshaped(s.shape));
    grads_.push_back(flat_grads_.rows(offset, offset + n).reshaped(s.shape));
    offset += n;
  }
}

size_t ParameterStore::index(const std::string& name) const {
  for (size_t i = 0; i < specs_.size(); ++i)
    if (specs_[i].name == name) return i;
  throw std::logic_error("no parameter named " + name);
}

void ParameterStore::initialize(uint64_t seed) {
  Rng rng(seed);
  for (size_t i = 0; i < specs_.size(); ++i) {
    const auto& s = specs_[i];
    const int64_t n = s.shape.numel();
    if (dtype_ == DType::F32) {
      std::vector<float> host(static_cast<size_t>(n));
      for (auto& x : host) x = static_cast<float>(s.init_std > 0 ? rng.normal() * s.init_std : s.init_value);
      backend_.copy_from_host(params_[i], host.data());
    } else {
      std::vector<double> host(static_cast<size_t>(n));
      for (auto& x : host) x = s.init_std > 0 ? rng.normal() * s.init_std : s.init_value;
      backend_.copy_from_host(params_[i], host.data());
    }
  }
}

}  // namespace mom
