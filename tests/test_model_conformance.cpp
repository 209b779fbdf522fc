// Whole models on a backend under test against the CPU backend in double: logits, loss, the
// auxiliary losses and every gradient after one forward-backward, then ten AdamW steps; and
// the same run twice giving the same bits; on GPUs, bf16 GEMMs following f32 over fifty
// steps. For every block kind: dense GPT-2, a MoM chunk
// (SKIP, K = 2, GRU routers), MoE layers (top-2, capacity drops), SAS, SAS-P and AltUp.
//
// The targets are those of the op conformance tests (tests/conformance.h): CUDA in f32
// (skipped without a GPU) and the CPU backend in f32, which runs everywhere and keeps the
// comparison and its tolerances honest. Both sides start from the same weights: the tested
// model's f32 initialisation, copied into the f64 reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/gpt2.h"
#include "core/optimizer.h"
#include "core/rng.h"
#include "io/config.h"
#include "tests/conformance.h"

namespace mom::test {
namespace {

struct ModelCase {
  const char* name;
  const char* stack;
  const char* altup;  // nullptr: off
};

const ModelCase kCases[] = {
    {"Dense", R"([{"type":"dense","count":2}])", nullptr},
    {"MomSkipTop2Gru",
     R"([{"type":"dense","count":1},{"type":"mom","attn_modules":3,"ffn_modules":3,"skip":true,"steps":2,"top_k":2,)"
     R"("router":"gru","router_dim":16,"anchor":true,"balance_coef":0.01}])",
     nullptr},
    {"MoeTop2Capacity",
     R"([{"type":"dense","count":1},{"type":"moe","experts":4,"top_k":2,"aux_coef":0.01,"z_coef":0.001,)"
     R"("capacity_factor":1.0}])",
     nullptr},
    {"SasAndSasP", R"([{"type":"sas","count":2,"norm":"rms"},{"type":"sas_p","count":2,"norm":"none"}])", nullptr},
    {"AltUpInputDependentDense", R"([{"type":"dense","count":2}])",
     R"({"k":2,"mode":"recycled","active":"first","layer_input":"predicted","coefficients":"input_dependent"})"},
};

struct Target {
  std::string backend;  // conformance target: "cpu_f32", "cuda_f32"
  ModelCase model;
};

std::vector<Target> targets() {
  std::vector<Target> out;
  for (const char* t : {"cpu_f32", "cuda_f32"})
    for (const ModelCase& c : kCases) out.push_back({t, c});
  return out;
}

io::RunConfig config_for(const ModelCase& c) {
  std::vector<std::string> o = {"model.vocab_size=97", "model.n_ctx=32",   "model.n_embd=64",
                                "model.n_head=4",      "train.seq_len=32", std::string("model.stack=") + c.stack};
  if (c.altup) o.push_back(std::string("model.altup=") + c.altup);
  return io::load_config("", o);
}

struct Batch {
  int B = 2, T = 32;
  std::vector<int32_t> x, y;
  Batch(int vocab, uint64_t seed) : x(static_cast<size_t>(B * T)), y(x.size()) {
    Rng rng(seed);
    for (auto& t : x) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
    for (auto& t : y) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
  }
};

std::vector<unsigned char> bits(Backend& be, const Tensor& t) {
  std::vector<unsigned char> b(t.bytes());
  be.copy_to_host(b.data(), t);
  return b;
}

class ModelConformance : public ::testing::TestWithParam<Target> {
 protected:
  void SetUp() override {
    const Target& t = GetParam();
    if (t.backend.starts_with("cuda")) {
      std::string why;
      dev_ = cuda_backend_or_null(&why);
      if (!dev_) GTEST_SKIP() << gpu_skip_message(why);
    } else {
      dev_ = &backend_for(Device::CPU);
    }
    cfg_ = config_for(t.model);
    tested_ = std::make_unique<Gpt2>(cfg_.model, *dev_, DType::F32);
    tested_->init_weights(17);
    ref_ = std::make_unique<Gpt2>(cfg_.model, backend_for(Device::CPU), DType::F64);
    copy_weights(*tested_, *ref_);
  }

  static void copy_weights(const Gpt2& from, Gpt2& to) {
    for (size_t i = 0; i < from.params().size(); ++i) {
      const std::vector<double> v = to_host_doubles(from.backend(), from.params().param(i));
      to.backend().copy_from_host(to.params().param(i), v.data());
    }
  }

