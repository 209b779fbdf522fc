// Whole-model test of routed models: our CPU GPT-2 with MoM chunks and MoE layers (forward,
// aux losses, backward, clipping, AdamW) against an independent PyTorch model
// (tests/ref/torch_mom.py, written from MODELS.md §2-3, float64).
//
// Why this way: the router, gating, dispatch plan and module kernels have their own tests;
// this one checks the assembled stage as the math defines it (which residual each router
// sees, the shared causal attention over per-token q/k/v sums, SKIP, weighted_qkv, the GRU
// state carried across steps, capacity drops, shared experts, anchors, aux losses averaged by
// stage kind, weight decay on router matrices). The torch side runs every module on every
// token and weights by a dense routing matrix, so it shares no dispatch logic with ours.
// As in tests/test_model_reference.cpp, the C++ side owns the inputs: it initialises, moves
// every parameter by noise (so routers are far from uniform and biases/gains visible), saves
// a normal checkpoint, draws the tokens and runs tests/ref/mom_reference.py once per config.
//
// Routing is discrete. A decision that is a near-tie could go either way in float32 and the
// whole comparison would then be meaningless, so each test first compares the decisions
// (per-class loads after capacity drops, drop counts) and prints the reference's smallest gap
// between the K-th and (K+1)-th probability; the seeds are chosen so that gap is far above
// float32 rounding.
//
// Tolerance (as in the dense test): max_i |ours_i − ref_i| ≤ 1e-4 · max_i |ref_i| per tensor.
// Where the reference gradient of a whole tensor, or of one module of a pool, is exactly zero
// (nobody chose that module), ours must be exactly zero too: an unused module that moves is a
// bug no tolerance should hide.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <ostream>
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
constexpr double kMinMargin = 1e-5;  // below this a routing decision could flip on rounding
constexpr int kSteps = 5;

struct Case {
  const char* name;
  const char* stack;  // model.stack as JSON
  uint64_t seed;  // chosen so every routing margin stays above 5e-5, before and during training
};

// (a) dense + MoM chunk with SKIP, top-2, mlp router, temperature, weighted qkv, an anchor;
// (b) MoM chunk with a GRU router over 3 steps, top-1, no SKIP;
// (c) two MoE layers: softmax top-2 with capacity drops and z-loss, then sigmoid top-1 without
//     renormalisation and with a shared expert;
// (d) both kinds mixed, so each kind's aux averages over its own count (two chunks, one MoE):
//     a linear-router chunk with top-1 and SKIP (tokens that skip a whole step, zero q/k/v),
//     an MoE layer dropping by lowest probability, a GRU chunk with SKIP, top-2 and an anchor.
const Case kCases[] = {
    {"DenseMomMlpSkipAnchor",
     R"([{"type":"dense","count":1},{"type":"mom","attn_modules":3,"ffn_modules":2,"skip":true,"top_k":2,"steps":2,)"
     R"("router":"mlp","router_dim":24,"temperature":0.5,"weighted_qkv":true,"anchor":true,"balance_coef":0.01}])",
     121},
    {"MomGru",
     R"([{"type":"mom","attn_modules":2,"ffn_modules":3,"skip":false,"top_k":1,"steps":3,"router":"gru",)"
     R"("router_dim":16,"temperature":1.0}])",
     202},
    {"TwoMoe",
     R"([{"type":"moe","experts":4,"top_k":2,"gate":"softmax","renormalise":true,"aux_coef":0.01,"z_coef":0.001,)"
     R"("capacity_factor":1.0,"drop_policy":"position"},)"
     R"({"type":"moe","experts":3,"top_k":1,"gate":"sigmoid","renormalise":false,"shared_expert":true,)"
     R"("capacity_factor":0.0}])",
     303},
    {"MixedKinds",
     R"([{"type":"mom","attn_modules":2,"ffn_modules":2,"skip":true,"top_k":1,"steps":2,"router":"linear",)"
     R"("temperature":2.0,"weighted_qkv":true,"balance_coef":0.02},)"
     R"({"type":"moe","experts":4,"top_k":2,"capacity_factor":0.75,"drop_policy":"probability"},)"
     R"({"type":"mom","attn_modules":2,"ffn_modules":3,"skip":true,"top_k":2,"steps":2,"router":"gru",)"
     R"("router_dim":8,"temperature":0.7,"anchor":true}])",
     131},
};

// Test names carry the case's name; this prints it in failure messages too.
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

struct Error {
  double max_abs_diff = 0, max_abs_ref = 0;
  double rel() const { return max_abs_ref > 0 ? max_abs_diff / max_abs_ref : max_abs_diff; }
};

