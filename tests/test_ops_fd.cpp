// The CPU backend's ops for the simplified blocks (RMSNorm, shaped attention, scalar gains) and
// for Alternating Updates (predict, correct, the router's tanh and clamp), tested one by one.
//
// Gradients: every input and parameter against central finite differences in double precision
// (J = Σ dout ⊙ f(inputs), tests/finite_differences.h), over odd shapes. Then the exact
// properties the models rely on (shaped attention at init returns v bit for bit, reduces to the
// standard attention at α = 0, β = 1, γ = 0, is causal; AltUp's correct at K = 1, g = 1 returns
// y), that backward accumulates (+=), and that float results do not depend on the thread count.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/rng.h"
#include "tests/finite_differences.h"

namespace mom {
namespace {

using test::dot;
using test::HostTensor;

// A float tensor on the host (HostTensor is f64 only).
struct FloatTensor {
  std::vector<float> data;
  Tensor t;
  FloatTensor(Shape s, Rng* rng, double scale = 1.0) : data(static_cast<size_t>(s.numel())) {
    if (rng)
      for (auto& x : data) x = static_cast<float>(rng->normal() * scale);
    t = Tensor{data.data(), s, DType::F32, Device::CPU};
  }
};

void expect_grad(const std::string& what, std::vector<double>& x, const std::vector<double>& grad,
                 const std::function<double()>& objective) {
  test::check_grad(what.c_str(), x.data(), x.size(), grad.data(), objective);
}

// After a second backward (the same inputs), every gradient must be twice the first: backward
// adds into its outputs.
void expect_doubled(const std::string& what, const std::vector<double>& first, const std::vector<double>& second) {
  ASSERT_EQ(first.size(), second.size());
  for (size_t i = 0; i < first.size(); ++i)
    EXPECT_NEAR(second[i], 2 * first[i], 1e-12 * std::max(1.0, std::abs(first[i]))) << what << "[" << i << "]";
}

template <class V>
bool same_bits(const V& a, const V& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0;
}

class OpFiniteDifferences : public ::testing::Test {
 protected:
  Backend& be = backend_for(Device::CPU);
  Rng rng{1234};
  void TearDown() override { be.set_num_threads(0); }
};

// ---- RMSNorm

TEST_F(OpFiniteDifferences, RmsNorm) {
  const double eps = 1e-5;
  for (auto [N, C] : {std::pair<int64_t, int64_t>{1, 1}, {4, 9}, {3, 70}}) {
    const std::string tag = "rmsnorm N=" + std::to_string(N) + " C=" + std::to_string(C);
    HostTensor x({N, C}, &rng, 2.0), w({C}, &rng), out({N, C}, nullptr), rms({N}, nullptr), dout({N, C}, &rng);
    HostTensor dx({N, C}, nullptr), dw({C}, nullptr);
    auto J = [&] {
      be.rmsnorm_forward(out.t, rms.t, x.t, w.t, eps);
      return dot(out.data, dout.data);
    };
    J();
    for (int64_t n = 0; n < N; ++n) {  // the saved ρ
      double ss = 0;
      for (int64_t c = 0; c < C; ++c) ss += x.data[n * C + c] * x.data[n * C + c];
      EXPECT_NEAR(rms.data[n], std::sqrt(ss / C), 1e-12);
    }
    be.rmsnorm_backward(dx.t, dw.t, dout.t, x.t, w.t, rms.t, eps);
    expect_grad(tag + " dx", x.data, dx.data, J);
    expect_grad(tag + " dweight", w.data, dw.data, J);
    const auto dx1 = dx.data, dw1 = dw.data;
    J();
    be.rmsnorm_backward(dx.t, dw.t, dout.t, x.t, w.t, rms.t, eps);
    expect_doubled(tag + " dx", dx1, dx.data);
    expect_doubled(tag + " dweight", dw1, dw.data);
  }
}

// A zero row: ρ = 0, out = 0, and dx = w ⊙ dout / eps with no NaN. (Finite differences do
// not apply there: ρ = ‖x‖/sqrt(C) has a kink at 0, so the quotient is off by O(h/eps).)
TEST_F(OpFiniteDifferences, RmsNormZeroRow) {
  const int64_t N = 3, C = 6;
  const double eps = 1e-5;
  HostTensor x({N, C}, &rng), w({C}, &rng), out({N, C}, nullptr), rms({N}, nullptr), dout({N, C}, &rng);
  HostTensor dx({N, C}, nullptr), dw({C}, nullptr);
  for (int64_t c = 0; c < C; ++c) x.data[1 * C + c] = 0;
  be.rmsnorm_forward(out.t, rms.t, x.t, w.t, eps);
  be.rmsnorm_backward(dx.t, dw.t, dout.t, x.t, w.t, rms.t, eps);
  EXPECT_EQ(rms.data[1], 0.0);
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_EQ(out.data[C + c], 0.0);
    EXPECT_NEAR(dx.data[C + c], w.data[c] * dout.data[C + c] / eps,
                1e-9 * std::abs(w.data[c] * dout.data[C + c] / eps));
  }
  for (double v : dx.data) EXPECT_TRUE(std::isfinite(v));
  for (double v : dw.data) EXPECT_TRUE(std::isfinite(v));
}

// ---- shaped attention

struct AttentionShape {
  int64_t B, T, nh, hd;
};

TEST_F(OpFiniteDifferences, ShapedAttention) {
  for (auto [B, T, nh, hd] : {AttentionShape{1, 1, 1, 3}, {2, 5, 1, 4}, {2, 7, 3, 2}, {1, 6, 2, 3}}) {
    const int64_t C = nh * hd;
    const std::string tag =
        "shaped attn B=" + std::to_string(B) + " T=" + std::to_string(T) + " nh=" + std::to_string(nh);
    HostTensor qk({B, T, 2 * C}, &rng), v({B, T, C}, &rng), out({B, T, C}, nullptr), probs({B, nh, T, T}, nullptr);
    HostTensor alpha({nh}, &rng), beta({nh}, &rng), gamma({nh}, &rng), dout({B, T, C}, &rng);
    HostTensor dqk({B, T, 2 * C}, nullptr), dv({B, T, C}, nullptr), dalpha({nh}, nullptr), dbeta({nh}, nullptr),
        dgamma({nh}, nullptr);
    auto J = [&] {
      be.shaped_attention_forward(out.t, probs.t, qk.t, v.t, alpha.t, beta.t, gamma.t, static_cast<int>(nh));
      return dot(out.data, dout.data);
    };
    auto backward = [&] {
      J();  // backward consumes probs
      be.shaped_attention_backward(dqk.t, dv.t, dalpha.t, dbeta.t, dgamma.t, dout.t, qk.t, v.t, probs.t, alpha.t,
                                   beta.t, gamma.t, static_cast<int>(nh));
    };
    backward();
    expect_grad(tag + " dqk", qk.data, dqk.data, J);
    expect_grad(tag + " dv", v.data, dv.data, J);
    expect_grad(tag + " dalpha", alpha.data, dalpha.data, J);
    expect_grad(tag + " dbeta", beta.data, dbeta.data, J);
    expect_grad(tag + " dgamma", gamma.data, dgamma.data, J);
    const auto g1 = std::vector<std::vector<double>>{dqk.data, dv.data, dalpha.data, dbeta.data, dgamma.data};
    backward();
    const auto g2 = std::vector<std::vector<double>>{dqk.data, dv.data, dalpha.data, dbeta.data, dgamma.data};
    for (size_t k = 0; k < g1.size(); ++k) expect_doubled(tag + " grad " + std::to_string(k), g1[k], g2[k]);
  }
}

// At init (q = 0, α = β = γ = 1) the op returns v bit for bit, in float and in double.
template <class H>
void expect_identity_at_init(Backend& be, Rng& rng) {
  for (auto [B, T, nh, hd] :
       {AttentionShape{1, 1, 1, 4}, {2, 7, 3, 5}, {2, 33, 2, 8}, {1, 100, 4, 16}, {1, 257, 1, 4}}) {
    const int64_t C = nh * hd;
    H qk({B, T, 2 * C}, &rng), v({B, T, C}, &rng), out({B, T, C}, nullptr), probs({B, nh, T, T}, nullptr);
    H alpha({nh}, nullptr), beta({nh}, nullptr), gamma({nh}, nullptr);
    for (int64_t n = 0; n < B * T; ++n)
      for (int64_t c = 0; c < C; ++c) qk.data[n * 2 * C + c] = 0;  // q = 0, k random
    for (int64_t h = 0; h < nh; ++h) alpha.data[h] = beta.data[h] = gamma.data[h] = 1;
    be.shaped_attention_forward(out.t, probs.t, qk.t, v.t, alpha.t, beta.t, gamma.t, static_cast<int>(nh));
    EXPECT_TRUE(same_bits(out.data, v.data)) << "T=" << T << " nh=" << nh;
  }
}

TEST_F(OpFiniteDifferences, ShapedAttentionIdentityAtInitDouble) { expect_identity_at_init<HostTensor>(be, rng); }
TEST_F(OpFiniteDifferences, ShapedAttentionIdentityAtInitFloat) { expect_identity_at_init<FloatTensor>(be, rng); }

// Output row t does not depend on later tokens' q, k or v.
TEST_F(OpFiniteDifferences, ShapedAttentionCausal) {
  const int64_t B = 2, T = 7, nh = 2, hd = 3, C = nh * hd;
  HostTensor qk({B, T, 2 * C}, &rng), v({B, T, C}, &rng), out({B, T, C}, nullptr), probs({B, nh, T, T}, nullptr);
  HostTensor alpha({nh}, &rng), beta({nh}, &rng), gamma({nh}, &rng);
  auto run = [&] {
    be.shaped_attention_forward(out.t, probs.t, qk.t, v.t, alpha.t, beta.t, gamma.t, static_cast<int>(nh));
    return out.data;
  };
  const auto before = run();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < 2 * C; ++c) qk.data[(b * T + T - 1) * 2 * C + c] += 1.0;  // q and k of the last token
    for (int64_t c = 0; c < C; ++c) v.data[(b * T + T - 1) * C + c] += 1.0;
  }
  const auto after = run();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T - 1; ++t)
      for (int64_t c = 0; c < C; ++c) EXPECT_EQ(after[(b * T + t) * C + c], before[(b * T + t) * C + c]);
}

