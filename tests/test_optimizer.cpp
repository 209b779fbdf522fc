// AdamW's weight-decay grouping and the schedule, checked directly: with all-zero gradients
// only decoupled decay moves a parameter, by exactly p·(1 − lr·wd), and only where the spec
// says it decays (matrices; embeddings by option; never biases or LayerNorms).
#include <gtest/gtest.h>

#include <cmath>

#include "core/gpt2.h"
#include "core/optimizer.h"

namespace mom {
namespace {

void expect_decay_grouping(bool decay_embeddings) {
  Gpt2Config cfg;
  cfg.vocab_size = 50, cfg.n_ctx = 8, cfg.n_layer = 2, cfg.n_head = 2, cfg.n_embd = 8;
  cfg.decay_embeddings = decay_embeddings;
  Gpt2 m(cfg, backend_for(Device::CPU));
  m.init_weights(1);
  ParameterStore& P = m.params();
  std::vector<std::vector<float>> before;
  for (size_t i = 0; i < P.size(); ++i) {
    const float* p = P.param(i).ptr<float>();
    before.emplace_back(p, p + P.param(i).numel());
  }
  P.zero_grads();
  const double lr = 0.1, wd = 0.5;
  AdamW opt(P, {0.9, 0.95, 1e-8, wd});
  opt.step(lr);
  for (size_t i = 0; i < P.size(); ++i) {
    const std::string& name = P.specs()[i].name;
    const bool matrix = name.find("_weight") != std::string::npos && name.find("ln") == std::string::npos;
    const bool embedding = name == "wte" || name == "wpe";
    const bool should_decay = matrix || (embedding && decay_embeddings);
    EXPECT_EQ(P.specs()[i].decay, should_decay) << name;
    const float* p = P.param(i).ptr<float>();
    const float factor = static_cast<float>(1.0 - lr * wd);
    for (int64_t k = 0; k < P.param(i).numel(); ++k)
      ASSERT_EQ(p[k], should_decay ? before[i][k] * factor : before[i][k]) << name << "[" << k << "]";
  }
}

TEST(AdamW, DecayOnlyWhereTheSpecSays) {
  expect_decay_grouping(false);
  expect_decay_grouping(true);
}

TEST(LrSchedule, WarmupThenCosineToMin) {
  const LrSchedule s{1e-3, 1e-4, 10, 110};
  EXPECT_DOUBLE_EQ(s.at(0), 1e-4);            // (0+1)/10 of the peak
  EXPECT_DOUBLE_EQ(s.at(9), 1e-3);            // end of warmup
  EXPECT_NEAR(s.at(60), 0.5 * (1e-3 + 1e-4), 1e-12);  // halfway through the cosine
  EXPECT_NEAR(s.at(110), 1e-4, 1e-15);        // floor
}

TEST(ClipGradNorm, ScalesOnlyAboveTheThreshold) {
  Gpt2Config cfg;
  cfg.vocab_size = 10, cfg.n_ctx = 4, cfg.n_layer = 1, cfg.n_head = 1, cfg.n_embd = 4;
  Gpt2 m(cfg, backend_for(Device::CPU));
  ParameterStore& P = m.params();
  float* g = P.flat_grads().ptr<float>();
  for (int64_t i = 0; i < P.num_elements(); ++i) g[i] = 0;
  g[0] = 3, g[1] = 4;  // norm 5
  EXPECT_DOUBLE_EQ(clip_grad_norm(P, 10.0), 5.0);
  EXPECT_EQ(g[0], 3.f);
  EXPECT_DOUBLE_EQ(clip_grad_norm(P, 1.0), 5.0);
  EXPECT_NEAR(std::sqrt(g[0] * g[0] + g[1] * g[1]), 1.0, 1e-6);
}

}  // namespace
}  // namespace mom
