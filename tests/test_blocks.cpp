// The block kinds beyond dense GPT-2 and MoM/MoE (SAS, SAS-P, AltUp around any block), whole
// models at a time:
// - every parameter's gradient against central finite differences, in double, over odd
//   shapes (T = 1, T not a power of two, one head);
// - the exact special cases: AltUp with K = 1 is the wrapped model bit for bit; a
//   Recycled-AltUp widening of a trained model keeps its logits up to ln_f's eps (K = 2, 3);
//   a stack of dense, SAS, SAS-P, MoM and MoE blocks under AltUp trains and resumes bit for bit;
// - parameter and FLOP counts of the new kinds, and bad configs named by their key.
// The ops themselves are checked one by one in tests/test_ops_fd.cpp, and whole models against
// an independent PyTorch model in tests/test_simplified_reference.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/checkpointing.h"
#include "core/error.h"
#include "core/gpt2.h"
#include "core/rng.h"
#include "io/checkpoint_file.h"
#include "io/config.h"
#include "tests/finite_differences.h"
#include "tests/support.h"

namespace mom {
namespace {

using test::shell_quote;

struct FdCase {
  const char* name;
  std::vector<std::string> overrides;  // model.stack, model.altup, heads
  int B, T;
};

void PrintTo(const FdCase& c, std::ostream* os) { *os << c.name; }

io::RunConfig tiny(std::vector<std::string> overrides) {
  std::vector<std::string> o = {"model.vocab_size=23", "model.n_ctx=8", "model.n_embd=8", "model.n_head=2",
                                "train.seq_len=8"};
  o.insert(o.end(), overrides.begin(), overrides.end());
  return io::load_config("", o);
}

class BlockFiniteDifferences : public ::testing::TestWithParam<FdCase> {};

// The whole model in f64, every parameter tensor, a sample of its elements (all of a tensor's
// elements when it has at most 8: every gain and per-head scalar).
TEST_P(BlockFiniteDifferences, EveryParameter) {
  const FdCase& c = GetParam();
  Rng rng(11);
  const io::RunConfig cfg = tiny(c.overrides);
  Gpt2 model(cfg.model, backend_for(Device::CPU), DType::F64);
  model.init_weights(3);
  // Away from init (W_q = 0, p = I, g = 1, zero biases) so that every path carries gradient.
  for (size_t i = 0; i < model.params().size(); ++i) {
    double* p = model.params().param(i).ptr<double>();
    for (int64_t k = 0; k < model.params().param(i).numel(); ++k) p[k] += 0.3 * rng.normal();
  }
  const int B = c.B, T = c.T;
  std::vector<int32_t> tok(static_cast<size_t>(B * T)), tgt(tok.size());
  for (auto& t : tok) t = static_cast<int32_t>(rng.below(23));
  for (auto& t : tgt) t = static_cast<int32_t>(rng.below(23));
  model.params().zero_grads();
  model.forward_backward(tok.data(), tgt.data(), B, T, 1.0 / (B * T));
  for (size_t i = 0; i < model.params().size(); ++i) {
    const Tensor p = model.params().param(i), g = model.params().grad(i);
    double* pd = p.ptr<double>();
    const double* gd = g.ptr<double>();
    const int64_t n = p.numel();
    const int samples = n <= 8 ? static_cast<int>(n) : 5;
    for (int s = 0; s < samples; ++s) {
      const int64_t k = n <= 8 ? s : static_cast<int64_t>(rng.below(static_cast<uint64_t>(n)));
      const double saved = pd[k];
      pd[k] = saved + test::kFdStep;
      const double jp = model.forward(tok.data(), tgt.data(), B, T) + model.aux_loss();
      pd[k] = saved - test::kFdStep;
      const double jm = model.forward(tok.data(), tgt.data(), B, T) + model.aux_loss();
      pd[k] = saved;
      const double numeric = (jp - jm) / (2 * test::kFdStep);
      EXPECT_NEAR(gd[k], numeric, test::kFdTol * std::max(1.0, std::abs(numeric)))
          << model.params().specs()[i].name << "[" << k << "]";
    }
  }
}

const char* kSasRms = R"(model.stack=[{"type":"sas","count":3}])";
const char* kSasNone = R"(model.stack=[{"type":"sas","count":3,"norm":"none"}])";
const char* kSasPRms = R"(model.stack=[{"type":"sas_p","count":3}])";
const char* kSasPNone = R"(model.stack=[{"type":"sas_p","count":3,"norm":"none","beta_ff_init":0.5}])";
const char* kMixed =
    R"(model.stack=[{"type":"dense","count":1},{"type":"sas","count":1},{"type":"sas_p","count":2,"norm":"none"}])";

INSTANTIATE_TEST_SUITE_P(
    Kinds, BlockFiniteDifferences,
    ::testing::Values(
        FdCase{"SasRms", {kSasRms}, 2, 5}, FdCase{"SasNoNorm", {kSasNone}, 2, 5}, FdCase{"SasPRms", {kSasPRms}, 2, 7},
        FdCase{"SasPNoNorm", {kSasPNone}, 2, 7}, FdCase{"SasOneToken", {kSasRms}, 3, 1},
        FdCase{"SasPOneHead", {kSasPRms, "model.n_head=1"}, 2, 6}, FdCase{"MixedDenseSasSasP", {kMixed}, 2, 5},
        FdCase{"AltUpStatic", {kMixed, R"(model.altup={"k":2})"}, 2, 5},
        FdCase{"AltUpWideFirstPredicted",
               {kSasPRms, R"(model.altup={"k":3,"mode":"wide","active":"first","layer_input":"predicted"})"},
               2,
               3},
        FdCase{"AltUpGemmaCoefficients",
               {kMixed, R"(model.altup={"k":2,"coefficients":"input_dependent","layer_input":"predicted"})"},
               2,
               5},
        FdCase{"AltUpOneToken", {R"(model.altup={"k":2})", "model.n_layer=2"}, 2, 1},
        FdCase{"AltUpAroundMomAndMoe",
               {R"(model.stack=[{"type":"mom","attn_modules":2,"ffn_modules":2,"steps":2,"top_k":2,"router_dim":8,)"
                R"("router":"gru"},{"type":"moe","experts":3,"top_k":2}])",
                R"(model.altup={"k":2})"},
               2,
               5}),
    [](const auto& info) { return std::string(info.param.name); });

// AltUp with K = 1: one block, p = 1 and g = 1, so predict returns x, correct returns
// (x − 1·x) + 1·L(x) = L(x) exactly, and the stream's ends are copies: the wrapped model,
// bit for bit, in logits, loss and every shared gradient; AltUp's own gradients exist.
TEST(AltUp, KOneIsTheWrappedModelBitForBit) {
  const std::string stack =
      R"(model.stack=[{"type":"dense","count":1},{"type":"sas","count":1},{"type":"sas_p","count":1},)"
      R"({"type":"mom","attn_modules":2,"ffn_modules":2,"steps":2,"top_k":2,"router_dim":8},)"
      R"({"type":"moe","experts":2,"top_k":1}])";
  const std::vector<std::string> dims = {"model.vocab_size=97", "model.n_ctx=16", "model.n_embd=32", "model.n_head=4",
                                         "train.seq_len=16"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> o = dims;
    o.push_back(stack);
    o.insert(o.end(), extra.begin(), extra.end());
    return io::load_config("", o);
  };
  Backend& be = backend_for(Device::CPU);
  Gpt2 plain(with({}).model, be), wrapped(with({R"(model.altup={"k":1})"}).model, be);
  plain.init_weights(9);
  wrapped.init_weights(9);
  Rng rng(4);
  for (size_t i = 0; i < plain.params().size(); ++i) {
    float* p = plain.params().param(i).ptr<float>();
    for (int64_t k = 0; k < plain.params().param(i).numel(); ++k) p[k] += static_cast<float>(0.05 * rng.normal());
    be.copy(wrapped.params().param(plain.params().specs()[i].name), plain.params().param(i));
  }
  const int B = 2, T = 11;
  std::vector<int32_t> tok(B * T), tgt(B * T);
  for (auto& t : tok) t = static_cast<int32_t>(rng.below(97));
  for (auto& t : tgt) t = static_cast<int32_t>(rng.below(97));
  std::vector<double> la, lb;
  plain.logits(tok.data(), B, T, la);
  wrapped.logits(tok.data(), B, T, lb);
  EXPECT_EQ(la, lb);
  plain.params().zero_grads();
  wrapped.params().zero_grads();
  EXPECT_EQ(plain.forward_backward(tok.data(), tgt.data(), B, T, 1.0 / (B * T)),
            wrapped.forward_backward(tok.data(), tgt.data(), B, T, 1.0 / (B * T)));
  for (size_t i = 0; i < plain.params().size(); ++i) {
    const Tensor a = plain.params().grad(i), b = wrapped.params().grad(plain.params().specs()[i].name);
    EXPECT_EQ(std::memcmp(a.data, b.data, a.bytes()), 0) << plain.params().specs()[i].name;
  }
  // With one block the prediction's gradient cancels exactly (x̂ enters as x̂ − g·x̂); the
  // correction's does not.
  EXPECT_EQ(be.sum_squares(wrapped.params().grad("altup/predict")), 0);
  EXPECT_GT(be.sum_squares(wrapped.params().grad("altup/correct")), 0);
  EXPECT_EQ(plain.routing_stats(), wrapped.routing_stats());
}

// Parameters per token and FLOPs of the new kinds, from their formulas.
TEST(Blocks, ParameterAndFlopCounts) {
  const int64_t V = 101, ctx = 16, C = 32, nh = 4;
  const std::vector<std::string> dims = {"model.vocab_size=101", "model.n_ctx=16", "model.n_embd=32", "model.n_head=4",
                                         "train.seq_len=16"};
  auto model = [&](const std::string& extra, const std::string& altup = "") {
    std::vector<std::string> o = dims;
    o.push_back(extra);
    if (!altup.empty()) o.push_back(altup);
    return std::make_unique<Gpt2>(io::load_config("", o).model, backend_for(Device::CPU));
  };
  const int64_t outside = V * C + ctx * C + 2 * C;  // wte, wpe, ln_f
  const int64_t dense = 12 * C * C + 13 * C;
  // SAS (norm rms): W_q, W_k and biases, α/β/γ per head, two RMSNorm gains, the MLP, three gains;
  // the first block of the entry adds W_V, α_V and β_V.
  const int64_t sas = 2 * C * C + 2 * C + 3 * nh + 2 * C + 8 * C * C + 3;
  const int64_t sas_p = sas - C - 1;  // one norm, no α_FF
  const int64_t first = C * C + 2;
  auto m = model(R"(model.stack=[{"type":"sas","count":3}])");
  EXPECT_EQ(m->active_parameters(), outside + 3 * sas + first);
  EXPECT_EQ(m->params().num_elements(), m->active_parameters());
  EXPECT_DOUBLE_EQ(m->flops_per_token(16), 6.0 * m->active_parameters() + 6.0 * 3 * C * 16);
  m = model(R"(model.stack=[{"type":"sas_p","count":2,"norm":"none"}])");
  // norm none: the first block's LayerNorm (weight, bias) replaces RMSNorm; later blocks have none.
  EXPECT_EQ(m->active_parameters(), outside + 2 * (sas_p - C) + first + 2 * C);
  m = model("model.n_layer=2", R"(model.altup={"k":2})");
  const int64_t altup = 2 * 2 + 2;  // K² + K per layer
  EXPECT_EQ(m->active_parameters(), outside + 2 * (dense + altup));
  EXPECT_DOUBLE_EQ(m->flops_per_token(16),
                   6.0 * m->active_parameters() + 6.0 * 2 * C * 16 + 2 * 6.0 * (2 * 2 * C + 2 * 2 * C));
  // Wide: K·C embeddings, but the head's matmul is [V, C] as in every model.
  m = model("model.n_layer=2", R"(model.altup={"k":2,"mode":"wide"})");
  EXPECT_EQ(m->active_parameters(), outside + (V + ctx) * C + 2 * (dense + altup));
  EXPECT_DOUBLE_EQ(m->flops_per_token(16),
                   6.0 * (m->active_parameters() - (V + ctx) * C) + 6.0 * 2 * C * 16 + 2 * 6.0 * (8 * C));
  // The paper's shape: 18 blocks, width 768, a 50K vocabulary; SAS drops W_V and W_O from
  // every block but the first (MODELS.md §4: about 13% of the whole model).
  const std::vector<std::string> paper = {"model.vocab_size=50257", "model.n_ctx=128", "model.n_embd=768",
                                          "train.seq_len=128", "model.n_head=12"};
  auto count = [&](const std::string& stack) {
    std::vector<std::string> o = paper;
    o.push_back(stack);
    const io::RunConfig c = io::load_config("", o);
    return Gpt2(c.model, backend_for(Device::CPU)).params().num_elements();
  };
  const double pre_ln = static_cast<double>(count("model.n_layer=18"));
  const double sas_count = static_cast<double>(count(R"(model.stack=[{"type":"sas","count":18}])"));
  std::printf("18 x 768, V 50257: Pre-LN %.1fM, SAS %.1fM parameters (%.1f%% fewer)\n", pre_ln / 1e6, sas_count / 1e6,
              100 * (1 - sas_count / pre_ln));
  EXPECT_LT(sas_count / pre_ln, 0.88);
}

// Bad configs are errors that name the key.
TEST(Blocks, BadConfigsNameTheKey) {
  auto expect_error = [](std::vector<std::string> overrides, const std::string& key) {
    try {
      io::load_config("", overrides);
      ADD_FAILURE() << "accepted: " << overrides.back();
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  };
  expect_error({R"(model.altup={"k":0})"}, "model.altup.k");
  expect_error({R"(model.altup={"k":-2})"}, "model.altup.k");
  expect_error({R"(model.altup={"k":2,"mode":"narrow"})"}, "model.altup.mode");
  expect_error({R"(model.altup={"k":2,"active":"last"})"}, "model.altup.active");
  expect_error({R"(model.altup={"k":2,"layer_input":"raw"})"}, "model.altup.layer_input");
  expect_error({R"(model.altup={"k":2,"coefficients":"learned"})"}, "model.altup.coefficients");
  expect_error({R"(model.altup={"kk":2})"}, "model.altup.kk");
  expect_error({"model.altup=2"}, "model.altup");
  expect_error({R"(model.stack=[{"type":"sas","norm":"layer"}])"}, "model.stack[0].norm");
  expect_error({R"(model.stack=[{"type":"sas_p","norm":"batch"}])"}, "model.stack[0].norm");
  expect_error({R"(model.stack=[{"type":"sas","top_k":2}])"}, "model.stack[0].top_k");
  expect_error({R"(model.stack=[{"type":"sas_p","count":2,"attn_modules":4}])"}, "model.stack[0].attn_modules");
  expect_error({R"(model.stack=[{"type":"sas","count":0}])"}, "model.stack[0].count");
  // Overrides compose: a later --set changes one key of the section.
  const io::RunConfig c = io::load_config("", {R"(model.altup={"k":3})", "model.altup.mode=wide"});
  EXPECT_EQ(c.model.altup.k, 3);
  EXPECT_TRUE(c.model.altup.wide);
}

// Through the command line: a small trained dense checkpoint widened by Recycled-AltUp (K = 2
// and 3, both layer inputs and both coefficient kinds start from the identity) keeps its
// logits within 1e-4 relative. The only difference is ln_f's eps, which sees the K-fold sum:
// eps/σ² relative, σ the final residual's scale, so the model is trained long enough (40
// steps) for σ to leave GPT-2's init scale (0.03), as any model worth widening has; wide AltUp and SAS targets are
// refused with a message naming why, and write nothing.
TEST(AltUp, RecycledWideningKeepsTheLogits) {
  test::ScratchDir dir("altup-widen");
  test::prepare_tiny_corpus(dir / "data");
  test::write_file(dir / "dense.json", test::tiny_config_json(dir / "data", dir / "dense", R"("steps": 40)"));
  test::RunResult r = test::run_mom("train --config " + shell_quote(dir / "dense.json"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string dense = dir / "dense/ckpt_00000040.h5";
  auto logits = [](const std::string& ckpt) {
    const io::RunConfig cfg = io::config_from_json(read_checkpoint_config(ckpt), ckpt);
    Gpt2 model(cfg.model, backend_for(Device::CPU));
    load_checkpoint(ckpt, model, nullptr, nullptr);
    std::vector<int32_t> tok(2 * 40);
    for (size_t i = 0; i < tok.size(); ++i) tok[i] = static_cast<int32_t>((i * 7919) % 50000);
    std::vector<double> out;
    model.logits(tok.data(), 2, 40, out);
    return out;
  };
  const std::vector<double> ref = logits(dense);
  for (const std::string options :
       {"--k 2", "--k 3", "--k 2 --layer-input predicted --active first", "--k 3 --coefficients input_dependent"}) {
    const std::string out = dir / ("widened" + std::to_string(std::hash<std::string>{}(options)) + ".h5");
    r = test::run_mom("convert dense-to-altup " + options + " " + shell_quote(dense) + " " + shell_quote(out));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const std::vector<double> got = logits(out);
    ASSERT_EQ(got.size(), ref.size());
    double diff = 0, scale = 0;
    for (size_t i = 0; i < ref.size(); ++i)
      diff = std::max(diff, std::abs(got[i] - ref[i])), scale = std::max(scale, std::abs(ref[i]));
    std::printf("dense-to-altup %-45s logits relative error %.2e (limit 1e-4)\n", options.c_str(), diff / scale);
    EXPECT_LE(diff, 1e-4 * scale) << options;
    EXPECT_GT(diff, 0) << options << ": bit-identical logits; the K-fold stream should show ln_f's eps";
  }
  r = test::run_mom("convert dense-to-altup --mode wide " + shell_quote(dense) + " " + shell_quote(dir / "wide.h5"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("recycled"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "wide.h5"));
  r = test::run_mom("convert dense-to-altup --k 0 " + shell_quote(dense) + " " + shell_quote(dir / "k0.h5"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("model.altup.k"), std::string::npos) << r.output;
  // A Pre-LN GPT-2 has no SAS weights: two-stage init into a SAS stack is refused.
  test::write_file(dir / "sas.json", R"({"model": {"n_head": 2, "n_embd": 64, "n_ctx": 64,
      "stack": [{"type":"sas","count":2}]}, "train": {"seq_len": 64}})");
  r = test::run_mom("convert dense-to-mom --config " + shell_quote(dir / "sas.json") + " " + shell_quote(dense) + " " +
                    shell_quote(dir / "sas.h5"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("SAS"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "sas.h5"));
  // A wide model cannot start from a width-C checkpoint.
  const std::string wide_cfg = dir / "wide.json";
  test::write_file(wide_cfg, test::tiny_config_json(dir / "data", dir / "wide-run", R"("steps": 2)"));
  r = test::run_mom("train --config " + shell_quote(wide_cfg) +
                    R"( --set 'model.altup={"k":2,"mode":"wide"}' --init-from )" + shell_quote(dense));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("model.altup.mode"), std::string::npos) << r.output;
}

// A stack of every kind under AltUp, trained 20 steps straight and as 10 + checkpoint + a new
// process + 10: every loss and every saved tensor bit for bit.
TEST(Blocks, EveryKindUnderAltUpResumesBitForBit) {
  test::ScratchDir dir("blocks-resume");
  test::prepare_tiny_corpus(dir / "data");
  const std::string model = R"({"n_head": 2, "n_embd": 64, "n_ctx": 64, "stack": [
      {"type":"dense","count":1},{"type":"sas","count":1},{"type":"sas_p","count":1,"norm":"none"},
      {"type":"mom","attn_modules":2,"ffn_modules":2,"steps":2,"top_k":2,"router_dim":16,"router":"gru"},
      {"type":"moe","experts":2,"top_k":1}], "altup": {"k": 2, "coefficients": "input_dependent"}})";
  for (const char* run : {"straight", "split"}) {
    std::string cfg = test::tiny_config_json(dir / "data", dir / run);
    cfg.replace(cfg.find(R"({"n_layer": 2, "n_head": 2, "n_embd": 64, "n_ctx": 64})"),
                std::string(R"({"n_layer": 2, "n_head": 2, "n_embd": 64, "n_ctx": 64})").size(), model);
    test::write_file(dir / (std::string(run) + ".json"), cfg);
  }
  test::RunResult r = test::run_mom("train --config " + shell_quote(dir / "straight.json"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = test::run_mom("train --config " + shell_quote(dir / "split.json") + " --until-step 10");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = test::run_mom("train --config " + shell_quote(dir / "split.json") + " --resume");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from"), std::string::npos) << r.output;
  const auto a = test::losses_by_step(dir / "straight/metrics.jsonl");
  const auto b = test::losses_by_step(dir / "split/metrics.jsonl");
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(b.size(), 20u);
  for (int64_t s = 1; s <= 20; ++s) EXPECT_EQ(a.at(s), b.at(s)) << "loss differs at step " << s;
  EXPECT_LT(a.at(20), a.at(1));
  io::CheckpointReader ca(dir / "straight/ckpt_00000020.h5"), cb(dir / "split/ckpt_00000020.h5");
  const auto names = ca.datasets();
  ASSERT_EQ(names, cb.datasets());
  size_t sas = 0, altup = 0;
  for (const auto& n : names) {
    sas += n.find("sas") != std::string::npos, altup += n.find("altup/") != std::string::npos;
    const auto shape = ca.shape(n);
    int64_t count = 1;
    for (auto d : shape) count *= d;
    std::vector<float> va(static_cast<size_t>(count)), vb(va.size());
    ca.read(n, shape, va.data());
    cb.read(n, shape, vb.data());
    EXPECT_EQ(std::memcmp(va.data(), vb.data(), va.size() * sizeof(float)), 0) << n << " differs";
  }
  EXPECT_GT(sas, 0u);
  EXPECT_GT(altup, 0u);
}

}  // namespace
}  // namespace mom
