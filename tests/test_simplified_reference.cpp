// Whole-model test of the simplified blocks and AltUp: our CPU GPT-2 with SAS and SAS-P blocks
// (MODELS.md §4) and with AltUp around its layers (§5) — forward, backward, clipping, AdamW —
// against an independent PyTorch model (tests/ref/torch_simplified.py, written from the math
// and docs/checkpoint-format.md, float64).
//
// Why this way: the ops (RMSNorm, shaped attention, gains, predict/correct, tanh, clamp) have
// finite-difference tests; this one checks the assembled model as the spec defines it: which
// block of a stack entry owns the value projection and the LayerNorm, how SAS and SAS-P wire
// their branches, the shaped matrix β·softmax + α·I − γ·C per head, the AltUp stream (recycled
// or wide embedding, the active block, activated or predicted layer input, static or Gemma-style
// input-dependent coefficients with their clamp, the sum before ln_f, the wide tied head), and
// which tensors get weight decay. As in tests/test_model_reference.cpp the C++ side owns the
// inputs: it initialises, moves every parameter by noise (larger where our init is a special
// point: W_q = 0 makes the softmax uniform and A = I, AltUp's p = I and g = 1, W_p = W_g = 0),
// saves a normal checkpoint, draws the tokens and runs tests/ref/simplified_reference.py once
// per config.
//
// Tolerance (as in the dense test): max_i |ours_i − ref_i| ≤ 1e-4 · max_i |ref_i| per tensor,
// except where the reference's gradient is a sum that cancels: a gain g multiplying a tensor t
// has ∂L/∂g = Σ ∂L/∂(g·t) ⊙ t, and before a norm (the next block's, or ln_f) most of it cancels,
// since the norm removes the scale g sets; the key bias's gradient Σ_t ∂L/∂k_t is exactly zero
// (the softmax removes a constant per score row). Rounding in such a sum is relative to the size
// of its terms, not to what is left of them, so for these tensors (the gains α, β, γ, α_V, β_V,
// β_SA, β_FF, α_FF, AltUp's static p and g, and b_k) the reference also writes Σ |terms| per
// element, and the same 1e-4 is taken of its largest value instead of max|ref|.
//
// ReLU: the MLP of SAS and SAS-P is ReLU's, whose derivative jumps at 0. An input within float32
// rounding of 0 can take the other branch on our side and move a gradient by a whole term, so
// each case's seed must keep the reference's smallest |ReLU input| of the first forward above
// 1e-6 (the test refuses it otherwise), as the routed test does with its routing margins.
//
// Conditioning: with sharp attention (large W_q, W_k) ten AdamW steps on these blocks are chaotic
// (torch's own float32 run then leaves its float64 run by 10% within ten steps), so the noise on
// W_q and W_k is moderate; torch float32 against float64 then agrees to about 1e-6 in every case.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <ostream>
#include <set>
#include <string>
#include <utility>
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
constexpr double kMinMargin = 1e-5;      // below this a routing decision could flip on rounding
constexpr double kMinReluMargin = 1e-6;  // below this a ReLU input could change sign on rounding
constexpr int kSteps = 10;
constexpr int kVocab = 300, kCtx = 32, kSeqLen = 24;

struct Case {
  const char* name;
  const char* stack;  // model.stack as JSON
  const char* altup;  // model.altup as JSON; nullptr: off
  int n_embd, n_head, batch;
  uint64_t seed;
  bool decay_embeddings = false;
  // Input-dependent AltUp: a few entries of W_p and W_g moved beyond the ±120 clamp.
  bool beyond_clamp = false;
};

