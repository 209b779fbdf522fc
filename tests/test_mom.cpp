// MoM chunks and MoE layers in one process: gradients against finite differences (f64),
// the exact special cases of MODELS.md §2-3, the edge cases users hit (empty modules, one hot
// module, all-SKIP tokens, capacity drops), two-stage conversion and determinism.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/optimizer.h"
#include "core/rng.h"
#include "core/two_stage.h"
#include "io/config.h"

namespace mom {
namespace {

io::RunConfig config(const std::string& stack, std::vector<std::string> extra = {}) {
  std::vector<std::string> o = {"model.vocab_size=61", "model.n_ctx=16", "model.n_embd=16", "model.n_head=2", "train.seq_len=8",
                                "model.stack=" + stack};
  o.insert(o.end(), extra.begin(), extra.end());
  return io::load_config("", o);
}

// The dense GPT-2 with the same width, heads, context and vocabulary as config()'s models.
io::RunConfig dense_config(int layers) {
  return io::load_config("", {"model.vocab_size=61", "model.n_ctx=16", "model.n_embd=16", "model.n_head=2",
                              "model.n_layer=" + std::to_string(layers), "train.seq_len=8"});
}

void perturb(Gpt2& m, uint64_t seed, double scale) {
  Rng rng(seed);
  for (size_t i = 0; i < m.params().size(); ++i) {
    const Tensor& p = m.params().param(i);
    if (p.dtype == DType::F64) {
      for (int64_t k = 0; k < p.numel(); ++k) p.ptr<double>()[k] += scale * rng.normal();
    } else {
      for (int64_t k = 0; k < p.numel(); ++k) p.ptr<float>()[k] += static_cast<float>(scale * rng.normal());
    }
  }
}

struct Batch {
  int B = 2, T = 8;
  std::vector<int32_t> x, y;
  Batch(int vocab, uint64_t seed) : x(B * T), y(B * T) {
    Rng rng(seed);
    for (auto& t : x) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
    for (auto& t : y) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
  }
};

// Objective = mean cross-entropy + aux losses; every parameter tensor, sampled elements.
void check_model_gradients(const std::string& stack, uint64_t seed) {
  const io::RunConfig cfg = config(stack);
  Gpt2 m(cfg.model, backend_for(Device::CPU), DType::F64);
  m.init_weights(seed);
  perturb(m, seed + 1, 0.3);
  const Batch b(cfg.model.vocab_size, seed + 2);
  auto objective = [&] { return m.forward(b.x.data(), b.y.data(), b.B, b.T) + m.aux_loss(); };
  m.params().zero_grads();
  m.forward_backward(b.x.data(), b.y.data(), b.B, b.T, 1.0 / (b.B * b.T));
  Rng pick(seed + 3);
  const double h = 1e-5;
  for (size_t i = 0; i < m.params().size(); ++i) {
    double* p = m.params().param(i).ptr<double>();
    const double* g = m.params().grad(i).ptr<double>();
    const int64_t n = m.params().param(i).numel();
    for (int s = 0; s < 4; ++s) {
      const int64_t k = static_cast<int64_t>(pick.below(static_cast<uint64_t>(n)));
      const double saved = p[k];
      p[k] = saved + h;
      const double jp = objective();
      p[k] = saved - h;
      const double jm = objective();
      p[k] = saved;
      const double numeric = (jp - jm) / (2 * h);
      EXPECT_NEAR(g[k], numeric, 1e-6 * std::max(1.0, std::abs(numeric)))
          << m.params().specs()[i].name << "[" << k << "] in " << stack;
    }
  }
}

TEST(MoMGradients, MlpRouterSkipTopTwoWeightedQkv) {
  check_model_gradients(R"([{"type":"dense","count":1},{"type":"mom","attn_modules":3,"ffn_modules":2,"skip":true,
      "steps":2,"top_k":2,"router":"mlp","router_dim":8,"temperature":0.5,"weighted_qkv":true,"anchor":true,
      "balance_coef":0.05}])", 11);
}

TEST(MoMGradients, GruRouterCarriedAcrossSteps) {
  check_model_gradients(R"([{"type":"mom","attn_modules":2,"ffn_modules":3,"skip":false,"steps":3,"top_k":1,
      "router":"gru","router_dim":8,"temperature":1.0,"balance_coef":0.02}])", 21);
}

