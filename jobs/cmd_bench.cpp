// `mom bench train`: times training steps of a config's model on synthetic tokens (outside the
// timed region: zeroing the gradients) and reports step time, its forward+backward part, peak
// RSS and the memory the step needs in principle, as JSON for
// jobs/bench/cpu_vs_torch.py, which runs PyTorch on the same model beside it.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/gpt2.h"
#include "core/optimizer.h"
#include "core/rng.h"
#include "io/config.h"
#include "jobs/commands.h"

namespace mom::jobs {

void add_bench_command(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks");
  bench->require_subcommand(1);
  struct Args {
    std::string config;
    std::vector<std::string> overrides;
    int steps = 10, warmup = 2;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = bench->add_subcommand("train", "Time training steps on synthetic tokens; prints JSON");
  cmd->add_option("-c,--config", args->config, "JSON config (omitted: the embedded tiny job)");
  cmd->add_option("--set", args->overrides, "Override a config key (repeatable)");
  cmd->add_option("--steps", args->steps, "Timed steps")->check(CLI::PositiveNumber);
  cmd->add_option("--warmup", args->warmup, "Untimed steps first")->check(CLI::NonNegativeNumber);
  cmd->callback([args] {
    const io::RunConfig cfg = io::load_config(args->config, args->overrides);
    Backend& be = backend_for(parse_device(cfg.train.device));
    be.set_num_threads(cfg.train.threads);
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
    const nlohmann::json out{
        {"backend", be.name()},
        {"threads", be.num_threads()},
        {"parameters", model.params().num_elements()},
        {"step_ms_median", ms[ms.size() / 2]},
        {"step_ms_min", ms.front()},
        {"fwd_bwd_ms_median", fwd_bwd_ms[fwd_bwd_ms.size() / 2]},
        {"peak_rss_bytes", static_cast<double>(ru.ru_maxrss) * 1024.0},
        // parameters + gradients + two AdamW moments, and what forward keeps for backward
        {"needed_state_bytes", 4.0 * param_bytes},
        {"needed_activation_bytes", static_cast<double>(model.saved_activation_bytes())},
        {"scratch_bytes", static_cast<double>(model.activation_bytes() - model.saved_activation_bytes())},
    };
    std::printf("%s\n", out.dump().c_str());
  });
}

}  // namespace mom::jobs