// α = 0, β = 1, γ = 0: A = softmax, the standard attention on the same q, k, v.
TEST_F(OpFiniteDifferences, ShapedAttentionReducesToStandard) {
  for (auto [B, T, nh, hd] : {AttentionShape{1, 1, 1, 3}, {2, 7, 3, 2}, {2, 16, 2, 4}}) {
    const int64_t C = nh * hd;
    HostTensor qk({B, T, 2 * C}, &rng), v({B, T, C}, &rng), out({B, T, C}, nullptr), probs({B, nh, T, T}, nullptr);
    HostTensor alpha({nh}, nullptr), beta({nh}, nullptr), gamma({nh}, nullptr);
    for (auto& b : beta.data) b = 1;
    HostTensor qkv({B, T, 3 * C}, nullptr), ref({B, T, C}, nullptr), ref_probs({B, nh, T, T}, nullptr);
    for (int64_t n = 0; n < B * T; ++n) {
      for (int64_t c = 0; c < 2 * C; ++c) qkv.data[n * 3 * C + c] = qk.data[n * 2 * C + c];
      for (int64_t c = 0; c < C; ++c) qkv.data[n * 3 * C + 2 * C + c] = v.data[n * C + c];
    }
    be.shaped_attention_forward(out.t, probs.t, qk.t, v.t, alpha.t, beta.t, gamma.t, static_cast<int>(nh));
    be.attention_forward(ref.t, ref_probs.t, qkv.t, static_cast<int>(nh));
    for (size_t i = 0; i < out.data.size(); ++i) EXPECT_NEAR(out.data[i], ref.data[i], 1e-12);
    for (size_t i = 0; i < probs.data.size(); ++i) EXPECT_NEAR(probs.data[i], ref_probs.data[i], 1e-12);
  }
}