const Case kCases[] = {
    // One kind per model, each norm: the entry's first block (W_V; LayerNorm with norm none)
    // followed by blocks without them.
    {"SasRms", R"([{"type":"sas","count":3,"norm":"rms"}])", nullptr, 64, 4, 2, 11},
    {"SasNone", R"([{"type":"sas","count":3,"norm":"none","beta_ff_init":0.3}])", nullptr, 48, 4, 3, 12},
    {"SasPRms", R"([{"type":"sas_p","count":3,"norm":"rms"}])", nullptr, 48, 4, 2, 13},
    {"SasPNoneOneHead", R"([{"type":"sas_p","count":3,"norm":"none"}])", nullptr, 64, 1, 2, 14},
    // Dense, SAS and SAS-P mixed, with a second entry of each simplified kind (its first block
    // has W_V again, and sas/2, sas_p/2 continue the kind's numbering).
    {"MixedDenseSasSasP",
     R"([{"type":"dense","count":1},{"type":"sas","count":2,"norm":"rms"},{"type":"sas_p","count":2,"norm":"none"},)"
     R"({"type":"dense","count":1},{"type":"sas","count":1,"norm":"none"},{"type":"sas_p","count":1,"norm":"rms"}])",
     nullptr, 48, 4, 3, 15},
    // AltUp, static coefficients.
    {"AltUpStaticRecycledDense", R"([{"type":"dense","count":3}])",
     R"({"k":2,"mode":"recycled","active":"alternate","layer_input":"activated","coefficients":"static"})", 64, 4, 2,
     21},
    {"AltUpStaticWideFirstPredicted", R"([{"type":"dense","count":2}])",
     R"({"k":2,"mode":"wide","active":"first","layer_input":"predicted","coefficients":"static"})", 48, 4, 2, 22, true},
    {"AltUpK3RecycledSasP", R"([{"type":"sas_p","count":4,"norm":"rms"}])",
     R"({"k":3,"mode":"recycled","active":"alternate","layer_input":"activated","coefficients":"static"})", 48, 4, 2,
     23},
    // AltUp, Gemma 3n's input-dependent coefficients.
    {"AltUpInputDependentDense", R"([{"type":"dense","count":2}])",
     R"({"k":2,"mode":"recycled","active":"first","layer_input":"predicted","coefficients":"input_dependent"})", 64, 4,
     2, 31, false, true},
    {"AltUpInputDependentWideK3Sas", R"([{"type":"sas","count":3,"norm":"none"}])",
     R"({"k":3,"mode":"wide","active":"alternate","layer_input":"activated","coefficients":"input_dependent"})", 48, 2,
     2, 32},
    // AltUp around a whole MoM chunk (one layer, its two assembly steps inside) beside a dense
    // and a SAS block.
    {"AltUpMomChunk",
     R"([{"type":"dense","count":1},{"type":"mom","attn_modules":2,"ffn_modules":2,"skip":true,"top_k":1,"steps":2,)"
     R"("router":"mlp","router_dim":16,"temperature":1.0,"balance_coef":0.01},{"type":"sas","count":1,"norm":"rms"}])",
     R"({"k":2,"mode":"recycled","active":"alternate","layer_input":"activated","coefficients":"static"})", 48, 4, 2,
     41},
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
  std::printf("  %-44s rel %.2e (max|d| %.2e, max|ref| %.2e)\n", what.c_str(), e.rel(), e.max_abs_diff, e.max_abs_ref);
  EXPECT_LE(e.max_abs_diff, kRelTol * e.max_abs_ref)
      << what << ": max|ours-ref| = " << e.max_abs_diff << " exceeds " << kRelTol << " * max|ref| = " << e.max_abs_ref;
  return e.rel();
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
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
  std::vector<float> grad(const std::string& name, const mom::Shape& shape) const {
    return tensor(index["grads"][name], shape);
  }
};

