// Backend conformance: every op of a backend under test against the CPU backend in double.
//
// Why the CPU backend in f64 is the reference: it is verified against PyTorch autograd
// (test_ops_fd, the reference tests), and in double its own rounding is far below the f32
// tolerance, so a mismatch is the tested backend's. The backends under test are CUDA in f32
// and f64 (skipped with a message where no GPU is visible) and the CPU backend itself in f32,
// which runs everywhere: it keeps these tests, their shapes and tolerances honest on machines
// without a GPU.
//
// A Twin holds the two sides: every tensor is a Pair (the reference's f64 tensor and the
// tested backend's), made from the same values (rounded to float first, so both start
// equal); Twin::both runs one op on both sides; Twin::close compares a result.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace mom::test {

// The backends under test, as test parameters: "cpu_f32", "cuda_f32", "cuda_f64".
inline std::vector<std::string> conformance_targets() { return {"cpu_f32", "cuda_f32", "cuda_f64"}; }
inline std::string target_name(const ::testing::TestParamInfo<std::string>& info) { return info.param; }

// The CUDA backend, or nullptr with the reason in *why (a build without CUDA, no device).
inline Backend* cuda_backend_or_null(std::string* why) {
  try {
    return &backend_for(Device::CUDA);
  } catch (const UserError& e) {
    *why = e.what();
    return nullptr;
  }
}

// The message GPU tests skip with.
inline std::string gpu_skip_message(const std::string& why) {
  return "no CUDA device here (" + why +
         "); GPU tests run on a GPU machine: bash jobs/device/bundle.sh, then bash jobs/device/check.sh there "
         "(docs/gpu.md)";
}

// A tensor of any backend as host doubles (f32, f64 or i32).
inline std::vector<double> to_host_doubles(Backend& be, const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  if (t.dtype == DType::F64) {
    be.copy_to_host(out.data(), t);
  } else if (t.dtype == DType::F32) {
    std::vector<float> f(out.size());
    be.copy_to_host(f.data(), t);
    std::copy(f.begin(), f.end(), out.begin());
  } else {
    std::vector<int32_t> f(out.size());
    be.copy_to_host(f.data(), t);
    std::copy(f.begin(), f.end(), out.begin());
  }
  return out;
}

// max |got − ref| ≤ tol · max(max |ref|, floor): relative to the result's scale, so that
// entries near zero are not held to a relative bound they cannot meet in f32. A non-finite
// tested value where the reference is finite fails. The message names the worst element.
inline ::testing::AssertionResult close_to(const std::vector<double>& got, const std::vector<double>& ref, double tol,
                                           const std::string& what, double floor = 1e-30) {
  double scale = floor, worst = 0;
  size_t at = 0;
  bool finite = true;
  for (size_t i = 0; i < ref.size(); ++i) {
    scale = std::max(scale, std::abs(ref[i]));
    if (!std::isfinite(got[i]) && std::isfinite(ref[i])) finite = false;
    const double e = std::abs(got[i] - ref[i]);
    if (e > worst || !std::isfinite(e)) worst = e, at = i;
  }
  if (finite && worst <= tol * scale) return ::testing::AssertionSuccess();
  std::ostringstream os;
  os << what << ": max error " << worst << " = " << worst / scale << " of the largest |reference| " << scale
     << " (tolerance " << tol << ") at element " << at;
  if (at < ref.size()) os << ": tested " << got[at] << ", reference " << ref[at];
  return ::testing::AssertionFailure() << os.str();
}

struct Pair {
  Tensor ref, dev;
  const Tensor& operator[](bool on_dev) const { return on_dev ? dev : ref; }
  Shape shape() const { return ref.shape; }
};

class Twin {
 public:
  // target: one of conformance_targets(). Sets *skip (with the reason) when the target's
  // backend is not available here.
  Twin(const std::string& target, std::string* skip) : cpu_(backend_for(Device::CPU)) {
    Backend* tested = &cpu_;
    dtype_ = target.ends_with("f64") ? DType::F64 : DType::F32;
    if (target.starts_with("cuda")) {
      std::string why;
      tested = cuda_backend_or_null(&why);
      if (!tested) {
        *skip = gpu_skip_message(why);
        return;
      }
    }
    dev_ = tested;
    reserve(size_t{64} << 20);
  }

