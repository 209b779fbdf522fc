// Tensor: a typed, shaped view into memory owned by an Arena.
//
// Why views and arenas: training allocates everything once (parameters, gradients,
// optimizer moments, activations), so a tensor never owns memory. Parameters live in one
// contiguous buffer (llm.c style), which makes the optimizer, gradient-norm and gradient
// all-reduce a single pass over one block, and lets a module pool later carry a leading
// module axis that is sliced across ranks.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace mom {

enum class DType : uint8_t { F32, F64, I32 };
enum class Device : uint8_t { CPU, CUDA };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
const char* device_name(Device d);

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::F32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::F64;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::I32;
}

struct Shape {
  static constexpr int kMaxRank = 4;
  std::array<int64_t, kMaxRank> dim{};
  int rank = 0;
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  explicit Shape(const std::vector<int64_t>& dims);
  int64_t numel() const;
  int64_t operator[](int i) const { return dim[i]; }
  bool operator==(const Shape& o) const;
  std::vector<int64_t> vec() const { return {dim.begin(), dim.begin() + rank}; }
  std::string str() const;  // "[2, 3]"
};

struct Tensor {
  void* data = nullptr;
  Shape shape;
  DType dtype = DType::F32;
  Device device = Device::CPU;

  int64_t numel() const { return shape.numel(); }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  bool empty() const { return data == nullptr; }
  // Typed pointer; throws if T does not match dtype.
  template <class T>
  T* ptr() const;
  // The same memory with another shape of equal numel.
  Tensor reshaped(Shape s) const;
  // Rows [begin, end) along the leading axis.
  Tensor rows(int64_t begin, int64_t end) const;
  // Element `i` along the leading axis, with the leading axis dropped.
  Tensor operator[](int64_t i) const;
};

class Backend;

// One allocation on one device; tensors are bump-allocated views into it, 64-byte aligned.
class Arena {
 public:
  Arena(Backend& backend, size_t capacity_bytes);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  Tensor alloc(Shape s, DType t);
  size_t used() const { return used_; }
  // Forgets every allocation (earlier views must no longer be used).
  void reset() { used_ = 0; }
  size_t capacity() const { return capacity_; }
  void* base() const { return base_; }
  Backend& backend() const { return backend_; }

 private:
  Backend& backend_;
  void* base_ = nullptr;
  size_t capacity_ = 0;
  size_t used_ = 0;
};

// Bytes an arena needs for a sequence of allocations (same alignment as Arena::alloc).
class ArenaPlan {
 public:
  void add(Shape s, DType t);
  size_t bytes() const { return bytes_; }
  // Bytes one allocation of this shape takes, alignment included.
  static size_t aligned_bytes(Shape s, DType t);

 private:
  size_t bytes_ = 0;
};

// Hands out consecutive 64-byte-aligned views of one region, or, without a region, only counts
// the bytes those views need. Why: a layout is then written once, as one function, and run
// twice: with planning carvers to size the arenas, then with real ones to carve them.
class Carver {
 public:
  Carver() = default;  // planning: take() returns empty tensors and counts bytes
  Carver(void* base, size_t capacity, Device device) : base_(base), capacity_(capacity), device_(device) {}
  // Carves from the unused rest of an arena.
  explicit Carver(Arena& arena);
  bool planning() const { return base_ == nullptr; }
  Tensor take(Shape s, DType t);
  size_t used() const { return used_; }

 private:
  void* base_ = nullptr;
  size_t capacity_ = 0, used_ = 0;
  Device device_ = Device::CPU;
};

}  // namespace mom