template <class T>
Error compare(const T* ours, const float* ref, size_t n) {
  Error e;
  for (size_t i = 0; i < n; ++i) {
    e.max_abs_diff = std::max(e.max_abs_diff, std::abs(static_cast<double>(ours[i]) - ref[i]));
    e.max_abs_ref = std::max(e.max_abs_ref, std::abs(static_cast<double>(ref[i])));
  }
  return e;
}

Error scalar_error(double ours, double ref) { return {std::abs(ours - ref), std::abs(ref)}; }

// Prints the error for the log and checks the tolerance; returns the relative error.
double expect_close(const std::string& what, const Error& e) {
  std::printf("  %-36s rel %.2e (max|d| %.2e, max|ref| %.2e)\n", what.c_str(), e.rel(), e.max_abs_diff, e.max_abs_ref);
  EXPECT_LE(e.max_abs_diff, kRelTol * e.max_abs_ref)
      << what << ": max|ours-ref| = " << e.max_abs_diff << " exceeds " << kRelTol << " * max|ref| = " << e.max_abs_ref;
  return e.rel();
}

// One configuration's inputs and the reference's answers, made once and shared by its tests.
struct Reference {
  mom::io::RunConfig cfg;
  std::unique_ptr<mom::test::ScratchDir> dir;
  std::vector<int32_t> tokens, targets;
  nlohmann::json index;
  std::string error;  // set when the reference could not be produced

  int B() const { return cfg.train.batch_size; }
  int T() const { return cfg.train.seq_len; }

  std::vector<float> tensor(const std::string& file, const mom::Shape& shape) const {
    EXPECT_EQ(mom::Shape(index["shapes"][file].get<std::vector<int64_t>>()), shape) << file;
    const std::string bytes = mom::test::read_file(dir->path() / "ref" / file);
    std::vector<float> out(static_cast<size_t>(shape.numel()));
    EXPECT_EQ(bytes.size(), out.size() * sizeof(float)) << file;
    std::memcpy(out.data(), bytes.data(), std::min(bytes.size(), out.size() * sizeof(float)));
    return out;
  }
};

// The model both sides start from: our init, then noise on every element — large on the
// routers so their probabilities are far from uniform (clear top-K margins), moderate
// elsewhere so biases and gains are visibly not 0 and 1.
std::unique_ptr<mom::Gpt2> make_model(const Case& c, const mom::io::RunConfig& cfg) {
  auto m = std::make_unique<mom::Gpt2>(cfg.model, mom::backend_for(mom::Device::CPU));
  m->init_weights(c.seed);
  mom::Rng rng(c.seed + 1);
  mom::ParameterStore& ps = m->params();
  for (size_t i = 0; i < ps.size(); ++i) {
    const bool router = ps.specs()[i].name.find("/router_") != std::string::npos;
    const double std_ = router ? 0.3 : 0.1;
    float* v = ps.param(i).ptr<float>();
    for (int64_t j = 0; j < ps.param(i).numel(); ++j) v[j] += static_cast<float>(std_ * rng.normal());
  }
  return m;
}

const Reference& reference_for(const Case& c) {
  static std::map<std::string, Reference> cache;
  auto [it, fresh] = cache.try_emplace(c.name);
  Reference& r = it->second;
  if (!fresh) return r;
  r.cfg = mom::io::load_config(
      "", {std::string("model.stack=") + c.stack, "model.vocab_size=300", "model.n_ctx=32", "model.n_head=4",
           "model.n_embd=32", "train.batch_size=2", "train.seq_len=16", "train.lr=1e-3", "train.beta1=0.9",
           "train.beta2=0.95", "train.eps=1e-8", "train.weight_decay=0.1", "train.grad_clip=1.0"});
  r.dir = std::make_unique<mom::test::ScratchDir>(std::string("mom-reference-") + c.name);
  mom::Rng rng(c.seed + 2);
  const size_t n = static_cast<size_t>(r.B()) * r.T();
  r.tokens.resize(n);
  r.targets.resize(n);
  for (auto* v : {&r.tokens, &r.targets})
    for (auto& t : *v) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(r.cfg.model.vocab_size)));
  auto bytes = [](const std::vector<int32_t>& v) {
    return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(int32_t));
  };
  mom::test::write_file(r.dir->path() / "tokens.i32", bytes(r.tokens));
  mom::test::write_file(r.dir->path() / "targets.i32", bytes(r.targets));
  mom::save_checkpoint(r.dir->path() / "weights.h5", *make_model(c, r.cfg), nullptr, mom::TrainState{}, r.cfg.json, true);

  const std::string cmd = shell_quote(mom::test::reference_python()) + " " +
                          shell_quote(mom::test::source_dir() + "/tests/ref/mom_reference.py") + " " +
                          shell_quote(*r.dir / "weights.h5") + " " + shell_quote(*r.dir / "tokens.i32") + " " +
                          shell_quote(*r.dir / "targets.i32") + " " + std::to_string(r.B()) + " " +
                          std::to_string(r.T()) + " " + shell_quote(*r.dir / "ref") + " --steps " + std::to_string(kSteps);
  const auto run = mom::test::run(cmd);
  if (run.exit_code != 0) {
    r.error = "reference failed (exit " + std::to_string(run.exit_code) + "): " + cmd + "\n" + run.output;
    return r;
  }
  r.index = nlohmann::json::parse(mom::test::read_file(r.dir->path() / "ref" / "index.json"));
  return r;
}