// ---- scalar gains, tanh, clamp

TEST_F(OpFiniteDifferences, ScaledAccumulate) {
  for (int64_t N : {1, 37, 4096 + 333}) {  // the last spans two reduction blocks
    const std::string tag = "scaled_accumulate N=" + std::to_string(N);
    HostTensor x({N}, &rng), gain({1}, &rng), base({N}, &rng), out({N}, nullptr), dout({N}, &rng);
    HostTensor dx({N}, nullptr), dgain({1}, nullptr);
    auto J = [&] {
      out.data = base.data;  // out += g·x over an existing value
      out.t.data = out.data.data();
      be.scaled_accumulate(out.t, x.t, gain.t);
      return dot(out.data, dout.data);
    };
    J();
    for (int64_t i = 0; i < N; ++i) EXPECT_DOUBLE_EQ(out.data[i], base.data[i] + gain.data[0] * x.data[i]);
    be.scaled_accumulate_backward(dx.t, dgain.t, dout.t, x.t, gain.t);
    if (N < 100) expect_grad(tag + " dx", x.data, dx.data, J);
    expect_grad(tag + " dgain", gain.data, dgain.data, J);
    const auto dx1 = dx.data, dg1 = dgain.data;
    be.scaled_accumulate_backward(dx.t, dgain.t, dout.t, x.t, gain.t);
    expect_doubled(tag + " dx", dx1, dx.data);
    expect_doubled(tag + " dgain", dg1, dgain.data);
    // Either gradient may be empty.
    HostTensor dx_only({N}, nullptr), dg_only({1}, nullptr);
    be.scaled_accumulate_backward(dx_only.t, Tensor{}, dout.t, x.t, gain.t);
    be.scaled_accumulate_backward(Tensor{}, dg_only.t, dout.t, x.t, gain.t);
    EXPECT_EQ(dx_only.data, dx1);
    EXPECT_EQ(dg_only.data, dg1);
  }
}