TEST(MoMGradients, LinearRouterTopTwo) {
  check_model_gradients(R"([{"type":"mom","attn_modules":2,"ffn_modules":2,"skip":true,"steps":2,"top_k":2,
      "router":"linear","temperature":0.2}])", 31);
}

TEST(MoEGradients, SoftmaxCapacityAndSigmoidSharedExpert) {
  check_model_gradients(R"([{"type":"moe","experts":4,"top_k":2,"gate":"softmax","renormalise":true,
      "aux_coef":0.05,"z_coef":0.01,"capacity_factor":1.0},{"type":"moe","experts":3,"top_k":1,"gate":"sigmoid",
      "renormalise":false,"shared_expert":true,"aux_coef":0.01}])", 41);
}

// ---- exact special cases

template <class F> void for_each_param(const Gpt2& m, F f) {
  for (size_t i = 0; i < m.params().size(); ++i) f(m.params().specs()[i].name, m.params().param(i), m.params().grad(i));
}

// A perturbed dense GPT-2 of `layers` blocks and a routed model with `stack`, initialised from
// it by two-stage init (seeds: dense seed, perturbation seed+1, routed seed+2, batch seed+3).
// With forced routing and matching counts the two must compute the same function.
struct DenseAndConverted {
  io::RunConfig dense_cfg, routed_cfg;
  Gpt2 dense, routed;
  Batch batch;
  DenseAndConverted(int layers, const std::string& stack, uint64_t seed)
      : dense_cfg(dense_config(layers)),
        routed_cfg(config(stack)),
        dense(dense_cfg.model, backend_for(Device::CPU)),
        routed(routed_cfg.model, backend_for(Device::CPU)),
        batch(61, seed + 3) {
    dense.init_weights(seed);
    perturb(dense, seed + 1, 0.05);
    routed.init_weights(seed + 2);
    init_from_dense(dense, routed);
  }
  // The two models' logits on the batch are the same bits.
  bool same_logits() {
    std::vector<double> la, lb;
    dense.logits(batch.x.data(), batch.B, batch.T, la);
    routed.logits(batch.x.data(), batch.B, batch.T, lb);
    return la == lb;
  }
};

TEST(MoMSpecialCases, DenseGpt2EqualsForcedChunk) {
  DenseAndConverted pair(3, R"([{"type":"mom","attn_modules":3,"ffn_modules":3,"skip":false,"steps":3,
      "top_k":1,"router":"forced"}])", 5);
  Gpt2 &dense = pair.dense, &chunk = pair.routed;
  const Batch& b = pair.batch;
  ASSERT_TRUE(pair.same_logits()) << "a forced chunk with NA=NF=H=L must be the dense model, bit for bit";
  dense.params().zero_grads();
  chunk.params().zero_grads();
  const double loss_a = dense.forward_backward(b.x.data(), b.y.data(), b.B, b.T, 1.0 / 16);
  const double loss_b = chunk.forward_backward(b.x.data(), b.y.data(), b.B, b.T, 1.0 / 16);
  EXPECT_EQ(loss_a, loss_b);
  // Backward reaches the same gradients through a different (fixed) accumulation path
  // (dispatched rows, then a scatter into the residual gradient), so they agree to float
  // rounding rather than bit for bit.
  auto expect_close = [](const Tensor& a, const Tensor& b, const char* what) {
    ASSERT_EQ(a.numel(), b.numel()) << what;
    float scale = 0, worst = 0;
    for (int64_t i = 0; i < a.numel(); ++i)
      scale = std::max(scale, std::abs(a.ptr<float>()[i])), worst = std::max(worst, std::abs(a.ptr<float>()[i] - b.ptr<float>()[i]));
    EXPECT_LE(worst, 1e-6f * scale) << what;
  };
  const char* pairs[][2] = {{"wte", "wte"},
                            {"wpe", "wpe"},
                            {"ln_f_weight", "ln_f_weight"},
                            {"blocks/ln1_weight", "chunks/0/attn/ln_weight"},
                            {"blocks/attn_qkv_weight", "chunks/0/attn/qkv_weight"},
                            {"blocks/attn_proj_bias", "chunks/0/attn/proj_bias"},
                            {"blocks/ln2_bias", "chunks/0/ffn/ln_bias"},
                            {"blocks/mlp_fc_weight", "chunks/0/ffn/fc_weight"},
                            {"blocks/mlp_proj_weight", "chunks/0/ffn/proj_weight"}};
  for (auto& p : pairs) expect_close(dense.params().grad(p[0]), chunk.params().grad(p[1]), p[0]);
}

