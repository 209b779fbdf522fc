// Helpers every backend's ops share: the float/double dispatch over a tensor's dtype and the
// element count of one row. Host-only code, usable from .cpp and .cu files alike.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "core/tensor.h"

namespace mom {

// Calls f(T{}) with T = float or double according to the tensor's dtype.
template <class F>
void dispatch_float(DType dtype, F&& f) {
  if (dtype == DType::F32)
    f(float{});
  else if (dtype == DType::F64)
    f(double{});
  else
    throw std::logic_error(std::string("backend op needs an f32 or f64 tensor, got ") + dtype_name(dtype));
}

// Elements in one row of a tensor (the product of the dimensions after the first), also when
// it has no rows.
inline int64_t row_elems(const Tensor& t) {
  int64_t n = 1;
  for (int d = 1; d < t.shape.rank; ++d) n *= t.shape[d];
  return n;
}

}  // namespace mom