TEST_F(OpFiniteDifferences, Tanh) {
  const int64_t N = 41;
  HostTensor x({N}, &rng, 1.5), out({N}, nullptr), dout({N}, &rng), dx({N}, nullptr);
  auto J = [&] {
    be.tanh_forward(out.t, x.t);
    return dot(out.data, dout.data);
  };
  J();
  for (int64_t i = 0; i < N; ++i) EXPECT_DOUBLE_EQ(out.data[i], std::tanh(x.data[i]));
  be.tanh_backward(dx.t, out.t, dout.t);
  expect_grad("tanh dinp", x.data, dx.data, J);
  const auto dx1 = dx.data;
  J();  // the differences left out at a perturbed point
  be.tanh_backward(dx.t, out.t, dout.t);
  expect_doubled("tanh dinp", dx1, dx.data);
}

TEST_F(OpFiniteDifferences, Clamp) {
  const int64_t N = 43;
  const double limit = 0.8;
  HostTensor x({N}, &rng), out({N}, nullptr), dout({N}, &rng), dx({N}, nullptr);
  for (auto& v : x.data)  // away from the kinks at ±limit, where differences straddle them
    if (std::abs(std::abs(v) - limit) < 1e-3) v += 0.01;
  auto J = [&] {
    be.clamp_forward(out.t, x.t, limit);
    return dot(out.data, dout.data);
  };
  J();
  int inside = 0;
  for (int64_t i = 0; i < N; ++i) {
    EXPECT_EQ(out.data[i], std::min(std::max(x.data[i], -limit), limit));
    inside += std::abs(x.data[i]) <= limit;
  }
  EXPECT_GT(inside, 0);
  EXPECT_LT(inside, N);  // both sides exercised
  be.clamp_backward(dx.t, x.t, dout.t, limit);
  expect_grad("clamp dinp", x.data, dx.data, J);
  // At exactly ±limit the gradient passes.
  HostTensor e({2}, nullptr), eo({2}, nullptr), ed({2}, nullptr), edx({2}, nullptr);
  e.data = {limit, -limit}, ed.data = {1.5, -2.5};
  e.t.data = e.data.data(), ed.t.data = ed.data.data();
  be.clamp_backward(edx.t, e.t, ed.t, limit);
  EXPECT_EQ(edx.data, ed.data);
}