// The noise added to a parameter after our init, by name: large enough that no tensor sits at
// a point where a wrong formula would go unnoticed (W_q = 0 gives a uniform softmax and A = I;
// α = β = γ = 1 makes the softmax and the uniform matrix cancel; AltUp starts at p = I, g = 1
// and W_p = W_g = 0, where predict and correct are the identity), and routers far from uniform.
double noise_std(const std::string& name) {
  if (name == "altup/router_weight") return 1.0;  // m = tanh(W_r·RMSNorm(x)/C) well away from 0
  if (name == "altup/predict_weight" || name == "altup/correct_weight") return 0.5;
  if (name == "altup/predict" || name == "altup/correct") return 0.2;
  if (name.find("/router_") != std::string::npos) return 0.3;                    // MoM routers
  if (ends_with(name, "/q_weight") || ends_with(name, "/k_weight")) return 0.1;  // more: chaotic steps (top)
  for (const char* gain :
       {"/attn_alpha", "/attn_beta", "/attn_gamma", "/v_alpha", "/v_beta", "/gain_sa", "/gain_ff", "/skip_ff"})
    if (ends_with(name, gain)) return 0.2;
  return 0.05;
}

// Entries of W_p [L, K·K, K] and W_g [L, K, K] (layer, row, column) moved beyond the clamp.
struct BeyondClamp {
  const char* name;
  int layer, row, col;
  float value;
};
constexpr BeyondClamp kBeyondClamp[] = {
    {"altup/predict_weight", 0, 1, 0, 130.0f},
    {"altup/predict_weight", 1, 2, 1, -150.0f},
    {"altup/correct_weight", 1, 0, 1, 125.0f},
};

int64_t flat_index(const mom::Shape& s, const BeyondClamp& b) { return (b.layer * s[1] + b.row) * s[2] + b.col; }

// The model both sides start from: our init, then the noise above on every element.
std::unique_ptr<mom::Gpt2> make_model(const Case& c, const mom::io::RunConfig& cfg) {
  auto m = std::make_unique<mom::Gpt2>(cfg.model, mom::backend_for(mom::Device::CPU));
  m->init_weights(c.seed);
  mom::Rng rng(c.seed + 1);
  mom::ParameterStore& ps = m->params();
  for (size_t i = 0; i < ps.size(); ++i) {
    const double std_ = noise_std(ps.specs()[i].name);
    float* v = ps.param(i).ptr<float>();
    for (int64_t j = 0; j < ps.param(i).numel(); ++j) v[j] += static_cast<float>(std_ * rng.normal());
  }
  std::set<std::pair<int, int>> shrunk_rows;
  if (c.beyond_clamp)
    for (const BeyondClamp& b : kBeyondClamp) {
      const mom::Tensor& p = ps.param(b.name);
      p.ptr<float>()[flat_index(p.shape, b)] = b.value;
      // The router row that makes m's component `col` shrinks, so that the clamped weight's
      // coefficient (120·m_col, about 0.3) stays moderate: at 1.5 the ten steps become chaotic.
      const mom::Tensor& wr = ps.param("altup/router_weight");  // [L, K, C]
      float* row = wr.ptr<float>() + (static_cast<int64_t>(b.layer) * wr.shape[1] + b.col) * wr.shape[2];
      if (!shrunk_rows.count({b.layer, b.col})) {
        for (int64_t j = 0; j < wr.shape[2]; ++j) row[j] *= 0.02f;
        shrunk_rows.insert({b.layer, b.col});
      }
    }
  return m;
}