TEST(MoMSpecialCases, MoEWithOneExpertEqualsDenseMlp) {
  DenseAndConverted pair(1, R"([{"type":"moe","experts":1,"top_k":1,"aux_coef":0,"z_coef":0}])", 5);
  EXPECT_TRUE(pair.same_logits());
}

TEST(Dispatch, PermuteThenUnpermuteRestoresInputAndGradient) {
  Backend& be = backend_for(Device::CPU);
  const int64_t N = 7, D = 5, K = 2;
  Rng rng(3);
  std::vector<float> x(N * D), dy(N * D);
  for (auto& v : x) v = static_cast<float>(rng.normal());
  for (auto& v : dy) v = static_cast<float>(rng.normal());
  // A random selection of 2 of 3 modules per token, planned and dispatched.
  router::Selection sel;
  sel.N = N, sel.K = K, sel.classes = 3;
  for (int64_t t = 0; t < N; ++t) {
    const int32_t a = static_cast<int32_t>(rng.below(3)), b = (a + 1 + static_cast<int32_t>(rng.below(2))) % 3;
    sel.choice.insert(sel.choice.end(), {a, b});
    sel.weight.insert(sel.weight.end(), {1.0, 1.0});
    sel.probs.insert(sel.probs.end(), {0.3, 0.3, 0.4});
  }
  const router::DispatchPlan plan = router::make_plan(sel, 3, {});
  ASSERT_EQ(plan.M(), N * K);
  std::vector<float> buf(plan.M() * D), back(N * D, 0.f), dbuf(plan.M() * D, 0.f), dx(N * D, 0.f);
  auto T = [](void* p, Shape s, DType d = DType::F32) { return Tensor{p, s, d, Device::CPU}; };
  std::vector<int32_t> rows = plan.rows, slot = plan.slot;
  be.gather_rows(T(buf.data(), {plan.M(), D}), T(x.data(), {N, D}), T(rows.data(), {plan.M()}, DType::I32));
  // Unpermute: each token's K copies summed, divided by K, restores x exactly (K = 2).
  be.combine_rows(T(back.data(), {N, D}), T(buf.data(), {plan.M(), D}), T(slot.data(), {N, K}, DType::I32), Tensor{});
  for (int64_t i = 0; i < N * D; ++i) EXPECT_EQ(back[i] / 2, x[i]);
  // And the gradient: scatter dy to the rows, then gather back = K·dy.
  be.combine_rows_backward(T(dbuf.data(), {plan.M(), D}), Tensor{}, T(dy.data(), {N, D}), T(buf.data(), {plan.M(), D}),
                           T(slot.data(), {N, K}, DType::I32), Tensor{});
  be.combine_rows(T(dx.data(), {N, D}), T(dbuf.data(), {plan.M(), D}), T(slot.data(), {N, K}, DType::I32), Tensor{});
  for (int64_t i = 0; i < N * D; ++i) EXPECT_EQ(dx[i] / 2, dy[i]);
}

// ---- edge cases

// Biases a learned router's output layer so that it always picks `cls`.
void force_router_bias(Gpt2& m, const std::string& bias_name, int cls, int classes) {
  float* b = m.params().param(bias_name).ptr<float>();
  for (int c = 0; c < classes; ++c) b[c] = c == cls ? 50.f : -50.f;
}

bool all_zero(const Tensor& t) {
  const float* p = t.ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i)
    if (p[i] != 0.f) return false;
  return true;
}

bool all_finite(const Tensor& t) {
  const float* p = t.ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(p[i])) return false;
  return true;
}

