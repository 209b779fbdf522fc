#include "core/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <regex>

#include "core/error.h"
#include "core/rng.h"
#include "io/dataloader.h"

namespace mom {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

fs::path checkpoint_path(const fs::path& run_dir, int64_t step) {
  char name[64];
  std::snprintf(name, sizeof name, "ckpt_%08lld.h5", static_cast<long long>(step));
  return run_dir / name;
}

fs::path latest_checkpoint(const fs::path& run_dir) {
  // Temp files of an interrupted save never match: only committed names count.
  static const std::regex pattern(R"(ckpt_(\d{8})\.h5)");
  fs::path best;
  long long best_step = -1;
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec)) return {};
  for (const auto& e : fs::directory_iterator(run_dir)) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (std::regex_match(name, m, pattern) && std::stoll(m[1]) > best_step) best_step = std::stoll(m[1]), best = e.path();
  }
  return best;
}

namespace {

double evaluate(Gpt2& model, io::TokenLoader& loader, int64_t batches, int B, int T) {
  loader.reset();
  const int64_t n = std::min<int64_t>(batches, static_cast<int64_t>(loader.batches_per_epoch()));
  std::vector<int32_t> x(static_cast<size_t>(B) * T), y(x.size());
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    loader.next_batch(x.data(), y.data());
    sum += model.forward(x.data(), y.data(), B, T);
  }
  return n ? sum / static_cast<double>(n) : std::nan("");
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long s = std::lround(seconds);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
  else std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  return buf;
}

// One line per routed stage and router: SKIP rate, mean router entropy, dropped assignments
// and load imbalance (busiest module's load over the mean), averaged over the assembly steps.
void print_routing_summary(const nlohmann::json& stats) {
  for (const auto& stage : stats) {
    for (const char* side : {"attn", "ffn"}) {
      double skip = 0, entropy = 0, imbalance = 0;
      int64_t dropped = 0;
      int n = 0;
      for (const auto& step : stage["steps"]) {
        if (!step.contains(side)) continue;
        const auto& r = step[side];
        skip += r["skip_rate"].get<double>(), entropy += r["entropy"].get<double>();
        dropped += r["dropped"].get<int64_t>();
        double total = 0, mx = 0;
        for (const auto& l : r["load"]) total += l.get<double>(), mx = std::max(mx, l.get<double>());
        imbalance += total > 0 ? mx * static_cast<double>(r["load"].size()) / total : 0;
        ++n;
      }
      if (n == 0) continue;
      std::printf("  routing %s%s: skip %.1f%% | entropy %.3f | busiest/mean load %.2f | dropped %lld\n",
                  stage["stage"].get<std::string>().c_str(), side, 100 * skip / n, entropy / n, imbalance / n,
                  static_cast<long long>(dropped));
    }
  }
  std::fflush(stdout);
}

}  // namespace

