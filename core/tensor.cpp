#include "core/tensor.h"

#include <sstream>
#include <stdexcept>

#include "core/backend.h"

namespace mom {

namespace {
constexpr size_t kAlign = 64;
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
}  // namespace

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32:
      return 4;
    case DType::F64:
      return 8;
    case DType::I32:
      return 4;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "f32";
    case DType::F64:
      return "f64";
    case DType::I32:
      return "i32";
  }
  return "?";
}

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

Shape::Shape(std::initializer_list<int64_t> dims) {
  if (dims.size() > kMaxRank) throw std::invalid_argument("Shape: rank above 4");
  for (int64_t d : dims) dim[rank++] = d;
}

Shape::Shape(const std::vector<int64_t>& dims) {
  if (dims.size() > kMaxRank) throw std::invalid_argument("Shape: rank above 4");
  for (int64_t d : dims) dim[rank++] = d;
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < rank; ++i) n *= dim[i];
  return n;
}

bool Shape::operator==(const Shape& o) const {
  if (rank != o.rank) return false;
  for (int i = 0; i < rank; ++i)
    if (dim[i] != o.dim[i]) return false;
  return true;
}

std::string Shape::str() const {
  std::ostringstream os;
  os << "[";
  for (int i = 0; i < rank; ++i) os << (i ? ", " : "") << dim[i];
  os << "]";
  return os.str();
}

template <class T>
T* Tensor::ptr() const {
  if (dtype != dtype_of<T>())
    throw std::logic_error(std::string("Tensor::ptr: tensor is ") + dtype_name(dtype) + ", asked for " +
                           dtype_name(dtype_of<T>()));
  return static_cast<T*>(data);
}
template float* Tensor::ptr<float>() const;
template double* Tensor::ptr<double>() const;
template int32_t* Tensor::ptr<int32_t>() const;

Tensor Tensor::reshaped(Shape s) const {
  if (s.numel() != numel()) throw std::logic_error("Tensor::reshaped: " + shape.str() + " cannot become " + s.str());
  Tensor t = *this;
  t.shape = s;
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  if (shape.rank == 0 || begin < 0 || end > shape[0] || begin > end)
    throw std::logic_error("Tensor::rows: bad range for " + shape.str());
  const int64_t row = shape[0] ? numel() / shape[0] : 0;
  Tensor t = *this;
  t.data = static_cast<char*>(data) + static_cast<size_t>(begin * row) * dtype_size(dtype);
  t.shape.dim[0] = end - begin;
  return t;
}

Tensor Tensor::operator[](int64_t i) const {
  Tensor t = rows(i, i + 1);
  for (int d = 1; d < t.shape.rank; ++d) t.shape.dim[d - 1] = t.shape.dim[d];
  t.shape.rank -= 1;
  return t;
}

Arena::Arena(Backend& backend, size_t capacity_bytes) : backend_(backend), capacity_(capacity_bytes) {
  if (capacity_ > 0) {
    base_ = backend_.allocate(capacity_);
    backend_.memset_zero(base_, capacity_);
  }
}

Arena::~Arena() {
  if (base_) backend_.release(base_);
}

Tensor Arena::alloc(Shape s, DType t) {
  const size_t n = align_up(static_cast<size_t>(s.numel()) * dtype_size(t));
  if (used_ + n > capacity_)
    throw std::runtime_error("Arena: out of planned memory (" + std::to_string(used_ + n) + " > " +
                             std::to_string(capacity_) + " bytes)");
  Tensor out;
  out.data = static_cast<char*>(base_) + used_;
  out.shape = s;
  out.dtype = t;
  out.device = backend_.device();
  used_ += n;
  return out;
}

Carver::Carver(Arena& arena)
    : base_(static_cast<char*>(arena.base()) + arena.used()),
      capacity_(arena.capacity() - arena.used()),
      device_(arena.backend().device()) {}

Tensor Carver::take(Shape s, DType t) {
  const size_t n = align_up(static_cast<size_t>(s.numel()) * dtype_size(t));
  Tensor out;
  out.shape = s;
  out.dtype = t;
  out.device = device_;
  if (!planning()) {
    if (used_ + n > capacity_)
      throw std::runtime_error("Carver: out of planned memory (" + std::to_string(used_ + n) + " > " +
                               std::to_string(capacity_) + " bytes)");
    out.data = static_cast<char*>(base_) + used_;
  }
  used_ += n;
  return out;
}

void ArenaPlan::add(Shape s, DType t) { bytes_ += aligned_bytes(s, t); }

size_t ArenaPlan::aligned_bytes(Shape s, DType t) { return align_up(static_cast<size_t>(s.numel()) * dtype_size(t)); }

}  // namespace mom
