// `mom bench train`: times training steps of a config's model on synthetic tokens (outside the
// timed region: zeroing the gradients) and reports step time, its forward+backward part, peak
// RSS and the memory the step needs in principle, as JSON for
// jobs/bench/cpu_vs_torch.py, which runs PyTorch on the same model beside it.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/gpt2.h"
#include "core/optimizer.h"
#include "core/rng.h"
#include "io/config.h"
#include "jobs/commands.h"
#include "router/service/engine.h"

namespace mom::jobs {

namespace {

// `mom bench decode`: decoding speed through the serving engine (router/service/engine.h) on a
// config's model with random weights: one stream, S concurrent streams, and the cost of one
// cached token at growing prefix lengths.
void add_decode_bench(CLI::App& bench) {
  struct Args {
    std::string config;
    std::vector<std::string> overrides;
    int prompt = 16, tokens = 64, streams = 8;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd =
      bench.add_subcommand("decode", "Time KV-cached decoding (1 and S streams, cost by prefix); prints JSON");
  cmd->add_option("-c,--config", args->config, "JSON config (omitted: the embedded tiny job)");
  cmd->add_option("--set", args->overrides, "Override a config key (repeatable)");
  cmd->add_option("--prompt", args->prompt, "Prompt tokens")->check(CLI::PositiveNumber);
  cmd->add_option("--tokens", args->tokens, "Tokens to generate per stream")->check(CLI::PositiveNumber);
  cmd->add_option("--streams", args->streams, "Concurrent streams")->check(CLI::PositiveNumber);
  cmd->callback([args] {
    using Clock = std::chrono::steady_clock;
    const io::RunConfig cfg = io::load_config(args->config, args->overrides);
    Backend& be = backend_for(parse_device(cfg.train.device));
    be.set_num_threads(cfg.train.threads);
    be.set_matmul_precision(parse_matmul_precision(cfg.train.matmul_precision));
    Gpt2 model(cfg.model, be);
    model.init_weights(cfg.train.seed);
    const int V = cfg.model.vocab_size, ctx = cfg.model.n_ctx;
    require(args->prompt + args->tokens <= ctx,
            "--prompt + --tokens must fit the context (" + std::to_string(ctx) + ")");
    Rng rng(cfg.train.seed);
    auto prompt = [&] {
      std::vector<int32_t> p(static_cast<size_t>(args->prompt));
      for (auto& t : p) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(V)));
      return p;
    };
    // S streams at once; returns (decode seconds after every prefill, tokens decoded).
    auto run = [&](int S) {
      service::Engine engine(model, {S, S});
      std::mutex mu;
      std::condition_variable cv;
      int done = 0, first_tokens = 0;
      Clock::time_point all_started;
      int64_t after_first = 0;
      for (int i = 0; i < S; ++i) {
        service::GenerateRequest r;
        r.prompt = prompt(), r.max_tokens = args->tokens, r.seed = static_cast<uint64_t>(i);
        r.sampling.temperature = 0.8, r.sampling.top_k = 40;
        r.logprobs = -1;  // as a completion request that does not ask for them
        auto seen = std::make_shared<int>(0);
        engine.submit(r, {nullptr,
                          [&, seen](const service::TokenEvent&) {
                            std::lock_guard<std::mutex> lock(mu);
                            if ((*seen)++ == 0 && ++first_tokens == S)
                              all_started = Clock::now();
                            else if (first_tokens == S)
                              ++after_first;
                            return true;
                          },
                          [&](const std::string&) {
                            std::lock_guard<std::mutex> lock(mu);
                            ++done;
                            cv.notify_all();
                          }});
      }
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return done == S; });
      const double s = std::chrono::duration<double>(Clock::now() - all_started).count();
      return std::pair<double, int64_t>{s, after_first};
    };
    const auto [one_s, one_n] = run(1);
    const auto [many_s, many_n] = run(args->streams);
    // One cached token at each prefix length, single stream.
    nlohmann::json curve = nlohmann::json::array();
    model.prepare_decode(1, ctx);
    std::vector<int32_t> seq(static_cast<size_t>(ctx));
    for (auto& t : seq) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(V)));
    std::vector<float> logits;
    std::vector<int32_t> slots(static_cast<size_t>(ctx), 0), pos(static_cast<size_t>(ctx));
    for (int i = 0; i < ctx; ++i) pos[static_cast<size_t>(i)] = i;
    const int reps = 8;
    for (int at = ctx / 8; at + reps <= ctx; at += ctx / 8) {
      model.decode_step(seq.data(), slots.data(), pos.data(), at, {at - 1}, logits);
      BatchInvariant invariant(be);
      const auto t0 = Clock::now();
      for (int k = 0; k < reps; ++k) model.decode_step(&seq[at + k], &slots[0], &pos[at + k], 1, {0}, logits);
      curve.push_back({{"prefix", at},
                       {"ms_per_token", std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / reps}});
    }
    const nlohmann::json out{{"backend", be.name()},
                             {"threads", be.num_threads()},
                             {"model", model.describe()},
                             {"parameters", model.params().num_elements()},
                             {"single_stream_tokens_per_s", static_cast<double>(one_n) / one_s},
                             {"streams", args->streams},
                             {"aggregate_tokens_per_s", static_cast<double>(many_n) / many_s},
                             {"ms_per_token_by_prefix", curve}};
    std::printf("%s\n", out.dump().c_str());
  });
}

}  // namespace