TrainSummary train(const io::RunConfig& cfg, const TrainOptions& opts) {
  const io::TrainConfig& tc = cfg.train;
  Backend& be = backend_for(parse_device(tc.device));
  be.set_num_threads(tc.threads);
  const fs::path run_dir = cfg.run_dir;
  fs::create_directories(run_dir);

  const fs::path existing = latest_checkpoint(run_dir);
  require(!opts.resume || !existing.empty(),
          "--resume: no checkpoint in '" + run_dir.string() + "' to resume from; run without --resume to start");
  require(opts.resume || opts.force || existing.empty(),
          "run folder '" + run_dir.string() + "' already has checkpoints (" + existing.filename().string() +
              "); pass --resume to continue it or --force to start over (old checkpoints are replaced as it goes)");

  Gpt2 model(cfg.model, be);
  AdamW opt(model.params(), {tc.beta1, tc.beta2, tc.eps, tc.weight_decay});
  TrainState st;
  Rng rng(tc.seed);
  if (opts.resume) {
    const nlohmann::json saved = read_checkpoint_config(existing);
    require(saved.contains("model") && saved["model"] == cfg.json["model"],
            "--resume: the model in '" + existing.string() + "' differs from this config's 'model' section");
    load_checkpoint(existing, model, &opt, &st);
    rng.set_state(st.rng);
    std::printf("resumed from %s at step %lld\n", existing.string().c_str(), static_cast<long long>(st.step));
  } else if (!opts.init_from.empty()) {
    load_checkpoint(opts.init_from, model, nullptr, nullptr);
    std::printf("initialised weights from %s (fresh optimizer)\n", opts.init_from.c_str());
  } else {
    model.init_weights(rng.next_u64());
  }

  const int B = tc.batch_size, T = tc.seq_len;
  const io::ShardFormat format = io::parse_shard_format(cfg.data.format);
  io::TokenLoader train_loader({{cfg.data.train}, format, B, T, tc.seed, /*shuffle=*/true, 0, 1, cfg.model.vocab_size});
  io::TokenLoader val_loader({{cfg.data.val}, format, B, T, tc.seed, /*shuffle=*/false, 0, 1, cfg.model.vocab_size});
  if (opts.resume) train_loader.restore({st.loader_epoch, st.loader_batch});

  const LrSchedule sched{tc.lr, tc.min_lr, tc.warmup_steps, tc.steps};
  const int64_t last = opts.until_step >= 0 ? std::min(opts.until_step, tc.steps) : tc.steps;
  const bool tty = isatty(fileno(stdout));
  std::ofstream metrics(run_dir / "metrics.jsonl", std::ios::app);
  require(static_cast<bool>(metrics), "cannot write metrics to '" + (run_dir / "metrics.jsonl").string() + "'");

  std::printf("model: %d dense layers + %zu routed stages, width %d, %d heads, context %d, vocab %d: %.2fM "
              "parameters; %s, %d threads\n",
              cfg.model.n_layer, model.stages().size(), cfg.model.n_embd, cfg.model.n_head, cfg.model.n_ctx,
              cfg.model.vocab_size,
              static_cast<double>(model.params().num_elements()) / 1e6, be.name().c_str(), be.num_threads());
  std::printf("active parameters per token %.2fM | %.3f GFLOP per training token\n",
              static_cast<double>(model.active_parameters()) / 1e6, model.flops_per_token(tc.seq_len) / 1e9);
  metrics << nlohmann::json{{"event", "start"},
                            {"parameters", model.params().num_elements()},
                            {"active_parameters", model.active_parameters()},
                            {"flops_per_token", model.flops_per_token(tc.seq_len)},
                            {"start_step", st.step}}
                 .dump()
          << "\n";
  std::printf("data: %llu training tokens, batch %d x %d x %d accumulation = %lld tokens a step\n",
              static_cast<unsigned long long>(train_loader.num_tokens()), B, T, tc.grad_accum, static_cast<long long>(B) * T * tc.grad_accum);
  std::fflush(stdout);

  std::vector<int32_t> x(static_cast<size_t>(B) * T), y(x.size());
  const double grad_scale = 1.0 / (static_cast<double>(B) * T * tc.grad_accum);
  TrainSummary summary;
  double ema_ms = 0;
  fs::path last_saved;
  auto save = [&](int64_t step) {
    const auto ls = train_loader.state();
    st.loader_epoch = ls.epoch, st.loader_batch = ls.batch_in_epoch, st.rng = rng.state();
    const fs::path p = checkpoint_path(run_dir, step);
    save_checkpoint(p, model, &opt, st, cfg.json, /*overwrite=*/true);
    last_saved = p;
    nlohmann::json rec{{"event", "checkpoint"}, {"step", step}, {"path", p.string()}};
    metrics << rec.dump() << "\n" << std::flush;
  };

  for (int64_t step = st.step; step < last; ++step) {
    const auto t0 = Clock::now();
    model.params().zero_grads();
    double loss = 0, aux = 0;
    for (int micro = 0; micro < tc.grad_accum; ++micro) {
      train_loader.next_batch(x.data(), y.data());
      loss += model.forward_backward(x.data(), y.data(), B, T, grad_scale);
      aux += model.aux_loss();
    }
    loss /= tc.grad_accum;
    aux /= tc.grad_accum;
    require(std::isfinite(loss), "training diverged at step " + std::to_string(step + 1) +
                                     ": the loss is not finite; lower train.lr or raise train.warmup_steps");
    const double norm = clip_grad_norm(model.params(), tc.grad_clip);
    const double lr = sched.at(step);
    opt.step(lr);
    be.synchronize();
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    st.step = step + 1;
    st.tokens_seen += static_cast<int64_t>(B) * T * tc.grad_accum;
    ema_ms = step == 0 || ema_ms == 0 ? ms : 0.9 * ema_ms + 0.1 * ms;
    const double tok_s = static_cast<double>(B) * T * tc.grad_accum / (ms / 1000.0);
    const double eta = ema_ms * static_cast<double>(last - st.step) / 1000.0;
    summary.last_train_loss = loss;

    char line[256];
    std::snprintf(line, sizeof line,
                  "step %5lld/%lld | loss %.4f | lr %.2e | grad norm %.3f | %.0f tok/s | %.0f ms/step | ETA %s",
                  static_cast<long long>(st.step), static_cast<long long>(last), loss, lr, norm, tok_s, ms,
                  format_duration(eta).c_str());
    if (tty) std::printf("\r%s\x1b[K", line);
    else std::printf("%s\n", line);
    std::fflush(stdout);
    // nlohmann writes doubles in round-trip precision, so metrics compare bit for bit.
    nlohmann::json rec{{"step", st.step},  {"loss", loss}, {"lr", lr},
                       {"grad_norm", norm}, {"tokens_per_s", tok_s},          {"ms_per_step", ms},
                       {"tokens_seen", st.tokens_seen}};
    if (!model.stages().empty()) {
      rec["aux_loss"] = aux;
      rec["routing"] = model.routing_stats();
    }
    metrics << rec.dump() << "\n";

    const bool final_step = st.step == last;
    if (tc.eval_every > 0 && (st.step % tc.eval_every == 0 || final_step) && tc.eval_batches > 0) {
      const double vl = evaluate(model, val_loader, tc.eval_batches, B, T);
      summary.last_val_loss = vl;
      if (tty) std::printf("\n");
      std::printf("step %5lld | val loss %.4f | val perplexity %.2f\n", static_cast<long long>(st.step), vl,
                  std::exp(vl));
      std::fflush(stdout);
      metrics << nlohmann::json{{"step", st.step}, {"val_loss", vl}}.dump() << "\n";
      if (!model.stages().empty()) print_routing_summary(model.routing_stats());
    }
    metrics << std::flush;
    if ((tc.save_every > 0 && st.step % tc.save_every == 0) || final_step) save(st.step);
  }
  if (tty) std::printf("\n");
  summary.steps_done = st.step;
  summary.checkpoint = last_saved.empty() ? existing : last_saved;
  if (!last_saved.empty()) std::printf("checkpoint: %s\n", last_saved.string().c_str());
  return summary;
}

}  // namespace mom