// Our routing decisions of the last forward against the reference's: per stage, step and
// router, the per-class loads after drops and the drop count. Prints the reference's margins.
void expect_same_routing(const mom::Gpt2& model, const nlohmann::json& ref) {
  const nlohmann::json ours = model.routing_stats();
  ASSERT_EQ(ours.size(), ref.size()) << "number of routed stages";
  for (size_t s = 0; s < ref.size(); ++s) {
    const std::string stage = ref[s]["stage"];
    ASSERT_EQ(ours[s]["stage"], stage);
    ASSERT_EQ(ours[s]["steps"].size(), ref[s]["steps"].size()) << stage;
    for (size_t h = 0; h < ref[s]["steps"].size(); ++h) {
      const nlohmann::json& rs = ref[s]["steps"][h];
      for (auto it = rs.begin(); it != rs.end(); ++it) {
        const std::string where = stage + " step " + std::to_string(h) + " " + it.key();
        const nlohmann::json& mine = ours[s]["steps"][h][it.key()];
        const nlohmann::json& margin = it.value()["margin"];
        std::printf("  routing %-24s load %-16s dropped %-3d margin %s\n", where.c_str(),
                    it.value()["load"].dump().c_str(), it.value()["dropped"].get<int>(),
                    margin.is_null() ? "(keeps all)" : std::to_string(margin.get<double>()).c_str());
        EXPECT_EQ(mine["load"], it.value()["load"]) << where << ": the selections differ";
        EXPECT_EQ(mine["dropped"], it.value()["dropped"]) << where << ": the capacity drops differ";
      }
    }
  }
}

// Exact zeros where the reference is exactly zero: the whole tensor, and for a module pool
// (…/attn/*, …/ffn/*, …/shared/*, leading axis = module) each module's slice.
void expect_exact_zeros(const std::string& name, const float* ours, const std::vector<float>& ref, const mom::Shape& shape) {
  const bool pool = name.find("/attn/") != std::string::npos || name.find("/ffn/") != std::string::npos ||
                    name.find("/shared/") != std::string::npos;
  const int64_t slices = pool ? shape[0] : 1, len = static_cast<int64_t>(ref.size()) / slices;
  for (int64_t j = 0; j < slices; ++j) {
    const auto* r0 = ref.data() + j * len;
    if (std::any_of(r0, r0 + len, [](float v) { return v != 0; })) continue;
    const auto* o0 = ours + j * len;
    const float worst = std::abs(*std::max_element(o0, o0 + len, [](float a, float b) { return std::abs(a) < std::abs(b); }));
    std::printf("  %-36s module %lld: reference gradient exactly zero, ours max %.2e\n", name.c_str(),
                static_cast<long long>(j), worst);
    EXPECT_EQ(worst, 0.0f) << name << " module " << j << ": the reference gradient is exactly zero (unused), ours is not";
  }
}

class MomReference : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    const std::string py = mom::test::reference_python();
    static const auto probe = mom::test::run(shell_quote(py) + " -c 'import torch, h5py, numpy'");
    if (probe.exit_code != 0)
      GTEST_SKIP() << "PyTorch reference unavailable (" << py
                   << " cannot import torch, h5py and numpy; jobs/setup.sh installs them): " << probe.output;
    ref_ = &reference_for(GetParam());
    ASSERT_TRUE(ref_->error.empty()) << ref_->error;
    const nlohmann::json& m = ref_->index["min_margins"][0];
    std::printf("  smallest routing margin of the reference: %s\n", m.is_null() ? "(none)" : std::to_string(m.get<double>()).c_str());
    if (!m.is_null()) {
      ASSERT_GT(m.get<double>(), kMinMargin) << "a routing decision is a near-tie; pick another seed for " << GetParam().name;
    }
  }
  std::unique_ptr<mom::Gpt2> model() const { return make_model(GetParam(), ref_->cfg); }

  const Reference* ref_ = nullptr;
};

