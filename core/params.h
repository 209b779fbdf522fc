// ParameterStore: every trainable tensor of a model in one contiguous buffer, with a
// gradient buffer of identical layout.
//
// Why one buffer: the optimizer, the gradient norm, gradient zeroing and the data-parallel
// all-reduce each become one pass over one block of memory. Each tensor keeps a stable name
// ("blocks/attn_qkv_weight"), which is its path in the checkpoint, and a flag saying whether
// weight decay applies to it.
//
// Module pools under expert parallelism: a spec marked `pool` has a leading module axis that is
// split over the ranks of an expert-parallel group (PoolShard); this rank stores only its
// contiguous block of modules [rows(i).begin, rows(i).end) of the global axis. Pool tensors are
// placed after all replicated ("dense") tensors, so each kind is one contiguous flat view and
// is reduced with one collective over its own process group (parallel/process_groups.h).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/tensor.h"

namespace mom {

struct ParamSpec {
  std::string name;
  Shape shape;          // the global shape (a pool's full module axis)
  bool decay = true;    // false for biases, LayerNorm gains and (by option) embeddings
  double init_std = 0;  // N(0, init_std); 0 means constant init_value
  double init_value = 0;
  bool pool = false;      // leading axis = modules of a pool, sharded over the EP group
  bool stacked = false;   // one block's row of a tensor shared along a layer axis (core/layers/block.h)
  bool identity = false;  // constant init: identity matrices over the last two axes (AltUp's p)
};

// This rank's place in the expert-parallel group that shares the module pools.
struct PoolShard {
  int rank = 0, size = 1;
};

// Rows [begin, end) of a tensor's global axis 0 held by this rank (all rows for dense tensors).
struct RowRange {
  int64_t begin = 0, end = 0;
};

class ParameterStore {
 public:
  // Throws std::logic_error when a pool's module count is not a multiple of shard.size (the
  // model checks this first with a message naming the config keys).
  ParameterStore(Backend& backend, DType dtype, std::vector<ParamSpec> specs, PoolShard shard = {});
  const std::vector<ParamSpec>& specs() const { return specs_; }
  size_t size() const { return specs_.size(); }
  // Elements held by this rank, and in the whole model.
  int64_t num_elements() const { return total_; }
  int64_t global_num_elements() const { return global_total_; }
  const Tensor& param(size_t i) const { return params_[i]; }
  const Tensor& grad(size_t i) const { return grads_[i]; }
  const Tensor& param(const std::string& name) const { return params_[index(name)]; }
  const Tensor& grad(const std::string& name) const { return grads_[index(name)]; }
  size_t index(const std::string& name) const;
  // Two tensors stored back to back (the second's spec follows the first's), seen as one
  // concatenated along axis 0: SAS keeps W_q and W_k apart in checkpoints (they start from
  // different inits) but multiplies by them as one [2C, C] matrix. Throws std::logic_error
  // when they are not adjacent.
  Tensor joined_param(const std::string& first, const std::string& second) const;
  Tensor joined_grad(const std::string& first, const std::string& second) const;
  RowRange rows(size_t i) const { return rows_[i]; }
  const PoolShard& shard() const { return shard_; }
  // All parameters (gradients) as one flat tensor: dense tensors first, then pool tensors.
  const Tensor& flat_params() const { return flat_params_; }
  const Tensor& flat_grads() const { return flat_grads_; }
  // The gradients of the replicated tensors, and of this rank's pool blocks (either may be
  // empty).
  const Tensor& dense_grads() const { return dense_grads_; }
  const Tensor& pool_grads() const { return pool_grads_; }
  Backend& backend() const { return backend_; }
  DType dtype() const { return dtype_; }
  // Fills every tensor from its spec with one Rng(seed) stream, in spec order, drawing the
  // values of whole global tensors: a sharded model holds exactly the values of the same
  // model in one process.
  void initialize(uint64_t seed);
  void zero_grads() { backend_.zero(flat_grads_); }

 private:
  Backend& backend_;
  DType dtype_;
  std::vector<ParamSpec> specs_;
  PoolShard shard_;
  int64_t total_ = 0, global_total_ = 0;
  std::unique_ptr<Arena> param_arena_, grad_arena_;
  std::vector<Tensor> params_, grads_;
  std::vector<RowRange> rows_;
  Tensor flat_params_, flat_grads_, dense_grads_, pool_grads_;
};

}  // namespace mom
