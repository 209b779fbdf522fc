// Whole-model test: our CPU GPT-2 (forward, backward, gradient clipping, AdamW) against an
// independent PyTorch GPT-2 (tests/ref/torch_gpt2.py, written from the equations).
//
// Why this way: layer tests check each op in isolation; this one checks that the pieces are
// wired together as GPT-2 (embedding sum, pre-LN residuals, head layout inside qkv, causal
// mask, tied head, mean loss, which tensors get weight decay, clip semantics). The C++ side
// owns the inputs: it initialises the weights, saves them as a normal checkpoint (so the torch
// side also exercises our file format through h5py), draws the tokens, and runs
// tests/ref/gpt2_reference.py once for the suite. Before saving, every parameter is moved by
// a little noise, because at GPT-2's init the biases are 0 and the LayerNorm gains 1, and a
// mistake in how a bias or gain is applied would then be invisible in the forward pass.
//
// Tolerance (one definition for every comparison): a tensor passes when
//     max_i |ours_i − ref_i|  ≤  1e-4 · max_i |ref_i|.
// The scale is the tensor's largest magnitude rather than each element's own: float32
// rounding in a dot product or a sum scales with the size of the terms being summed, and
// many gradient elements are tiny results of cancellation, so an element-wise ratio there
// measures noise on both sides, not a bug. The element-wise worst (over elements with
// |ref_i| ≥ 1e-3 · max|ref|) is printed beside it, only for information.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/checkpointing.h"
#include "core/gpt2.h"
#include "core/optimizer.h"
#include "core/rng.h"
#include "io/config.h"
#include "tests/support.h"

namespace {

using mom::test::shell_quote;

constexpr double kRelTol = 1e-4;
constexpr uint64_t kSeed = 20240611;
constexpr int kSteps = 10;

struct Error {
  double max_abs_diff = 0, max_abs_ref = 0, elementwise = 0;
  double rel() const { return max_abs_ref > 0 ? max_abs_diff / max_abs_ref : max_abs_diff; }
};

template <class T>
Error compare(const T* ours, const std::vector<float>& ref) {
  Error e;
  for (size_t i = 0; i < ref.size(); ++i) {
    e.max_abs_diff = std::max(e.max_abs_diff, std::abs(static_cast<double>(ours[i]) - ref[i]));
    e.max_abs_ref = std::max(e.max_abs_ref, std::abs(static_cast<double>(ref[i])));
  }
  for (size_t i = 0; i < ref.size(); ++i) {
    const double r = std::abs(static_cast<double>(ref[i]));
    if (r >= 1e-3 * e.max_abs_ref && r > 0)
      e.elementwise = std::max(e.elementwise, std::abs(static_cast<double>(ours[i]) - ref[i]) / r);
  }
  return e;
}

// Prints the margin for the log and checks the tolerance.
void expect_close(const std::string& what, const Error& e) {
  std::printf("  %-28s rel %.2e (limit %.0e, max|d| %.2e, max|ref| %.2e)  element-wise worst %.2e\n", what.c_str(),
              e.rel(), kRelTol, e.max_abs_diff, e.max_abs_ref, e.elementwise);
  EXPECT_LE(e.max_abs_diff, kRelTol * e.max_abs_ref) << what << ": max|ours-ref| = " << e.max_abs_diff
                                                     << " exceeds " << kRelTol << " * max|ref| = " << e.max_abs_ref;
}

// A scalar is its own tensor: its scale is its own magnitude.
Error scalar_error(double ours, double ref) {
  Error e;
  e.max_abs_diff = std::abs(ours - ref);
  e.max_abs_ref = std::abs(ref);
  e.elementwise = e.rel();
  return e;
}

// Entry k is labelled `what` followed by k + 1 (steps count from 1).
void expect_close_series(const std::string& what, const std::vector<double>& ours, const std::vector<double>& ref) {
  ASSERT_EQ(ours.size(), ref.size()) << what;
  for (size_t k = 0; k < ref.size(); ++k) expect_close(what + std::to_string(k + 1), scalar_error(ours[k], ref[k]));
}

class ModelReference : public ::testing::Test {
 protected:
  static void SetUpTestSuite();
  static void TearDownTestSuite() { dir_.reset(); }