TEST(MoMEdgeCases, EveryTokenToOneModuleLeavesOthersExactlyZero) {
  const io::RunConfig cfg = config(R"([{"type":"mom","attn_modules":3,"ffn_modules":3,"skip":false,"steps":2,
      "top_k":1,"router":"mlp","router_dim":8,"balance_coef":0.01}])");
  Gpt2 m(cfg.model, backend_for(Device::CPU));
  m.init_weights(3);
  force_router_bias(m, "chunks/0/router_attn/b2", 1, 3);
  force_router_bias(m, "chunks/0/router_ffn/b2", 2, 3);
  AdamW opt(m.params(), {});
  const Batch b(61, 4);
  for (int step = 0; step < 3; ++step) {
    m.params().zero_grads();
    const double loss = m.forward_backward(b.x.data(), b.y.data(), b.B, b.T, 1.0 / 16);
    ASSERT_TRUE(std::isfinite(loss));
    const Tensor qkv = m.params().grad("chunks/0/attn/qkv_weight"), fc = m.params().grad("chunks/0/ffn/fc_weight");
    EXPECT_TRUE(all_zero(qkv[0]) && all_zero(qkv[2])) << "attention modules 0 and 2 got no token";
    EXPECT_FALSE(all_zero(qkv[1]));
    EXPECT_TRUE(all_zero(fc[0]) && all_zero(fc[1])) << "FFN modules 0 and 1 got no token";
    EXPECT_FALSE(all_zero(fc[2]));
    opt.step(1e-3);
    for (size_t i = 0; i < m.params().size(); ++i) {
      EXPECT_TRUE(all_finite(m.params().param(i))) << m.params().specs()[i].name;
      EXPECT_TRUE(all_finite(opt.m(i)) && all_finite(opt.v(i))) << m.params().specs()[i].name;
    }
  }
  const auto stats = m.routing_stats();
  EXPECT_EQ(stats[0]["steps"][0]["ffn"]["load"][2].get<int64_t>(), 16);
}

TEST(MoMEdgeCases, AllSkipTokensPassThroughUnchanged) {
  const io::RunConfig cfg = config(R"([{"type":"dense","count":1},{"type":"mom","attn_modules":2,"ffn_modules":2,
      "skip":true,"steps":2,"top_k":1,"router":"linear"}])");
  Gpt2 m(cfg.model, backend_for(Device::CPU));
  m.init_weights(3);
  force_router_bias(m, "chunks/0/router_attn/b", 2, 3);  // class 2 = SKIP
  force_router_bias(m, "chunks/0/router_ffn/b", 2, 3);
  // The same model without the chunk: identical logits, since SKIP adds nothing.
  const io::RunConfig dense_cfg = dense_config(1);
  Gpt2 d(dense_cfg.model, backend_for(Device::CPU));
  for (const char* name : {"wte", "wpe", "ln_f_weight", "ln_f_bias"}) d.backend().copy(d.params().param(name), m.params().param(name));
  for (size_t i = 0; i < d.params().size(); ++i) {
    const std::string& n = d.params().specs()[i].name;
    if (n.rfind("blocks/", 0) == 0) d.backend().copy(d.params().param(i), m.params().param(n));
  }
  const Batch b(61, 5);
  std::vector<double> la, lb;
  m.logits(b.x.data(), b.B, b.T, la);
  d.logits(b.x.data(), b.B, b.T, lb);
  EXPECT_EQ(la, lb);
  m.params().zero_grads();
  m.forward_backward(b.x.data(), b.y.data(), b.B, b.T, 1.0 / 16);
  for (const char* pool : {"chunks/0/attn/qkv_weight", "chunks/0/ffn/fc_weight", "chunks/0/attn/ln_weight"})
    EXPECT_TRUE(all_zero(m.params().grad(pool))) << pool;
  EXPECT_DOUBLE_EQ(m.routing_stats()[0]["steps"][1]["ffn"]["skip_rate"].get<double>(), 1.0);
}

