#include "core/params.h"

#include <stdexcept>

#include "core/rng.h"

namespace mom {

ParameterStore::ParameterStore(Backend& backend, DType dtype, std::vector<ParamSpec> specs, PoolShard shard)
    : backend_(backend), dtype_(dtype), specs_(std::move(specs)), shard_(shard) {
  if (shard_.size < 1 || shard_.rank < 0 || shard_.rank >= shard_.size)
    throw std::logic_error("ParameterStore: bad pool shard");
  std::vector<Shape> local(specs_.size());
  int64_t dense_total = 0;
  for (size_t i = 0; i < specs_.size(); ++i) {
    const ParamSpec& s = specs_[i];
    local[i] = s.shape;
    RowRange r{0, s.shape.rank ? s.shape[0] : 1};
    if (s.pool) {
      if (s.shape.rank < 1 || s.shape[0] % shard_.size != 0)
        throw std::logic_error("ParameterStore: pool " + s.name + " does not split over " +
                               std::to_string(shard_.size) + " ranks");
      const int64_t per = s.shape[0] / shard_.size;
      local[i].dim[0] = per;
      r = {shard_.rank * per, (shard_.rank + 1) * per};
    }
    rows_.push_back(r);
    global_total_ += s.shape.numel();
    total_ += local[i].numel();
    if (!s.pool) dense_total += local[i].numel();
  }
  // Tensors are packed without padding so that the flat views cover exactly the parameters.
  const size_t bytes = ArenaPlan::aligned_bytes(Shape{total_}, dtype);  // the arena rounds up to 64 bytes
  param_arena_ = std::make_unique<Arena>(backend, bytes);
  grad_arena_ = std::make_unique<Arena>(backend, bytes);
  flat_params_ = param_arena_->alloc(Shape{total_}, dtype);
  flat_grads_ = grad_arena_->alloc(Shape{total_}, dtype);
  dense_grads_ = flat_grads_.rows(0, dense_total);
  pool_grads_ = flat_grads_.rows(dense_total, total_);
  int64_t dense_at = 0, pool_at = dense_total;
  for (size_t i = 0; i < specs_.size(); ++i) {
    const int64_t n = local[i].numel();
    int64_t& at = specs_[i].pool ? pool_at : dense_at;
    params_.push_back(flat_params_.rows(at, at + n).reshaped(local[i]));
    grads_.push_back(flat_grads_.rows(at, at + n).reshaped(local[i]));
    at += n;
  }
}

size_t ParameterStore::index(const std::string& name) const {
  for (size_t i = 0; i < specs_.size(); ++i)
    if (specs_[i].name == name) return i;
  throw std::logic_error("no parameter named " + name);
}

namespace {

Tensor joined(const Tensor& a, const Tensor& b, const std::string& what) {
  if (static_cast<const char*>(b.data) != static_cast<const char*>(a.data) + a.bytes() || a.shape.rank != b.shape.rank)
    throw std::logic_error("ParameterStore: " + what + " are not stored back to back");
  for (int d = 1; d < a.shape.rank; ++d)
    if (a.shape[d] != b.shape[d]) throw std::logic_error("ParameterStore: " + what + " differ in shape");
  Tensor t = a;
  t.shape.dim[0] += b.shape[0];
  return t;
}

}  // namespace

Tensor ParameterStore::joined_param(const std::string& first, const std::string& second) const {
  return joined(param(first), param(second), first + " and " + second);
}

Tensor ParameterStore::joined_grad(const std::string& first, const std::string& second) const {
  return joined(grad(first), grad(second), first + " and " + second);
}

namespace {

// Draws the whole global tensor from the stream and keeps this rank's rows.
template <class T>
void fill(Backend& be, const Tensor& dst, const ParamSpec& s, RowRange rows, Rng& rng) {
  const int64_t n = s.shape.numel(), row = s.shape.rank ? n / s.shape[0] : n;
  const int64_t first = rows.begin * row, last = rows.end * row;
  std::vector<T> host(static_cast<size_t>(last - first));
  const int64_t cols = s.shape.rank ? s.shape[s.shape.rank - 1] : 1;
  const int64_t matrix = s.shape.rank >= 2 ? cols * s.shape[s.shape.rank - 2] : cols;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t at = k % matrix;
    const double v = s.init_std > 0 ? rng.normal() * s.init_std
                     : s.identity   ? (at / cols == at % cols ? 1.0 : 0.0)
                                    : s.init_value;
    if (k >= first && k < last) host[static_cast<size_t>(k - first)] = static_cast<T>(v);
  }
  be.copy_from_host(dst, host.data());
}

}  // namespace

void ParameterStore::initialize(uint64_t seed) {
  Rng rng(seed);
  for (size_t i = 0; i < specs_.size(); ++i) {
    if (dtype_ == DType::F32)
      fill<float>(backend_, params_[i], specs_[i], rows_[i], rng);
    else
      fill<double>(backend_, params_[i], specs_[i], rows_[i], rng);
  }
}

}  // namespace mom