void add_bench_command(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks");
  bench->require_subcommand(1);
  add_decode_bench(*bench);
  struct Args {
    std::string config;
    std::vector<std::string> overrides;
    int steps = 10, warmup = 2;
    double peak_tflops = 0;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = bench->add_subcommand("train", "Time training steps on synthetic tokens; prints JSON");
  cmd->add_option("-c,--config", args->config, "JSON config (omitted: the embedded tiny job)");
  cmd->add_option("--set", args->overrides, "Override a config key (repeatable)");
  cmd->add_option("--steps", args->steps, "Timed steps")->check(CLI::PositiveNumber);
  cmd->add_option("--warmup", args->warmup, "Untimed steps first")->check(CLI::NonNegativeNumber);
  cmd->add_option("--peak-tflops", args->peak_tflops,
                  "The device's peak TFLOP/s for the MFU figure (e.g. 790 for an H100/H200 in bf16; 0: no MFU)")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([args] {
    const io::RunConfig cfg = io::load_config(args->config, args->overrides);
    Backend& be = backend_for(parse_device(cfg.train.device));
    be.set_num_threads(cfg.train.threads);
    be.set_matmul_precision(parse_matmul_precision(cfg.train.matmul_precision));
    Gpt2 model(cfg.model, be);
    model.init_weights(cfg.train.seed);
    AdamW opt(model.params(), {cfg.train.beta1, cfg.train.beta2, cfg.train.eps, cfg.train.weight_decay});
    const int B = cfg.train.batch_size, T = cfg.train.seq_len;
    Rng rng(cfg.train.seed);
    std::vector<int32_t> x(static_cast<size_t>(B) * T), y(x.size());
    // Full step (forward, backward, clipping, AdamW) and its forward+backward part alone: the
    // optimizer's cost scales with all parameters, the layers' with the active ones.
    std::vector<double> ms, fwd_bwd_ms;
    for (int s = 0; s < args->warmup + args->steps; ++s) {
      for (auto& t : x) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(cfg.model.vocab_size)));
      for (auto& t : y) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(cfg.model.vocab_size)));
      model.params().zero_grads();
      be.synchronize();
      const auto t0 = std::chrono::steady_clock::now();
      model.forward_backward(x.data(), y.data(), B, T, 1.0 / (static_cast<double>(B) * T));
      be.synchronize();
      const auto t1 = std::chrono::steady_clock::now();
      clip_grad_norm(model.params(), cfg.train.grad_clip);
      opt.step(cfg.train.lr);
      be.synchronize();
      const auto t2 = std::chrono::steady_clock::now();
      if (s >= args->warmup) {
        ms.push_back(std::chrono::duration<double, std::milli>(t2 - t0).count());
        fwd_bwd_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      }
    }
    std::sort(ms.begin(), ms.end());
    std::sort(fwd_bwd_ms.begin(), fwd_bwd_ms.end());
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    const double param_bytes = static_cast<double>(model.params().num_elements()) * 4.0;
    // Throughput from the median step; FLOPs are llm.c's 6N + 6LCT over the parameters and
    // attention layers a token uses (Gpt2::flops_per_token), so routed models count active work.
    const double tokens_per_s = static_cast<double>(B) * T / (ms[ms.size() / 2] / 1e3);
    const double flops_per_token = model.flops_per_token(T);
    nlohmann::json out{
        {"backend", be.name()},
        {"threads", be.num_threads()},
        {"matmul_precision", cfg.train.matmul_precision},
        {"parameters", model.params().num_elements()},
        {"batch_size", B},
        {"seq_len", T},
        {"step_ms_median", ms[ms.size() / 2]},
        {"tokens_per_s", tokens_per_s},
        {"flops_per_token", flops_per_token},
        {"active_parameters", model.active_parameters()},
        {"step_ms_min", ms.front()},
        {"fwd_bwd_ms_median", fwd_bwd_ms[fwd_bwd_ms.size() / 2]},
        {"peak_rss_bytes", static_cast<double>(ru.ru_maxrss) * 1024.0},
        // parameters + gradients + two AdamW moments, and what forward keeps for backward
        {"needed_state_bytes", 4.0 * param_bytes},
        {"needed_activation_bytes", static_cast<double>(model.saved_activation_bytes())},
        {"scratch_bytes", static_cast<double>(model.activation_bytes() - model.saved_activation_bytes())},
    };
    if (args->peak_tflops > 0) out["mfu"] = tokens_per_s * flops_per_token / (args->peak_tflops * 1e12);
    std::printf("%s\n", out.dump().c_str());
  });
}

}  // namespace mom::jobs