// ---- AltUp

std::string altup_tag(const char* op, int64_t K, bool per_token, int64_t N, int64_t C) {
  return std::string(op) + " K=" + std::to_string(K) + (per_token ? " per-token" : " static") +
         " N=" + std::to_string(N) + " C=" + std::to_string(C);
}

TEST_F(OpFiniteDifferences, AltUpPredict) {
  for (int64_t K : {1, 2, 3})
    for (bool per_token : {false, true})
      for (auto [N, C] : {std::pair<int64_t, int64_t>{1, 1}, {5, 3}, {37, 2}}) {  // 37 rows: two token blocks
        const std::string tag = altup_tag("altup predict", K, per_token, N, C);
        const Shape ps = per_token ? Shape{N, K, K} : Shape{K, K};
        HostTensor x({K, N, C}, &rng), p(ps, &rng), out({K, N, C}, nullptr), dout({K, N, C}, &rng);
        HostTensor dx({K, N, C}, nullptr), dp(ps, nullptr);
        auto J = [&] {
          be.altup_predict_forward(out.t, x.t, p.t);
          return dot(out.data, dout.data);
        };
        J();
        be.altup_predict_backward(dx.t, dp.t, dout.t, x.t, p.t);
        expect_grad(tag + " dx", x.data, dx.data, J);
        expect_grad(tag + " dp", p.data, dp.data, J);
        const auto dx1 = dx.data, dp1 = dp.data;
        be.altup_predict_backward(dx.t, dp.t, dout.t, x.t, p.t);
        expect_doubled(tag + " dx", dx1, dx.data);
        expect_doubled(tag + " dp", dp1, dp.data);
        HostTensor dx_only({K, N, C}, nullptr), dp_only(ps, nullptr);
        be.altup_predict_backward(dx_only.t, Tensor{}, dout.t, x.t, p.t);
        be.altup_predict_backward(Tensor{}, dp_only.t, dout.t, x.t, p.t);
        EXPECT_EQ(dx_only.data, dx1);
        EXPECT_EQ(dp_only.data, dp1);
      }
}

TEST_F(OpFiniteDifferences, AltUpPredictIdentity) {
  const int64_t K = 3, N = 9, C = 5;
  HostTensor x({K, N, C}, &rng), p({K, K}, nullptr), out({K, N, C}, nullptr);
  for (int64_t i = 0; i < K; ++i) p.data[i * K + i] = 1;
  be.altup_predict_forward(out.t, x.t, p.t);
  EXPECT_TRUE(same_bits(out.data, x.data));
}

TEST_F(OpFiniteDifferences, AltUpCorrect) {
  for (int64_t K : {1, 2, 3})
    for (bool per_token : {false, true})
      for (auto [N, C] : {std::pair<int64_t, int64_t>{1, 1}, {5, 3}, {37, 2}})
        for (int active = 0; active < K; active += static_cast<int>(std::max<int64_t>(1, K - 1))) {  // first, last
          const std::string tag = altup_tag("altup correct", K, per_token, N, C) + " a=" + std::to_string(active);
          const Shape gs = per_token ? Shape{N, K} : Shape{K};
          HostTensor pred({K, N, C}, &rng), y({N, C}, &rng), g(gs, &rng), out({K, N, C}, nullptr),
              dout({K, N, C}, &rng);
          HostTensor dpred({K, N, C}, nullptr), dy({N, C}, nullptr), dg(gs, nullptr);
          auto J = [&] {
            be.altup_correct_forward(out.t, pred.t, y.t, g.t, active);
            return dot(out.data, dout.data);
          };
          J();
          be.altup_correct_backward(dpred.t, dy.t, dg.t, dout.t, pred.t, y.t, g.t, active);
          expect_grad(tag + " dpred", pred.data, dpred.data, J);
          expect_grad(tag + " dy", y.data, dy.data, J);
          expect_grad(tag + " dg", g.data, dg.data, J);
          const auto dp1 = dpred.data, dy1 = dy.data, dg1 = dg.data;
          be.altup_correct_backward(dpred.t, dy.t, dg.t, dout.t, pred.t, y.t, g.t, active);
          expect_doubled(tag + " dpred", dp1, dpred.data);
          expect_doubled(tag + " dy", dy1, dy.data);
          expect_doubled(tag + " dg", dg1, dg.data);
          HostTensor dp_only({K, N, C}, nullptr), dy_only({N, C}, nullptr), dg_only(gs, nullptr);
          be.altup_correct_backward(dp_only.t, Tensor{}, Tensor{}, dout.t, pred.t, y.t, g.t, active);
          be.altup_correct_backward(Tensor{}, dy_only.t, Tensor{}, dout.t, pred.t, y.t, g.t, active);
          be.altup_correct_backward(Tensor{}, Tensor{}, dg_only.t, dout.t, pred.t, y.t, g.t, active);
          EXPECT_EQ(dp_only.data, dp1);
          EXPECT_EQ(dy_only.data, dy1);
          EXPECT_EQ(dg_only.data, dg1);
        }
}

