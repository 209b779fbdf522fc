// HostTensor: an f64 tensor backed by a std::vector, for finite-difference tests that call
// the CPU backend's ops directly (the CPU backend accepts F64 tensors for exactly this).
#pragma once
#include <algorithm>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace mom::test {

struct HostTensor {
  std::vector<double> data;
  Tensor t;
  // Filled with N(0, scale) from rng, or zeros when rng is null.
  HostTensor(Shape s, Rng* rng, double scale = 1.0) : data(static_cast<size_t>(s.numel())) {
    if (rng)
      for (auto& x : data) x = rng->normal() * scale;
    t = Tensor{data.data(), s, DType::F64, Device::CPU};
  }
  void zero() { std::fill(data.begin(), data.end(), 0.0); }
};

}  // namespace mom::test