TEST(MoEEdgeCases, CapacityOverflowDropsAndDroppedContributeNothing) {
  // Every token prefers expert 0 (K = 1); capacity factor 0.5 with 4 experts and 16 tokens
  // gives ceil(0.5·16·1/4) = 2 rows: 14 assignments are dropped, by position.
  const io::RunConfig cfg = config(R"([{"type":"moe","experts":4,"top_k":1,"capacity_factor":0.5,
      "drop_policy":"position","aux_coef":0,"z_coef":0}])");
  Gpt2 m(cfg.model, backend_for(Device::CPU));
  m.init_weights(3);
  float* gate = m.params().param("moe/0/router_ffn/w").ptr<float>();
  std::fill(gate, gate + m.params().param("moe/0/router_ffn/w").numel(), 0.f);
  // With a zero gate all experts tie; ties go to the lowest id, so all choose expert 0.
  const Batch b(61, 6);
  m.params().zero_grads();
  m.forward_backward(b.x.data(), b.y.data(), b.B, b.T, 1.0 / 16);
  const auto ffn = m.routing_stats()[0]["steps"][0]["ffn"];
  EXPECT_EQ(ffn["dropped"].get<int64_t>(), 14);
  EXPECT_EQ(ffn["load"][0].get<int64_t>(), 2);
  // Expert 0 computed exactly two rows: the first two tokens (position policy).
  const Tensor fc = m.params().grad("moe/0/ffn/fc_weight");
  EXPECT_FALSE(all_zero(fc[0]));
  EXPECT_TRUE(all_zero(fc[1]) && all_zero(fc[2]) && all_zero(fc[3]));
}

TEST(TwoStage, ConvertedMoMWithForcedRouterReproducesDenseLogits) {
  // Dense 6 layers -> bottom 1, chunk NA=NF=3 (H=3, forced) + anchor, top 1.
  DenseAndConverted pair(6, R"([{"type":"dense","count":1},{"type":"mom","attn_modules":3,"ffn_modules":3,
      "skip":false,"steps":3,"top_k":1,"router":"forced","anchor":true},{"type":"dense","count":1}])", 12);
  EXPECT_TRUE(pair.same_logits());
  const Gpt2& dense = pair.dense;
  // Counts that do not add up are refused with a message naming the stack.
  const io::RunConfig bad = config(R"([{"type":"mom","attn_modules":4,"ffn_modules":4,"steps":2,"top_k":1}])");
  Gpt2 wrong(bad.model, backend_for(Device::CPU));
  try {
    init_from_dense(dense, wrong);
    FAIL() << "expected a UserError";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("model.stack"), std::string::npos) << e.what();
  }
}

TEST(MoMDeterminism, SameSeedSameBits) {
  auto run = [] {
    const io::RunConfig cfg = config(R"([{"type":"mom","attn_modules":3,"ffn_modules":3,"skip":true,"steps":2,
        "top_k":2,"router":"gru","router_dim":8,"balance_coef":0.01},{"type":"moe","experts":3,"top_k":2}])");
    Gpt2 m(cfg.model, backend_for(Device::CPU));
    m.init_weights(77);
    AdamW opt(m.params(), {});
    const Batch b(61, 78);
    std::vector<double> losses;
    for (int s = 0; s < 4; ++s) {
      m.params().zero_grads();
      losses.push_back(m.forward_backward(b.x.data(), b.y.data(), b.B, b.T, 1.0 / 16) + m.aux_loss());
      clip_grad_norm(m.params(), 1.0);
      opt.step(3e-3);
    }
    return losses;
  };
  const auto a = run(), b = run();
  EXPECT_EQ(a, b);
  EXPECT_LT(a.back(), a.front());
}

TEST(MoMConfig, InvalidCombinationsNameTheKey) {
  auto expect_error = [](const std::string& stack, const std::string& key) {
    try {
      config(stack);
      FAIL() << "expected an error for " << stack;
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  };
  expect_error(R"([{"type":"mom","attn_modules":2,"ffn_modules":2,"skip":false,"top_k":3}])", "model.stack[0].top_k");
  expect_error(R"([{"type":"mom","router":"transformer"}])", "model.stack[0].router");
  expect_error(R"([{"type":"mom","steps":0}])", "model.stack[0].steps");
  expect_error(R"([{"type":"moe","experts":2,"top_k":3}])", "model.stack[0].top_k");
  expect_error(R"([{"type":"moe","gate":"relu"}])", "model.stack[0].gate");
  expect_error(R"([{"type":"moe","drop_policy":"random"}])", "random");
  expect_error(R"([{"type":"moe","capacity_factor":-1}])", "model.stack[0].capacity_factor");
  expect_error(R"([{"type":"dense","count":1},{"type":"mystery"}])", "model.stack[1].type");
  expect_error(R"([{"type":"mom","experts":4}])", "model.stack[0].experts");
  expect_error(R"([{"type":"mom","router":"forced","top_k":2}])", "model.stack[0].router");
}

}  // namespace
}  // namespace mom
