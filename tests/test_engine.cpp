// The serving engine (router/service/engine.h): continuous batching over one model.
// - greedy completions equal `generate` (core/generate.h) token for token, for dense, MoM,
//   SAS-P and AltUp models;
// - 8 concurrent sampled requests with different seeds give exactly the text each gives alone;
// - routing traces: the prompt's and every completion token's, the same decisions as scoring
//   the whole sequence at once; routing counts add up to the tokens processed;
// - limits: a full queue and a request over the context are refused with the limit named;
//   a consumer that stops early frees its slot; drain cancels what is left.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "core/generate.h"
#include "core/rng.h"
#include "io/config.h"
#include "router/service/engine.h"

namespace mom::service {
namespace {

std::unique_ptr<Gpt2> model_of(const std::string& stack, const std::string& altup = "") {
  std::vector<std::string> o = {"model.vocab_size=97", "model.n_ctx=48",   "model.n_embd=32",
                                "model.n_head=4",      "train.seq_len=48", stack};
  if (!altup.empty()) o.push_back(altup);
  auto m = std::make_unique<Gpt2>(io::load_config("", o).model, backend_for(Device::CPU));
  m->init_weights(21);
  Rng rng(22);
  for (size_t i = 0; i < m->params().size(); ++i) {
    float* p = m->params().param(i).ptr<float>();
    for (int64_t k = 0; k < m->params().param(i).numel(); ++k) p[k] += 0.2f * static_cast<float>(rng.normal());
  }
  return m;
}

const char* kMom = R"(model.stack=[{"type":"dense","count":1},{"type":"mom","attn_modules":2,"ffn_modules":2,)"
                   R"("skip":true,"steps":2,"top_k":2,"router":"gru","router_dim":16},{"type":"moe","experts":2}])";

// One request to completion; collects its tokens, traces and finish reason.
struct Result {
  std::vector<int32_t> tokens;
  std::vector<nlohmann::json> routing;
  nlohmann::json prompt_routing;
  std::string reason;
};

class Waiter {
 public:
  Sink sink(Result& r, int stop_after = -1) {
    return Sink{[&r](const nlohmann::json& p) { r.prompt_routing = p; },
                [&r, stop_after](const TokenEvent& e) {
                  r.tokens.push_back(e.token);
                  r.routing.push_back(e.routing);
                  return stop_after < 0 || static_cast<int>(r.tokens.size()) < stop_after;
                },
                [this, &r](const std::string& reason) {
                  std::lock_guard<std::mutex> lock(mu_);
                  r.reason = reason;
                  ++done_;
                  cv_.notify_all();
                }};
  }
  void wait(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    ASSERT_TRUE(cv_.wait_for(lock, std::chrono::seconds(60), [&] { return done_ >= n; })) << done_ << " of " << n;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int done_ = 0;
};

GenerateRequest request(std::vector<int32_t> prompt, int max_tokens, double temperature, uint64_t seed) {
  GenerateRequest r;
  r.prompt = std::move(prompt), r.max_tokens = max_tokens, r.seed = seed;
  r.sampling.temperature = temperature, r.sampling.top_k = 20, r.sampling.top_p = 0.95;
  return r;
}

TEST(Engine, GreedyEqualsGenerateTokenForToken) {
  for (const auto& [stack, altup] : {std::pair<std::string, std::string>{"model.n_layer=2", ""},
                                     {kMom, ""},
                                     {R"(model.stack=[{"type":"sas_p","count":2}])", ""},
                                     {"model.n_layer=2", R"(model.altup={"k":2})"}}) {
    auto m = model_of(stack, altup);
    const std::vector<int32_t> prompt = {3, 14, 15, 92, 65};
    SampleOptions opt;
    opt.temperature = 0, opt.max_new_tokens = 20;
    const auto want = generate(*m, prompt, opt);
    Engine engine(*m, {4, 8});
    Waiter w;
    Result got;
    ASSERT_TRUE(engine.submit(request(prompt, 20, 0, 1), w.sink(got)).accepted);
    w.wait(1);
    EXPECT_EQ(got.tokens, want) << stack << " " << altup;
    EXPECT_EQ(got.reason, "length");
  }
}

TEST(Engine, ConcurrentSeedsGiveTheTextEachGivesAlone) {
  auto m = model_of(kMom, R"(model.altup={"k":2})");
  std::vector<GenerateRequest> reqs;
  for (int i = 0; i < 8; ++i)
    reqs.push_back(
        request({static_cast<int32_t>(1 + i), 40, 2, static_cast<int32_t>(50 + 3 * i)}, 12 + i, 0.9, 100 + i));
  std::vector<Result> alone(8), together(8);
  {
    Engine engine(*m, {8, 16});
    for (int i = 0; i < 8; ++i) {
      Waiter w;
      ASSERT_TRUE(engine.submit(reqs[i], w.sink(alone[i])).accepted);
      w.wait(1);
    }
  }
  Engine engine(*m, {8, 16});
  Waiter w;
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(engine.submit(reqs[i], w.sink(together[i])).accepted);
  w.wait(8);
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(together[i].tokens, alone[i].tokens) << "request " << i;
    EXPECT_EQ(together[i].reason, alone[i].reason) << "request " << i;
  }
  EXPECT_NE(alone[0].tokens, alone[1].tokens);
}

TEST(Engine, RoutingTracesMatchScoringTheWholeSequence) {
  auto m = model_of(kMom);
  Engine engine(*m, {2, 4});
  Waiter w;
  Result r;
  GenerateRequest req = request({5, 6, 7, 8}, 6, 0, 3);
  req.trace = true;
  ASSERT_TRUE(engine.submit(req, w.sink(r)).accepted);
  w.wait(1);
  ASSERT_EQ(r.prompt_routing.size(), 4u);
  ASSERT_EQ(r.tokens.size(), 6u);
  // Score prompt + completion: the trace of tokens 0..n-1 (each as the input of a position).
  std::vector<int32_t> all = req.prompt;
  all.insert(all.end(), r.tokens.begin(), r.tokens.end());
  all.push_back(0);  // a target for the last token, so that it is an input too
  const ScoreResult s = engine.score(all);
  ASSERT_EQ(s.trace.size(), all.size() - 1);
  std::vector<nlohmann::json> served(r.prompt_routing.begin(), r.prompt_routing.end());
  served.insert(served.end(), r.routing.begin(), r.routing.end());
  ASSERT_EQ(served.size(), s.trace.size());
  for (size_t t = 0; t < served.size(); ++t)
    for (const char* stage : {"chunks/0", "moe/0"}) {
      ASSERT_TRUE(served[t].contains(stage)) << served[t].dump();
      for (size_t h = 0; h < s.trace[t][stage].size(); ++h)
        for (auto& [router, v] : s.trace[t][stage][h].items()) {
          const auto& got = served[t][stage][h][router];
          EXPECT_EQ(got["modules"], v["modules"]) << "token " << t << " " << stage << " step " << h << " " << router;
          for (size_t k = 0; k < v["weights"].size(); ++k)
            EXPECT_NEAR(got["weights"][k].get<double>(), v["weights"][k].get<double>(), 1e-5);
        }
    }
  // Counts: the prefill's 4 rows, 6 steps of one row and the score's 11 rows went through the
  // MoE gate, top-2 each.
  const auto counts = engine.routing_counts();
  int64_t total = 0;
  for (const auto& c : counts["moe/0"]["steps"][0]["ffn"]) total += c.get<int64_t>();
  EXPECT_EQ(total, 2 * (4 + 6 + static_cast<int64_t>(all.size()) - 1));
  // The mean loss is the mean of the per-token losses.
  double sum = 0;
  for (double lp : s.logprobs) sum -= lp;
  EXPECT_NEAR(sum / static_cast<double>(s.logprobs.size()), s.mean_loss, 1e-9);
}

TEST(Engine, LimitsAreNamedAndEarlyStopsFreeTheirSlot) {
  auto m = model_of("model.n_layer=1");
  Engine engine(*m, {1, 1});
  auto over = engine.submit(request(std::vector<int32_t>(40, 1), 9, 0, 1), {});
  EXPECT_FALSE(over.accepted);
  EXPECT_FALSE(over.queue_full);
  EXPECT_NE(over.message.find("context of 48"), std::string::npos) << over.message;
  auto bad = engine.submit(request({1, 200}, 2, 0, 1), {});
  EXPECT_NE(bad.message.find("vocabulary"), std::string::npos) << bad.message;
  // One running (held at its first token until released, then it stops itself after 3), one
  // queued, the next refused.
  Waiter w;
  Result a, b;
  std::mutex gate_mu;
  std::condition_variable gate_cv;
  bool open = false, started = false;
  Sink held = w.sink(a, 3);
  Sink gated = held;
  gated.on_token = [&, inner = held.on_token](const TokenEvent& e) {
    std::unique_lock<std::mutex> lock(gate_mu);
    started = true;
    gate_cv.notify_all();
    gate_cv.wait(lock, [&] { return open; });
    return inner(e);
  };
  ASSERT_TRUE(engine.submit(request({1, 2}, 30, 0, 1), gated).accepted);
  {
    std::unique_lock<std::mutex> lock(gate_mu);
    ASSERT_TRUE(gate_cv.wait_for(lock, std::chrono::seconds(30), [&] { return started; }));
  }
  EXPECT_EQ(engine.running(), 1);
  ASSERT_TRUE(engine.submit(request({3, 4}, 5, 0, 1), w.sink(b)).accepted);
  const auto full = engine.submit(request({5}, 5, 0, 1), {});
  EXPECT_FALSE(full.accepted);
  EXPECT_TRUE(full.queue_full);
  EXPECT_NE(full.message.find("queue is full"), std::string::npos) << full.message;
  {
    std::lock_guard<std::mutex> lock(gate_mu);
    open = true;
  }
  gate_cv.notify_all();
  w.wait(2);
  EXPECT_EQ(a.tokens.size(), 3u);
  EXPECT_EQ(a.reason, "stop");
  EXPECT_EQ(b.tokens.size(), 5u);
  EXPECT_EQ(b.reason, "length");
  EXPECT_EQ(engine.running(), 0);
}

TEST(Engine, DrainCancelsWhatIsLeft) {
  auto m = model_of("model.n_layer=1");
  Engine engine(*m, {1, 4});
  Waiter w;
  std::vector<Result> r(3);
  for (auto& x : r) ASSERT_TRUE(engine.submit(request({1, 2, 3}, 40, 0.8, 9), w.sink(x)).accepted);
  const int cancelled = engine.drain(0.0);
  w.wait(3);
  EXPECT_GE(cancelled, 1);
  int cancelled_seen = 0;
  for (const auto& x : r) cancelled_seen += x.reason == "cancelled";
  EXPECT_EQ(cancelled_seen, cancelled);
  EXPECT_FALSE(engine.submit(request({1}, 1, 0, 1), {}).accepted);
}

}  // namespace
}  // namespace mom::service
