// Every layer's backward against central finite differences, in double precision.
//
// Each check builds a scalar objective J = Σ dout ⊙ f(inputs) with a fixed random dout, runs
// the op's backward once with that dout, then perturbs every input element by ±h and
// compares (J(x+h) − J(x−h)) / 2h with the analytic gradient (tests/finite_differences.h).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "core/backend.h"
#include "core/gpt2.h"
#include "core/rng.h"
#include "tests/finite_differences.h"

namespace mom {
namespace {

constexpr double kStep = test::kFdStep;
constexpr double kTol = test::kFdTol;

using test::dot;
using test::HostTensor;

struct IntTensor {
  std::vector<int32_t> data;
  Tensor t;
  IntTensor(std::vector<int32_t> v) : data(std::move(v)) {
    t = Tensor{data.data(), Shape{static_cast<int64_t>(data.size())}, DType::I32, Device::CPU};
  }
};

// Every element of x against its analytic gradient.
void expect_grad_matches(const char* what, std::vector<double>& x, const std::vector<double>& grad,
                         const std::function<double()>& objective) {
  test::check_grad(what, x.data(), x.size(), grad.data(), objective);
}

class LayerFiniteDifferences : public ::testing::Test {
 protected:
  Backend& be = backend_for(Device::CPU);
  Rng rng{42};
};

TEST_F(LayerFiniteDifferences, Matmul) {
  const int64_t N = 5, IC = 7, OC = 6;
  HostTensor x({N, IC}, &rng), w({OC, IC}, &rng), b({OC}, &rng), out({N, OC}, nullptr), dout({N, OC}, &rng);
  HostTensor dx({N, IC}, nullptr), dw({OC, IC}, nullptr), db({OC}, nullptr);
  auto J = [&] {
    be.matmul_forward(out.t, x.t, w.t, b.t);
    return dot(out.data, dout.data);
  };
  J();
  be.matmul_backward(dx.t, dw.t, db.t, dout.t, x.t, w.t);
  expect_grad_matches("matmul dx", x.data, dx.data, J);
  expect_grad_matches("matmul dweight", w.data, dw.data, J);
  expect_grad_matches("matmul dbias", b.data, db.data, J);
}

TEST_F(LayerFiniteDifferences, LayerNorm) {
  const int64_t N = 4, C = 9;
  HostTensor x({N, C}, &rng, 2.0), w({C}, &rng), b({C}, &rng), out({N, C}, nullptr), dout({N, C}, &rng);
  HostTensor mean({N}, nullptr), rstd({N}, nullptr), dx({N, C}, nullptr), dw({C}, nullptr), db({C}, nullptr);
  auto J = [&] {
    be.layernorm_forward(out.t, mean.t, rstd.t, x.t, w.t, b.t, 1e-5);
    return dot(out.data, dout.data);
  };
  J();
  be.layernorm_backward(dx.t, dw.t, db.t, dout.t, x.t, w.t, mean.t, rstd.t);
  expect_grad_matches("layernorm dx", x.data, dx.data, J);
  expect_grad_matches("layernorm dweight", w.data, dw.data, J);
  expect_grad_matches("layernorm dbias", b.data, db.data, J);
}

TEST_F(LayerFiniteDifferences, Gelu) {
  HostTensor x({40}, &rng, 2.0), out({40}, nullptr), dout({40}, &rng), dx({40}, nullptr);
  auto J = [&] {
    be.gelu_forward(out.t, x.t);
    return dot(out.data, dout.data);
  };
  J();
  be.gelu_backward(dx.t, x.t, dout.t);
  expect_grad_matches("gelu dx", x.data, dx.data, J);
}

TEST_F(LayerFiniteDifferences, ResidualAdd) {
  HostTensor a({12}, &rng), b({12}, &rng), out({12}, nullptr), dout({12}, &rng), da({12}, nullptr), db({12}, nullptr);
  auto J = [&] {
    be.add(out.t, a.t, b.t);
    return dot(out.data, dout.data);
  };
  J();
  be.accumulate(da.t, dout.t);  // the residual's backward: each input receives dout
  be.accumulate(db.t, dout.t);
  expect_grad_matches("residual da", a.data, da.data, J);
  expect_grad_matches("residual db", b.data, db.data, J);
}

TEST_F(LayerFiniteDifferences, Embedding) {
  const int64_t V = 11, T = 4, C = 5, B = 2;
  HostTensor wte({V, C}, &rng), wpe({T, C}, &rng), out({B * T, C}, nullptr), dout({B * T, C}, &rng);
  HostTensor dwte({V, C}, nullptr), dwpe({T, C}, nullptr);
  IntTensor tok({3, 7, 3, 0, 10, 3, 7, 1});  // repeated ids exercise the scatter
  auto J = [&] {
    be.embedding_forward(out.t, tok.t, wte.t, wpe.t, static_cast<int>(T), 0);
    return dot(out.data, dout.data);
  };
  J();
  be.embedding_backward(dwte.t, dwpe.t, dout.t, tok.t, static_cast<int>(T), 0);
  expect_grad_matches("embedding dwte", wte.data, dwte.data, J);
  expect_grad_matches("embedding dwpe", wpe.data, dwpe.data, J);
}

TEST_F(LayerFiniteDifferences, CausalAttention) {
  const int64_t B = 2, T = 5, nh = 2, C = 6;
  HostTensor qkv({B, T, 3 * C}, &rng), out({B, T, C}, nullptr), probs({B, nh, T, T}, nullptr), dout({B, T, C}, &rng);
  HostTensor dqkv({B, T, 3 * C}, nullptr);
  auto J = [&] {
    be.attention_forward(out.t, probs.t, qkv.t, static_cast<int>(nh));
    return dot(out.data, dout.data);
  };
  J();
  be.attention_backward(dqkv.t, dout.t, qkv.t, probs.t, static_cast<int>(nh));
  expect_grad_matches("attention dqkv", qkv.data, dqkv.data, J);
  // Causality: output row t must not depend on later tokens.
  std::vector<double> before = out.data;
  qkv.data[(0 * T + (T - 1)) * 3 * C + C] += 1.0;  // a key of the last token
  J();
  for (int64_t t = 0; t < T - 1; ++t)
    for (int64_t c = 0; c < C; ++c) EXPECT_EQ(out.data[t * C + c], before[t * C + c]);
}

TEST_F(LayerFiniteDifferences, TiedHeadCrossEntropy) {
  const int64_t N = 6, C = 5, V = 13;
  HostTensor x({N, C}, &rng), wte({V, C}, &rng), losses({N}, nullptr), dx({N, C}, nullptr), dwte({V, C}, nullptr);
  HostTensor scratch({2, V}, nullptr);  // two rows: the op must work through three chunks
  IntTensor targets({0, 12, 5, 5, 7, 1});
  const double g = 0.37;
  auto J = [&] {
    be.xent_head(losses.t, Tensor{}, Tensor{}, x.t, wte.t, targets.t, 0.0, scratch.t);
    double s = 0;
    for (double l : losses.data) s += g * l;
    return s;
  };
  J();
  be.xent_head(losses.t, dx.t, dwte.t, x.t, wte.t, targets.t, g, scratch.t);
  expect_grad_matches("xent head dx", x.data, dx.data, J);
  expect_grad_matches("xent head dwte", wte.data, dwte.data, J);
  // The loss itself: −log softmax against a direct computation.
  J();
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> logit(V);
    double mx = -1e300;
    for (int64_t v = 0; v < V; ++v) {
      logit[v] = 0;
      for (int64_t c = 0; c < C; ++c) logit[v] += x.data[n * C + c] * wte.data[v * C + c];
      mx = std::max(mx, logit[v]);
    }
    double z = 0;
    for (double l : logit) z += std::exp(l - mx);
    EXPECT_NEAR(losses.data[n], std::log(z) + mx - logit[targets.data[n]], 1e-12);
  }
}

// The whole model in f64: every parameter tensor, a sample of its elements.
TEST_F(LayerFiniteDifferences, WholeGpt2) {
  Gpt2Config cfg;
  cfg.vocab_size = 17, cfg.n_ctx = 8, cfg.n_layer = 2, cfg.n_head = 2, cfg.n_embd = 8;
  Gpt2 model(cfg, be, DType::F64);
  model.init_weights(7);
  // Larger weights than GPT-2's 0.02 so that every path carries a visible gradient.
  for (size_t i = 0; i < model.params().size(); ++i) {
    double* p = model.params().param(i).ptr<double>();
    for (int64_t k = 0; k < model.params().param(i).numel(); ++k) p[k] += 0.3 * rng.normal();
  }
  const int B = 2, T = 6;
  std::vector<int32_t> tok(B * T), tgt(B * T);
  for (auto& t : tok) t = static_cast<int32_t>(rng.below(17));
  for (auto& t : tgt) t = static_cast<int32_t>(rng.below(17));
  model.params().zero_grads();
  model.forward_backward(tok.data(), tgt.data(), B, T, 1.0 / (B * T));
  for (size_t i = 0; i < model.params().size(); ++i) {
    const Tensor p = model.params().param(i), g = model.params().grad(i);
    double* pd = p.ptr<double>();
    const double* gd = g.ptr<double>();
    for (int sample = 0; sample < 6; ++sample) {
      const int64_t k = static_cast<int64_t>(rng.below(static_cast<uint64_t>(p.numel())));
      const double saved = pd[k];
      pd[k] = saved + kStep;
      const double jp = model.forward(tok.data(), tgt.data(), B, T);
      pd[k] = saved - kStep;
      const double jm = model.forward(tok.data(), tgt.data(), B, T);
      pd[k] = saved;
      const double numeric = (jp - jm) / (2 * kStep);
      EXPECT_NEAR(gd[k], numeric, kTol * std::max(1.0, std::abs(numeric)))
          << model.params().specs()[i].name << "[" << k << "]";
    }
  }
}

}  // namespace
}  // namespace mom