  void SetUp() override {
    if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_;
    ASSERT_TRUE(setup_error_.empty()) << setup_error_;
  }

  // The model both sides start from: GPT-2 init, then N(0, 0.02) noise on every element.
  static std::unique_ptr<mom::Gpt2> make_model() {
    auto m = std::make_unique<mom::Gpt2>(cfg_.model, mom::backend_for(mom::Device::CPU));
    m->init_weights(kSeed);
    mom::Rng rng(kSeed + 1);
    for (size_t i = 0; i < m->params().size(); ++i) {
      const mom::Tensor& p = m->params().param(i);
      float* v = p.ptr<float>();
      for (int64_t j = 0; j < p.numel(); ++j) v[j] += static_cast<float>(0.02 * rng.normal());
    }
    return m;
  }

  static std::vector<float> ref_tensor(const std::string& file, const mom::Shape& shape) {
    const auto shape_json = ref_["shapes"][file].get<std::vector<int64_t>>();
    EXPECT_EQ(mom::Shape(shape_json), shape) << file;
    const std::string bytes = mom::test::read_file(dir_->path() / "ref" / file);
    std::vector<float> out(static_cast<size_t>(shape.numel()));
    EXPECT_EQ(bytes.size(), out.size() * sizeof(float)) << file;
    std::memcpy(out.data(), bytes.data(), std::min(bytes.size(), out.size() * sizeof(float)));
    return out;
  }

  int B() const { return cfg_.train.batch_size; }
  int T() const { return cfg_.train.seq_len; }

  static inline std::unique_ptr<mom::test::ScratchDir> dir_;
  static inline mom::io::RunConfig cfg_;
  static inline std::vector<int32_t> tokens_, targets_;
  static inline nlohmann::json ref_;
  static inline std::string skip_reason_, setup_error_;
};

void ModelReference::SetUpTestSuite() {
  const std::string py = mom::test::reference_python();
  const auto probe = mom::test::run(shell_quote(py) + " -c 'import torch, h5py, numpy'");
  if (probe.exit_code != 0) {
    skip_reason_ = "PyTorch reference unavailable (" + py +
                   " cannot import torch, h5py and numpy; jobs/setup.sh installs them): " + probe.output;
    return;
  }
  // A vocabulary that is not a power of two, so no size happens to line up with a block size.
  cfg_ = mom::io::load_config("", {"model.vocab_size=1000", "model.n_ctx=64", "model.n_layer=2", "model.n_head=4",
                                   "model.n_embd=64", "train.batch_size=4", "train.seq_len=32", "train.lr=1e-3",
                                   "train.beta1=0.9", "train.beta2=0.95", "train.eps=1e-8",
                                   "train.weight_decay=0.1", "train.grad_clip=1.0"});
  dir_ = std::make_unique<mom::test::ScratchDir>("model-reference");

  mom::Rng rng(kSeed + 2);
  const size_t n = static_cast<size_t>(cfg_.train.batch_size) * cfg_.train.seq_len;
  tokens_.resize(n);
  targets_.resize(n);
  for (auto* v : {&tokens_, &targets_})
    for (auto& t : *v) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(cfg_.model.vocab_size)));
  auto bytes = [](const std::vector<int32_t>& v) {
    return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(int32_t));
  };
  mom::test::write_file(dir_->path() / "tokens.i32", bytes(tokens_));
  mom::test::write_file(dir_->path() / "targets.i32", bytes(targets_));
  mom::save_checkpoint(dir_->path() / "weights.h5", *make_model(), nullptr, mom::TrainState{}, cfg_.json, true);

  const std::string cmd = shell_quote(py) + " " +
                          shell_quote(mom::test::source_dir() + "/tests/ref/gpt2_reference.py") + " " +
                          shell_quote(*dir_ / "weights.h5") + " " + shell_quote(*dir_ / "tokens.i32") + " " +
                          shell_quote(*dir_ / "targets.i32") + " " + std::to_string(cfg_.train.batch_size) + " " +
                          std::to_string(cfg_.train.seq_len) + " " + shell_quote(*dir_ / "ref") +
                          " --steps " + std::to_string(kSteps);
  const auto r = mom::test::run(cmd);
  if (r.exit_code != 0) {
    setup_error_ = "reference failed (exit " + std::to_string(r.exit_code) + "): " + cmd + "\n" + r.output;
    return;
  }
  ref_ = nlohmann::json::parse(mom::test::read_file(dir_->path() / "ref" / "index.json"));
}