TEST_P(MomReference, LogitsLossAndAuxMatchPyTorch) {
  const Reference& r = *ref_;
  auto m = model();
  const int V = r.cfg.model.vocab_size;
  const double loss = m->forward(r.tokens.data(), r.targets.data(), r.B(), r.T());
  expect_same_routing(*m, r.index["routing"]);
  if (HasFailure()) return;
  expect_close("loss", scalar_error(loss, r.index["loss"].get<double>()));
  expect_close("aux loss", scalar_error(m->aux_loss(), r.index["aux"].get<double>()));

  std::vector<double> logits;
  m->logits(r.tokens.data(), r.B(), r.T(), logits);
  ASSERT_EQ(logits.size(), static_cast<size_t>(r.B()) * r.T() * V);
  const auto ref_logits = r.tensor(r.index["logits"], mom::Shape{r.B() * r.T(), V});
  expect_close("logits", compare(logits.data(), ref_logits.data(), ref_logits.size()));
}

TEST_P(MomReference, EveryGradientMatchesPyTorch) {
  const Reference& r = *ref_;
  auto m = model();
  mom::ParameterStore& ps = m->params();
  ps.zero_grads();
  const double loss = m->forward_backward(r.tokens.data(), r.targets.data(), r.B(), r.T(), 1.0 / (r.B() * r.T()));
  expect_same_routing(*m, r.index["routing"]);
  if (HasFailure()) return;
  expect_close("loss (forward_backward)", scalar_error(loss, r.index["loss"].get<double>()));
  expect_close("aux loss (forward_backward)", scalar_error(m->aux_loss(), r.index["aux"].get<double>()));

  ASSERT_EQ(r.index["grads"].size(), ps.size()) << "the reference and our model have different parameter sets";
  std::string worst_name;
  double worst = 0;
  for (size_t i = 0; i < ps.size(); ++i) {
    const std::string& name = ps.specs()[i].name;
    ASSERT_TRUE(r.index["grads"].contains(name)) << "no reference gradient for " << name;
    const auto ref = r.tensor(r.index["grads"][name], ps.grad(i).shape);
    const float* ours = ps.grad(i).ptr<float>();
    const double rel = expect_close("grad " + name, compare(ours, ref.data(), ref.size()));
    expect_exact_zeros(name, ours, ref, ps.grad(i).shape);
    if (rel > worst) worst = rel, worst_name = name;
  }
  std::printf("  worst gradient: %s, rel %.2e\n", worst_name.c_str(), worst);
}

// Five AdamW steps on CE + aux, one batch, as in the dense test: the losses (and aux losses)
// after each step and the gradient norms before clipping are compared, not the parameters
// (gradients that are pure rounding noise become full ±lr Adam steps on either side). The
// reference also checks that no decision came near a tie along the way.
TEST_P(MomReference, AdamWTrajectoryMatchesPyTorch) {
  const Reference& r = *ref_;
  auto m = model();
  mom::ParameterStore& ps = m->params();
  const auto& t = r.cfg.train;
  mom::AdamW opt(ps, {t.beta1, t.beta2, t.eps, t.weight_decay});
  std::vector<double> norms, losses, auxes;
  for (int step = 0; step < kSteps; ++step) {
    ps.zero_grads();
    const double loss = m->forward_backward(r.tokens.data(), r.targets.data(), r.B(), r.T(), 1.0 / (r.B() * r.T()));
    if (step > 0) losses.push_back(loss), auxes.push_back(m->aux_loss());
    norms.push_back(mom::clip_grad_norm(ps, t.grad_clip));
    opt.step(t.lr);
  }
  losses.push_back(m->forward(r.tokens.data(), r.targets.data(), r.B(), r.T()));
  auxes.push_back(m->aux_loss());

  std::printf("  smallest routing margin of the reference after 0..%d steps: %s\n", kSteps, r.index["min_margins"].dump().c_str());
  for (const auto& margin : r.index["min_margins"])
    if (!margin.is_null()) {
      EXPECT_GT(margin.get<double>(), kMinMargin) << "a routing decision came near a tie";
    }
  const auto rn = r.index["grad_norms"].get<std::vector<double>>();
  const auto rl = r.index["losses"].get<std::vector<double>>();
  const auto ra = r.index["auxes"].get<std::vector<double>>();
  ASSERT_EQ(rn.size(), norms.size());
  ASSERT_EQ(rl.size(), losses.size());
  ASSERT_EQ(ra.size(), auxes.size());
  for (size_t k = 0; k < norms.size(); ++k) {
    const std::string s = std::to_string(k + 1);
    expect_close("grad norm before clip, step " + s, scalar_error(norms[k], rn[k]));
    expect_close("loss after step " + s, scalar_error(losses[k], rl[k]));
    expect_close("aux after step " + s, scalar_error(auxes[k], ra[k]));
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, MomReference, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

}  // namespace