  Backend* dev_ = nullptr;
  io::RunConfig cfg_;
  std::unique_ptr<Gpt2> tested_, ref_;
};

// One forward-backward: logits, loss, auxiliary loss and every gradient within 1e-4.
TEST_P(ModelConformance, LogitsLossAndEveryGradient) {
  const Batch b(cfg_.model.vocab_size, 3);
  std::vector<double> lt, lr;
  tested_->logits(b.x.data(), b.B, b.T, lt);
  ref_->logits(b.x.data(), b.B, b.T, lr);
  EXPECT_TRUE(close_to(lt, lr, 1e-4, "logits", 1e-12));

  const double scale = 1.0 / (b.B * b.T);
  tested_->params().zero_grads();
  ref_->params().zero_grads();
  const double loss_t = tested_->forward_backward(b.x.data(), b.y.data(), b.B, b.T, scale);
  const double loss_r = ref_->forward_backward(b.x.data(), b.y.data(), b.B, b.T, scale);
  EXPECT_NEAR(loss_t, loss_r, 1e-4 * std::abs(loss_r));
  EXPECT_NEAR(tested_->aux_loss(), ref_->aux_loss(), 1e-4 * std::max(1e-3, std::abs(ref_->aux_loss())));
  const std::vector<double> all = to_host_doubles(ref_->backend(), ref_->params().flat_grads());
  double largest = 0;
  for (double g : all) largest = std::max(largest, std::abs(g));
  // The floor covers tensors whose whole value is a cancelling sum far below its terms (a SAS
  // gain's gradient of 6e-6 beside gradients of 1e-1): such a tensor is held to the model's
  // gradient scale.
  for (size_t i = 0; i < tested_->params().size(); ++i)
    EXPECT_TRUE(close_to(to_host_doubles(*dev_, tested_->params().grad(i)),
                         to_host_doubles(ref_->backend(), ref_->params().grad(i)), 1e-4,
                         "gradient of " + tested_->params().specs()[i].name, 1e-3 * largest));
}

// Ten AdamW steps on one batch: every step's loss within 1e-4 of the reference's.
TEST_P(ModelConformance, TenAdamWSteps) {
  const Batch b(cfg_.model.vocab_size, 4);
  AdamW opt_t(tested_->params(), {}), opt_r(ref_->params(), {});
  for (int step = 1; step <= 10; ++step) {
    tested_->params().zero_grads();
    ref_->params().zero_grads();
    const double scale = 1.0 / (b.B * b.T);
    const double lt = tested_->forward_backward(b.x.data(), b.y.data(), b.B, b.T, scale);
    const double lr = ref_->forward_backward(b.x.data(), b.y.data(), b.B, b.T, scale);
    EXPECT_NEAR(lt, lr, 1e-4 * std::abs(lr)) << "step " << step;
    opt_t.step(1e-3);
    opt_r.step(1e-3);
  }
}

// The same steps twice from the same weights: the same bits in every loss and gradient.
TEST_P(ModelConformance, SameRunTwiceSameBits) {
  Gpt2 again(cfg_.model, *dev_, DType::F32);
  again.init_weights(17);
  const Batch b(cfg_.model.vocab_size, 5);
  AdamW opt_a(tested_->params(), {}), opt_b(again.params(), {});
  for (int step = 1; step <= 3; ++step) {
    tested_->params().zero_grads();
    again.params().zero_grads();
    const double la = tested_->forward_backward(b.x.data(), b.y.data(), b.B, b.T, 1.0 / 64);
    const double lb = again.forward_backward(b.x.data(), b.y.data(), b.B, b.T, 1.0 / 64);
    ASSERT_EQ(la, lb) << "step " << step;
    ASSERT_EQ(bits(*dev_, tested_->params().flat_grads()), bits(*dev_, again.params().flat_grads()))
        << "gradients differ in their bits at step " << step;
    opt_a.step(1e-3);
    opt_b.step(1e-3);
  }
  EXPECT_EQ(bits(*dev_, tested_->params().flat_params()), bits(*dev_, again.params().flat_params()));
}

// train.matmul_precision "medium" (GEMMs on bf16 tensor cores) against f32 on the same GPU
// from the same weights: fifty AdamW steps, every loss within 1e-2 (relative) of f32's. The
// CPU computes in f32 only, so this runs on the CUDA targets.
TEST_P(ModelConformance, Bf16MatmulsFollowF32ForFiftySteps) {
  if (dev_->device() == Device::CPU) GTEST_SKIP() << "the CPU backend has f32 GEMMs only";
  Gpt2 f32(cfg_.model, *dev_, DType::F32);
  copy_weights(*tested_, f32);
  const Batch b(cfg_.model.vocab_size, 6);
  AdamW opt_bf16(tested_->params(), {}), opt_f32(f32.params(), {});
  struct Restore {
    Backend& be;
    ~Restore() { be.set_matmul_precision(Backend::MatmulPrecision::F32); }
  } restore{*dev_};
  for (int step = 1; step <= 50; ++step) {
    dev_->set_matmul_precision(Backend::MatmulPrecision::BF16);
    tested_->params().zero_grads();
    const double lb = tested_->forward_backward(b.x.data(), b.y.data(), b.B, b.T, 1.0 / 64);
    opt_bf16.step(1e-3);
    dev_->set_matmul_precision(Backend::MatmulPrecision::F32);
    f32.params().zero_grads();
    const double lf = f32.forward_backward(b.x.data(), b.y.data(), b.B, b.T, 1.0 / 64);
    opt_f32.step(1e-3);
    EXPECT_NEAR(lb, lf, 1e-2 * lf) << "step " << step;
  }
}

void PrintTo(const Target& t, std::ostream* os) { *os << t.backend << " " << t.model.name; }

INSTANTIATE_TEST_SUITE_P(Models, ModelConformance, ::testing::ValuesIn(targets()),
                         [](const ::testing::TestParamInfo<Target>& info) {
                           return info.param.backend + "_" + info.param.model.name;
                         });

}  // namespace
}  // namespace mom::test