// K = 1, g = 1: (pred − 1·pred) + 1·y = y, bit for bit, static and per token, float and double.
template <class H>
void expect_correct_returns_y(Backend& be, Rng& rng) {
  const int64_t N = 11, C = 7;
  for (bool per_token : {false, true}) {
    H pred({1, N, C}, &rng, 3.0), y({N, C}, &rng), g(per_token ? Shape{N, 1} : Shape{1}, nullptr),
        out({1, N, C}, nullptr);
    for (auto& v : g.data) v = 1;
    be.altup_correct_forward(out.t, pred.t, y.t, g.t, 0);
    EXPECT_TRUE(same_bits(out.data, y.data)) << (per_token ? "per token" : "static");
  }
}

TEST_F(OpFiniteDifferences, AltUpCorrectK1ReturnsY) {
  expect_correct_returns_y<HostTensor>(be, rng);
  expect_correct_returns_y<FloatTensor>(be, rng);
}

// ---- determinism: float ops at 1 and at 2 threads give the same bits

class ThreadCountDeterminism : public OpFiniteDifferences {
 protected:
  // Runs `op` at 1 and at 2 threads and compares the bits of every tensor in `outputs` (which
  // `op` must write from scratch: it zeroes its gradients itself).
  void expect_same_bits(const char* what, const std::function<void()>& op, std::vector<FloatTensor*> outputs) {
    be.set_num_threads(1);
    op();
    std::vector<std::vector<float>> one;
    for (auto* o : outputs) one.push_back(o->data);
    be.set_num_threads(2);
    op();
    for (size_t k = 0; k < outputs.size(); ++k)
      EXPECT_TRUE(same_bits(one[k], outputs[k]->data)) << what << ": output " << k << " differs";
  }
  static void zero(std::initializer_list<FloatTensor*> ts) {
    for (auto* t : ts) std::fill(t->data.begin(), t->data.end(), 0.0f);
  }
};

TEST_F(ThreadCountDeterminism, RmsNorm) {
  const int64_t N = 3001, C = 200;  // several column blocks of the weight gradient
  FloatTensor x({N, C}, &rng), w({C}, &rng), out({N, C}, nullptr), rms({N}, nullptr), dout({N, C}, &rng);
  FloatTensor dx({N, C}, nullptr), dw({C}, nullptr);
  expect_same_bits("rmsnorm",
                   [&] {
                     zero({&dx, &dw});
                     be.rmsnorm_forward(out.t, rms.t, x.t, w.t, 1e-5);
                     be.rmsnorm_backward(dx.t, dw.t, dout.t, x.t, w.t, rms.t, 1e-5);
                   },
                   {&out, &rms, &dx, &dw});
}