TEST_F(ModelReference, LogitsAndLossMatchPyTorch) {
  auto model = make_model();
  const int V = cfg_.model.vocab_size;
  std::vector<double> logits;
  model->logits(tokens_.data(), B(), T(), logits);
  ASSERT_EQ(logits.size(), static_cast<size_t>(B()) * T() * V);
  expect_close("logits", compare(logits.data(), ref_tensor(ref_["logits"], mom::Shape{B() * T(), V})));

  const double loss = model->forward(tokens_.data(), targets_.data(), B(), T());
  expect_close("loss", scalar_error(loss, ref_["loss"].get<double>()));
}

TEST_F(ModelReference, EveryGradientMatchesPyTorch) {
  auto model = make_model();
  mom::ParameterStore& ps = model->params();
  ps.zero_grads();
  const double loss = model->forward_backward(tokens_.data(), targets_.data(), B(), T(), 1.0 / (B() * T()));
  expect_close("loss (forward_backward)", scalar_error(loss, ref_["loss"].get<double>()));

  ASSERT_EQ(ref_["grads"].size(), ps.size()) << "the reference and our model have different parameter sets";
  for (size_t i = 0; i < ps.size(); ++i) {
    const std::string& name = ps.specs()[i].name;
    ASSERT_TRUE(ref_["grads"].contains(name)) << "no reference gradient for " << name;
    expect_close("grad " + name, compare(ps.grad(i).ptr<float>(), ref_tensor(ref_["grads"][name], ps.grad(i).shape)));
  }
}

// Ten steps on one batch: clipping (the gradient norm stays above 1 here, so every step is
// clipped), AdamW's bias correction and decoupled decay. The losses are compared, not the final
// parameters: some gradients are pure rounding noise (the key bias cannot change the softmax),
// and Adam turns such an element's sign into a full ±lr step, on each side independently.
TEST_F(ModelReference, AdamWTrajectoryMatchesPyTorch) {
  auto model = make_model();
  mom::ParameterStore& ps = model->params();
  const auto& t = cfg_.train;
  mom::AdamW opt(ps, {t.beta1, t.beta2, t.eps, t.weight_decay});
  std::vector<double> norms, losses;
  for (int step = 0; step < kSteps; ++step) {
    ps.zero_grads();
    const double loss = model->forward_backward(tokens_.data(), targets_.data(), B(), T(), 1.0 / (B() * T()));
    if (step > 0) losses.push_back(loss);  // the loss after `step` updates, as the reference records it
    norms.push_back(mom::clip_grad_norm(ps, t.grad_clip));
    opt.step(t.lr);
  }
  losses.push_back(model->forward(tokens_.data(), targets_.data(), B(), T()));
  expect_close_series("grad norm before clip, step ", norms, ref_["grad_norms"].get<std::vector<double>>());
  expect_close_series("loss after step ", losses, ref_["losses"].get<std::vector<double>>());
}

}  // namespace