const Reference& reference_for(const Case& c) {
  static std::map<std::string, Reference> cache;
  auto [it, fresh] = cache.try_emplace(c.name);
  Reference& r = it->second;
  if (!fresh) return r;
  std::vector<std::string> overrides = {
      std::string("model.stack=") + c.stack,
      "model.vocab_size=" + std::to_string(kVocab),
      "model.n_ctx=" + std::to_string(kCtx),
      "model.n_head=" + std::to_string(c.n_head),
      "model.n_embd=" + std::to_string(c.n_embd),
      std::string("model.decay_embeddings=") + (c.decay_embeddings ? "true" : "false"),
      "train.batch_size=" + std::to_string(c.batch),
      "train.seq_len=" + std::to_string(kSeqLen),
      "train.lr=1e-3",
      "train.beta1=0.9",
      "train.beta2=0.95",
      "train.eps=1e-8",
      "train.weight_decay=0.1",
      "train.grad_clip=1.0"};
  if (c.altup) overrides.push_back(std::string("model.altup=") + c.altup);
  r.cfg = mom::io::load_config("", overrides);
  r.dir = std::make_unique<mom::test::ScratchDir>(std::string("simplified-reference-") + c.name);
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
  mom::save_checkpoint(r.dir->path() / "weights.h5", *make_model(c, r.cfg), nullptr, mom::TrainState{}, r.cfg.json,
                       true);

  const std::string cmd = shell_quote(mom::test::reference_python()) + " " +
                          shell_quote(mom::test::source_dir() + "/tests/ref/simplified_reference.py") + " " +
                          shell_quote(*r.dir / "weights.h5") + " " + shell_quote(*r.dir / "tokens.i32") + " " +
                          shell_quote(*r.dir / "targets.i32") + " " + std::to_string(r.B()) + " " +
                          std::to_string(r.T()) + " " + shell_quote(*r.dir / "ref") + " --steps " +
                          std::to_string(kSteps);
  const auto run = mom::test::run(cmd);
  if (run.exit_code != 0) {
    r.error = "reference failed (exit " + std::to_string(run.exit_code) + "): " + cmd + "\n" + run.output;
    return r;
  }
  r.index = nlohmann::json::parse(mom::test::read_file(r.dir->path() / "ref" / "index.json"));
  return r;
}

// Our routing decisions of the last forward against the reference's (models with a MoM chunk):
// per stage, step and router, the per-class loads and the drop count.
void expect_same_routing(const mom::Gpt2& model, const nlohmann::json& ref) {
  const nlohmann::json ours = model.routing_stats();
  ASSERT_EQ(ours.size(), ref.size()) << "number of routed stages";
  for (size_t s = 0; s < ref.size(); ++s) {
    const std::string stage = ref[s]["stage"];
    ASSERT_EQ(ours[s]["stage"], stage);
    ASSERT_EQ(ours[s]["steps"].size(), ref[s]["steps"].size()) << stage;
    for (size_t h = 0; h < ref[s]["steps"].size(); ++h)
      for (auto it = ref[s]["steps"][h].begin(); it != ref[s]["steps"][h].end(); ++it) {
        const std::string where = stage + " step " + std::to_string(h) + " " + it.key();
        const nlohmann::json& mine = ours[s]["steps"][h][it.key()];
        std::printf("  routing %-24s load %s\n", where.c_str(), it.value()["load"].dump().c_str());
        EXPECT_EQ(mine["load"], it.value()["load"]) << where << ": the selections differ";
        EXPECT_EQ(mine["dropped"], it.value()["dropped"]) << where << ": the capacity drops differ";
      }
  }
}

class SimplifiedReference : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    const std::string py = mom::test::reference_python();
    static const auto probe = mom::test::run(shell_quote(py) + " -c 'import torch, h5py, numpy'");
    if (probe.exit_code != 0)
      GTEST_SKIP() << "PyTorch reference unavailable (" << py
                   << " cannot import torch, h5py and numpy; jobs/setup.sh installs them): " << probe.output;
    ref_ = &reference_for(GetParam());
    ASSERT_TRUE(ref_->error.empty()) << ref_->error;
    if (!ref_->index["routing"].empty())
      std::printf("  smallest routing margin of the reference after 0..%d steps: %s\n", kSteps,
                  ref_->index["min_margins"].dump().c_str());
    for (const auto& margin : ref_->index["min_margins"])
      if (!margin.is_null()) {
        ASSERT_GT(margin.get<double>(), kMinMargin)
            << "a routing decision is a near-tie (before or during training); pick another seed for "
            << GetParam().name;
      }
    const nlohmann::json& relu = ref_->index["relu_margin"];
    std::printf("  smallest |ReLU input| of the reference: %s\n",
                relu.is_null() ? "(no ReLU)" : std::to_string(relu.get<double>()).c_str());
    if (!relu.is_null()) {
      ASSERT_GT(relu.get<double>(), kMinReluMargin)
          << "a ReLU input is within rounding of 0; pick another seed for " << GetParam().name;
    }
  }
  std::unique_ptr<mom::Gpt2> model() const { return make_model(GetParam(), ref_->cfg); }

  const Reference* ref_ = nullptr;
};