TEST_F(ThreadCountDeterminism, Attention) {
  const int64_t B = 3, T = 37, nh = 3, hd = 8, C = nh * hd;
  FloatTensor qk({B, T, 2 * C}, &rng), v({B, T, C}, &rng), out({B, T, C}, nullptr), probs({B, nh, T, T}, nullptr);
  FloatTensor alpha({nh}, &rng), beta({nh}, &rng), gamma({nh}, &rng), dout({B, T, C}, &rng);
  FloatTensor dqk({B, T, 2 * C}, nullptr), dv({B, T, C}, nullptr), dalpha({nh}, nullptr), dbeta({nh}, nullptr),
      dgamma({nh}, nullptr);
  expect_same_bits("shaped attention",
                   [&] {
                     zero({&dqk, &dv, &dalpha, &dbeta, &dgamma});
                     be.shaped_attention_forward(out.t, probs.t, qk.t, v.t, alpha.t, beta.t, gamma.t,
                                                 static_cast<int>(nh));
                     be.shaped_attention_backward(dqk.t, dv.t, dalpha.t, dbeta.t, dgamma.t, dout.t, qk.t, v.t, probs.t,
                                                  alpha.t, beta.t, gamma.t, static_cast<int>(nh));
                   },
                   {&out, &dqk, &dv, &dalpha, &dbeta, &dgamma, &probs});
  FloatTensor qkv({B, T, 3 * C}, &rng), sout({B, T, C}, nullptr), sprobs({B, nh, T, T}, nullptr),
      dqkv({B, T, 3 * C}, nullptr);
  expect_same_bits("standard attention",
                   [&] {
                     zero({&dqkv});
                     be.attention_forward(sout.t, sprobs.t, qkv.t, static_cast<int>(nh));
                     be.attention_backward(dqkv.t, dout.t, qkv.t, sprobs.t, static_cast<int>(nh));
                   },
                   {&sout, &dqkv, &sprobs});
}

TEST_F(ThreadCountDeterminism, GainsTanhClamp) {
  const int64_t N = 5000 * 7;  // nine element blocks
  FloatTensor x({N}, &rng), gain({1}, &rng), out({N}, nullptr), dout({N}, &rng), dx({N}, nullptr), dgain({1}, nullptr);
  expect_same_bits("scaled_accumulate",
                   [&] {
                     zero({&out, &dx, &dgain});
                     be.scaled_accumulate(out.t, x.t, gain.t);
                     be.scaled_accumulate_backward(dx.t, dgain.t, dout.t, x.t, gain.t);
                   },
                   {&out, &dx, &dgain});
  expect_same_bits("tanh",
                   [&] {
                     zero({&dx});
                     be.tanh_forward(out.t, x.t);
                     be.tanh_backward(dx.t, out.t, dout.t);
                   },
                   {&out, &dx});
  expect_same_bits("clamp",
                   [&] {
                     zero({&dx});
                     be.clamp_forward(out.t, x.t, 0.7);
                     be.clamp_backward(dx.t, x.t, dout.t, 0.7);
                   },
                   {&out, &dx});
}

TEST_F(ThreadCountDeterminism, AltUp) {
  const int64_t K = 3, N = 3001, C = 13;
  for (bool per_token : {false, true}) {
    const Shape ps = per_token ? Shape{N, K, K} : Shape{K, K}, gs = per_token ? Shape{N, K} : Shape{K};
    FloatTensor x({K, N, C}, &rng), p(ps, &rng), pred({K, N, C}, nullptr), dout({K, N, C}, &rng);
    FloatTensor y({N, C}, &rng), g(gs, &rng), out({K, N, C}, nullptr);
    FloatTensor dx({K, N, C}, nullptr), dp(ps, nullptr), dpred({K, N, C}, nullptr), dy({N, C}, nullptr),
        dg(gs, nullptr);
    expect_same_bits(per_token ? "altup per token" : "altup static",
                     [&] {
                       zero({&dx, &dp, &dpred, &dy, &dg});
                       be.altup_predict_forward(pred.t, x.t, p.t);
                       be.altup_correct_forward(out.t, pred.t, y.t, g.t, 1);
                       be.altup_correct_backward(dpred.t, dy.t, dg.t, dout.t, pred.t, y.t, g.t, 1);
                       be.altup_predict_backward(dx.t, dp.t, dpred.t, x.t, p.t);
                     },
                     {&pred, &out, &dpred, &dy, &dg, &dx, &dp});
  }
}

}  // namespace
}  // namespace mom
