// ParameterStore: every trainable tensor of a model in one contiguous buffer, with a
// gradient buffer of identical layout.
//
// Why one buffer: the optimizer, the gradient norm, gradient zeroing and (later) the
// data-parallel all-reduce each become one pass over one block of memory. Each tensor keeps a
// stable name ("blocks/attn_qkv_weight"), which is its path in the checkpoint, and a flag
// saying whether weight decay applies to it.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/tensor.h"

namespace mom {

struct ParamSpec {
  std::string name;
  Shape shape;
  bool decay = true;    // false for biases, LayerNorm gains and (by option) embeddings
  double init_std = 0;  // N(0, init_std); 0 means constant init_value
  double init_value = 0;
};

class ParameterStore {
 public:
  ParameterStore(Backend& backend, DType dtype, std::vector<ParamSpec> specs);
  const std::vector<ParamSpec>& specs() const { return specs_; }
  size_t size() const { return specs_.size(); }
  int64_t num_elements() const { return total_; }
  const Tensor& param(size_t i) const { return params_[i]; }
  const Tensor& grad(size_t i) const { return grads_[i]; }
  const Tensor& param(const std::string& name) const { return params_[index(name)]; }
  const Tensor& grad(const std::string& name) const { return grads_[index(name)]; }
  size_t index(const std::string& name) const;
  // All parameters (gradients) as one flat tensor.
  const Tensor& flat_params() const { return flat_params_; }
  const Tensor& flat_grads() const { return flat_grads_; }
  Backend& backend() const { return backend_; }
  DType dtype() const { return dtype_; }
  // Fills every tensor from its spec with one Rng(seed) stream, in spec order.
  void initialize(uint64_t seed);
  void zero_grads() { backend_.zero(flat_grads_); }

 private:
  Backend& backend_;
  DType dtype_;
  std::vector<ParamSpec> specs_;
  int64_t total_ = 0;
  std::unique_ptr<Arena> param_arena_, grad_arena_;
  std::vector<Tensor> params_, grads_;
  Tensor flat_params_, flat_grads_;
};

}  // namespace mom