TEST_P(SimplifiedReference, LogitsAndLossMatchPyTorch) {
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

TEST_P(SimplifiedReference, EveryGradientMatchesPyTorch) {
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
    const mom::Shape& shape = ps.grad(i).shape;
    const auto ref = r.grad(name, shape);
    const float* ours = ps.grad(i).ptr<float>();
    Error e = compare(ours, ref.data(), ref.size());
    std::string what = "grad " + name;
    if (r.index["grad_scales"].contains(name)) {  // a sum that cancels: scale of its terms (see the top)
      const auto terms = r.tensor(r.index["grad_scales"][name], shape);
      char note[96];
      std::snprintf(note, sizeof note, " (scale sum|terms|; vs own max|ref| %.1e)", e.rel());
      e.max_abs_ref = compare(terms.data(), terms.data(), terms.size()).max_abs_ref;
      what += note;
    }
    const double rel = expect_close(what, e);
    if (rel > worst) worst = rel, worst_name = name;
  }
  std::printf("  worst gradient: %s, rel %.2e\n", worst_name.c_str(), worst);

  // W_p and W_g enter through a clamp at ±120: where an entry is beyond it, its gradient is 0.
  if (GetParam().beyond_clamp)
    for (const BeyondClamp& b : kBeyondClamp) {
      const mom::Tensor& g = ps.grad(b.name);
      const int64_t at = flat_index(g.shape, b);
      const float ref = r.grad(b.name, g.shape)[static_cast<size_t>(at)];
      std::printf("  %s[%d][%d][%d] = %g, beyond the clamp: grad ours %g, reference %g\n", b.name, b.layer, b.row,
                  b.col, b.value, g.ptr<float>()[at], ref);
      EXPECT_EQ(ref, 0.0f) << b.name << ": the reference's clamp passes a gradient";
      EXPECT_EQ(g.ptr<float>()[at], 0.0f) << b.name << "[" << b.layer << "][" << b.row << "][" << b.col
                                          << "] is beyond the ±120 clamp, so its gradient must be 0";
    }
}

// Our ParameterStore's decay flags against the reference's, which decides from the names alone
// (every linear map's matrix decays; norms, biases, gains, AltUp's static p and g never; wte/wpe
// with model.decay_embeddings).
TEST_P(SimplifiedReference, WeightDecayFlagsMatchPyTorch) {
  const auto decayed = ref_->index["decay"].get<std::set<std::string>>();
  auto m = model();
  for (const mom::ParamSpec& s : m->params().specs()) {
    const bool ref = decayed.count(s.name) > 0;
    std::printf("  %-32s decay %s\n", s.name.c_str(), s.decay ? "yes" : "no");
    EXPECT_EQ(s.decay, ref) << s.name << ": the reference " << (ref ? "decays" : "does not decay") << " it";
  }
}

// Ten steps on one batch, as in the dense test: the gradient norms before clipping and the
// losses after each step (the parameters are not compared: gradients that are pure rounding
// noise, such as the key bias's, become full ±lr Adam steps on either side).
TEST_P(SimplifiedReference, AdamWTrajectoryMatchesPyTorch) {
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

INSTANTIATE_TEST_SUITE_P(Configs, SimplifiedReference, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

}  // namespace
