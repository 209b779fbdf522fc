// Finite-difference helpers shared by the gradient tests: HostTensor (an f64 tensor backed by a
// std::vector, for tests that call the CPU backend's ops directly: the CPU backend accepts F64
// tensors for exactly this) and check_grad (central differences against an analytic gradient).
// In f64 with h = 1e-5 the difference quotient is accurate to ~1e-10, so 1e-7 is a tight bound.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
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

inline constexpr double kFdStep = 1e-5;
inline constexpr double kFdTol = 1e-7;

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Central differences of `objective` over the n elements at x, against `grad`; relative error
// with a floor of 1 on the scale. Prints and returns the worst error.
inline double check_grad(const char* what, double* x, size_t n, const double* grad,
                         const std::function<double()>& objective, double tol = kFdTol) {
  double worst = 0;
  for (size_t i = 0; i < n; ++i) {
    const double saved = x[i];
    x[i] = saved + kFdStep;
    const double jp = objective();
    x[i] = saved - kFdStep;
    const double jm = objective();
    x[i] = saved;
    const double numeric = (jp - jm) / (2 * kFdStep);
    const double err = std::abs(numeric - grad[i]) / std::max(1.0, std::abs(numeric));
    worst = std::max(worst, err);
    EXPECT_LE(err, tol) << what << "[" << i << "]: numeric " << numeric << " analytic " << grad[i];
  }
  std::printf("%-32s %4zu elements, worst relative error %.2e\n", what, n, worst);
  return worst;
}

}  // namespace mom::test