  // Room for `bytes` of tested-side tensors (twice that on the f64 reference side); frees
  // every tensor made so far. 64 MiB unless a test asks for more.
  void reserve(size_t bytes) {
    ref_arena_.reset();
    dev_arena_.reset();
    ref_arena_ = std::make_unique<Arena>(cpu_, bytes * 2);
    dev_arena_ = std::make_unique<Arena>(*dev_, bytes);
  }

  Backend& ref() { return cpu_; }
  Backend& dev() { return *dev_; }
  DType dtype() const { return dtype_; }
  // f32 on the tested side: results are compared within float tolerances; f64: 1e-10.
  double tol(double f32_tol) const { return dtype_ == DType::F64 ? 1e-10 : f32_tol; }

  // Frees every tensor (between cases of one test).
  void reset() {
    ref_arena_->reset();
    dev_arena_->reset();
  }

  // Runs op(backend, on_dev) on the reference (on_dev false) and on the tested backend.
  template <class F>
  void both(F&& op) {
    op(cpu_, false);
    op(*dev_, true);
    dev_->synchronize();
  }

  Pair values(Shape s, const std::vector<double>& v) {
    Pair p{ref_arena_->alloc(s, DType::F64), dev_arena_->alloc(s, dtype_)};
    set(p, v);
    return p;
  }
  // Uniform in [lo, hi), rounded to float.
  Pair random(Shape s, double lo = -1.0, double hi = 1.0) {
    std::vector<double> v(static_cast<size_t>(s.numel()));
    for (auto& x : v) x = static_cast<float>(lo + (hi - lo) * rng_.uniform());
    return values(s, v);
  }
  Pair zeros(Shape s) { return values(s, std::vector<double>(static_cast<size_t>(s.numel()), 0.0)); }
  Pair constant(Shape s, double c) { return values(s, std::vector<double>(static_cast<size_t>(s.numel()), c)); }
  // I32 on both sides.
  Pair ints(Shape s, const std::vector<int32_t>& v) {
    Pair p{ref_arena_->alloc(s, DType::I32), dev_arena_->alloc(s, DType::I32)};
    cpu_.copy_from_host(p.ref, v.data());
    dev_->copy_from_host(p.dev, v.data());
    return p;
  }
  static Pair none() { return {}; }

  // Overwrites both sides with v (rounded to the tested dtype on its side).
  void set(const Pair& p, const std::vector<double>& v) {
    cpu_.copy_from_host(p.ref, v.data());
    if (dtype_ == DType::F64) return dev_->copy_from_host(p.dev, v.data());
    std::vector<float> f(v.begin(), v.end());
    dev_->copy_from_host(p.dev, f.data());
  }

  std::vector<double> host_ref(const Pair& p) { return to_host_doubles(cpu_, p.ref); }
  std::vector<double> host_dev(const Pair& p) { return to_host_doubles(*dev_, p.dev); }
  // The tested side's raw bytes (determinism checks).
  std::vector<unsigned char> dev_bits(const Pair& p) {
    std::vector<unsigned char> b(p.dev.bytes());
    dev_->copy_to_host(b.data(), p.dev);
    return b;
  }

  // close_to over a result: the tested side against the reference.
  ::testing::AssertionResult close(const Pair& p, double tol, const std::string& what) {
    return close_to(host_dev(p), host_ref(p), tol, what + " " + p.ref.shape.str());
  }

 private:
  Backend& cpu_;
  Backend* dev_ = nullptr;
  DType dtype_ = DType::F32;
  std::unique_ptr<Arena> ref_arena_, dev_arena_;
  Rng rng_{20261202};
};

// Declares a conformance test over every target; the body sees `tw` (a Twin) and has been
// skipped already where the target is missing.
#define MOM_CONFORMANCE_SUITE(Suite)                                                                 \
  class Suite : public ::testing::TestWithParam<std::string> {                                       \
   protected:                                                                                        \
    void SetUp() override {                                                                          \
      std::string skip;                                                                              \
      twin_ = std::make_unique<::mom::test::Twin>(GetParam(), &skip);                                \
      if (!skip.empty()) GTEST_SKIP() << skip;                                                       \
    }                                                                                                \
    ::mom::test::Twin& tw() { return *twin_; }                                                       \
    std::unique_ptr<::mom::test::Twin> twin_;                                                        \
  };                                                                                                 \
  INSTANTIATE_TEST_SUITE_P(Backends, Suite, ::testing::ValuesIn(::mom::test::conformance_targets()), \
                           ::mom::test::target_name)

}  // namespace mom::test
