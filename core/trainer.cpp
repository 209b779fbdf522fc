#include "core/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <fstream>
#include <regex>
#include <thread>

#include "core/error.h"
#include "core/rng.h"
#include "io/dataloader.h"
#include "parallel/launch_env.h"
#include "parallel/process_groups.h"

namespace mom {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// Set by SIGUSR1/SIGTERM; read once a step, when the ranks agree to stop.
volatile std::sig_atomic_t g_stop_signal = 0;
void on_stop_signal(int sig) { g_stop_signal = sig; }

// Installs the stop handlers for the life of a run, restoring the previous ones after.
class StopSignals {
 public:
  StopSignals() {
    g_stop_signal = 0;
    old_usr1_ = std::signal(SIGUSR1, on_stop_signal);
    old_term_ = std::signal(SIGTERM, on_stop_signal);
  }
  ~StopSignals() {
    std::signal(SIGUSR1, old_usr1_);
    std::signal(SIGTERM, old_term_);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  void (*old_usr1_)(int);
  void (*old_term_)(int);
};

// printf on rank 0 only: the other ranks compute the same figures and stay quiet.
class LeadOutput {
 public:
  explicit LeadOutput(bool lead) : lead_(lead) {}
  bool lead() const { return lead_; }
  [[gnu::format(printf, 2, 3)]] void printf(const char* fmt, ...) const {
    if (!lead_) return;
    va_list args;
    va_start(args, fmt);
    std::vfprintf(stdout, fmt, args);
    va_end(args);
    std::fflush(stdout);
  }

 private:
  bool lead_;
};

double mean_over_ranks(Communicator& world, double v) {
  world.allreduce_sum(&v, 1);
  return v / world.size();
}

// Every rank must run the same job: rank 0's config is sent to all, each rank lists the keys
// where its own differs, and all ranks fail together with the same message.
void check_same_config(Communicator& world, const nlohmann::json& mine) {
  if (world.size() == 1) return;
  std::string text = mine.dump();
  int64_t size = static_cast<int64_t>(text.size());
  world.broadcast_bytes(&size, sizeof size, 0);
  std::string lead_text(static_cast<size_t>(size), '\0');
  if (world.rank() == 0) lead_text = text;
  world.broadcast_bytes(lead_text.data(), lead_text.size(), 0);
  std::string diff;
  const nlohmann::json lead_json = nlohmann::json::parse(lead_text, nullptr, false);
  for (const auto& op : nlohmann::json::diff(lead_json, mine)) {
    if (!diff.empty()) diff += ", ";
    diff += op["path"].get<std::string>();
  }
  constexpr size_t kSlot = 240;
  diff.resize(kSlot, '\0');
  std::string all(kSlot * static_cast<size_t>(world.size()), '\0');
  world.allgather_bytes(diff.data(), all.data(), kSlot);
  std::string message;
  for (int r = 1; r < world.size(); ++r) {
    const std::string keys(all.c_str() + kSlot * r);
    if (!keys.empty()) message += "; rank " + std::to_string(r) + " differs at " + keys;
  }
  require(message.empty(), "the ranks were given different configs" + message +
                               " (JSON paths vs rank 0). Every rank must run the same config file and --set "
                               "overrides; check the launch command and that the file is the same on every node");
}

// Routing statistics over all ranks: counts (integers: module loads, dropped assignments)
// are summed, rates (skip rate, entropy) averaged. Every rank has the same structure.
nlohmann::json reduce_routing_stats(Communicator& world, nlohmann::json stats) {
  if (world.size() == 1) return stats;
  std::vector<nlohmann::json*> leaves;
  auto walk = [&](auto&& self, nlohmann::json& j) -> void {
    if (j.is_number())
      leaves.push_back(&j);
    else if (j.is_structured())
      for (auto& child : j) self(self, child);
  };
  walk(walk, stats);
  std::vector<double> v;
  for (const auto* leaf : leaves) v.push_back(leaf->get<double>());
  world.allreduce_sum(v.data(), v.size());
  for (size_t i = 0; i < leaves.size(); ++i) {
    if (leaves[i]->is_number_integer())
      *leaves[i] = static_cast<int64_t>(std::llround(v[i]));
    else
      *leaves[i] = v[i] / world.size();
  }
  return stats;
}

double evaluate(Gpt2& model, io::TokenLoader& loader, int64_t batches, int B, int T, Communicator& world) {
  loader.reset();
  const int64_t n = std::min<int64_t>(batches, static_cast<int64_t>(loader.batches_per_epoch()));
  std::vector<int32_t> x(static_cast<size_t>(B) * T), y(x.size());
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    loader.next_batch(x.data(), y.data());
    sum += model.forward(x.data(), y.data(), B, T);
  }
  return n ? mean_over_ranks(world, sum / static_cast<double>(n)) : std::nan("");
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long s = std::lround(seconds);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
  else
    std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
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

// A process killed in the middle of writing a record leaves a line without its newline; the
// records appended after a resume must not be glued to it, so it goes (it is incomplete).
void drop_partial_last_line(const fs::path& path) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (ec || size == 0) return;
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.back() == '\n') return;
  const size_t keep = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
  fs::resize_file(path, keep, ec);
}

// Rank 0's string on every rank.
std::string broadcast_string(Communicator& world, std::string text) {
  int64_t size = static_cast<int64_t>(text.size());
  world.broadcast_bytes(&size, sizeof size, 0);
  text.resize(static_cast<size_t>(size));
  world.broadcast_bytes(text.data(), text.size(), 0);
  return text;
}

// The checkpoint every rank resumes from: rank 0 verifies the folder's checkpoints newest
// first (core/run_folder.h), warns for each damaged one it sets aside, and all ranks take its
// choice, or all fail with the list of what was tried.
fs::path agreed_resume_checkpoint(Communicator& world, const fs::path& run_dir, const LeadOutput& out) {
  std::string chosen, failure;
  if (world.rank() == 0) {
    const ResumeChoice c = choose_resume_checkpoint(run_dir);
    std::string tried;
    for (const auto& s : c.skipped) {
      out.printf("warning: skipping damaged checkpoint %s (%s); %s\n", s.path.string().c_str(), s.error.c_str(),
                 s.moved_to.empty()
                     ? "it could not be moved aside and stays in place"
                     : ("moved aside to " + s.moved_to.filename().string() + ", nothing deleted").c_str());
      tried += "\n  " + s.path.string() + ": " + s.error;
    }
    chosen = c.checkpoint.string();
    if (chosen.empty())
      failure = "no usable checkpoint in '" + run_dir.string() + "' to resume from; tried, newest first:" + tried +
                "\n(the damaged files were moved aside as NAME.damaged); restore a good checkpoint into the folder, "
                "or start over with --force";
  }
  chosen = broadcast_string(world, chosen);
  failure = broadcast_string(world, failure);
  require(!chosen.empty(), failure);
  return chosen;
}

TrainSummary train(const io::RunConfig& cfg, const TrainOptions& opts, Communicator& world) {
  const io::TrainConfig& tc = cfg.train;
  const LeadOutput out(world.rank() == 0);
  check_same_config(world, cfg.json);
  parallel::ProcessGroups groups = parallel::make_process_groups(world, tc.ep_size);
  const int W = world.size();
  Backend& be = backend_for(parse_device(tc.device));
  be.set_matmul_precision(parse_matmul_precision(tc.matmul_precision));
  // threads 0 with several ranks on a node and no OMP_NUM_THREADS: share the cores.
  int threads = tc.threads;
  if (threads == 0 && !std::getenv("OMP_NUM_THREADS")) {
    const int local = parallel::detect_launch_env().local_size;
    if (local > 1) threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / local);
  }
  be.set_num_threads(threads);
  const fs::path run_dir = cfg.run_dir;
  if (out.lead()) {
    fs::create_directories(run_dir);
    for (const fs::path& p : remove_stale_temporaries(run_dir))
      out.printf("removed %s: the temporary file of a save whose process no longer exists\n", p.string().c_str());
  }
  world.barrier();

  const fs::path existing = latest_checkpoint(run_dir);
  const bool resume = opts.resume || (opts.auto_resume && !existing.empty());
  require(!opts.resume || !existing.empty(),
          "--resume: no checkpoint in '" + run_dir.string() + "' to resume from; run without --resume to start");
  require(resume || opts.force || existing.empty(),
          "run folder '" + run_dir.string() + "' already has checkpoints (" + existing.filename().string() +
              "); pass --resume to continue it or --force to start over (old checkpoints are replaced as it goes)");
  const fs::path from = resume ? agreed_resume_checkpoint(world, run_dir, out) : fs::path();

  Gpt2 model(cfg.model, be, DType::F32, groups.ep.get());
  AdamW opt(model.params(), {tc.beta1, tc.beta2, tc.eps, tc.weight_decay});
  TrainState st;
  Rng rng(tc.seed);
  if (resume) {
    const nlohmann::json saved = read_checkpoint_config(from);
    require(saved.contains("model") && saved["model"] == cfg.json["model"],
            "--resume: the model in '" + from.string() + "' differs from this config's 'model' section");
    load_checkpoint(from, model, &opt, &st);
    rng.set_state(st.rng);
    out.printf("resumed from %s at step %lld", from.string().c_str(), static_cast<long long>(st.step));
    if (st.ranks != W || st.ep_size != tc.ep_size)
      out.printf(" (saved by %lld ranks at ep_size %lld; now %d ranks at ep_size %d)", static_cast<long long>(st.ranks),
                 static_cast<long long>(st.ep_size), W, tc.ep_size);
    out.printf("\n");
  } else if (!opts.init_from.empty()) {
    load_checkpoint(opts.init_from, model, nullptr, nullptr);
    out.printf("initialised weights from %s (fresh optimizer)\n", opts.init_from.c_str());
  } else {
    model.init_weights(rng.next_u64());
  }

  // Rank r takes samples [r·B, (r+1)·B) of each global batch of W·B: the W ranks together
  // see what one process with W times the accumulation would see.
  const int B = tc.batch_size, T = tc.seq_len;
  const io::ShardFormat format = io::parse_shard_format(cfg.data.format);
  const int rank = world.rank();
  io::TokenLoader train_loader(
      {{cfg.data.train}, format, B, T, tc.seed, /*shuffle=*/true, rank, W, cfg.model.vocab_size});
  io::TokenLoader val_loader({{cfg.data.val}, format, B, T, tc.seed, /*shuffle=*/false, rank, W, cfg.model.vocab_size});
  const int64_t batch_samples = static_cast<int64_t>(W) * B;
  if (resume) {
    // The saved position counts global batches of the saving run's size; convert it.
    uint64_t batch = st.loader_batch;
    if (st.loader_batch_samples > 0 && st.loader_batch_samples != batch_samples) {
      const uint64_t samples = st.loader_batch * static_cast<uint64_t>(st.loader_batch_samples);
      require(samples % static_cast<uint64_t>(batch_samples) == 0,
              "--resume: the checkpoint stopped after " + std::to_string(samples) +
                  " samples of its epoch, which is "
                  "not a whole number of this run's global batches (" +
                  std::to_string(W) + " ranks x batch size " + std::to_string(B) +
                  "); resume with a rank count and batch size that divide it");
      batch = samples / static_cast<uint64_t>(batch_samples);
    }
    train_loader.restore({st.loader_epoch, batch});
  }

  const LrSchedule sched{tc.lr, tc.min_lr, tc.warmup_steps, tc.steps};
  const int64_t last = opts.until_step >= 0 ? std::min(opts.until_step, tc.steps) : tc.steps;
  // mpirun hands its ranks a pseudo-terminal even when its own output is a file, so runs of
  // several ranks print whole lines.
  const bool tty = isatty(fileno(stdout)) && W == 1;
  std::ofstream metrics;
  if (out.lead()) {
    drop_partial_last_line(run_dir / "metrics.jsonl");
    metrics.open(run_dir / "metrics.jsonl", std::ios::app);
    require(static_cast<bool>(metrics), "cannot write metrics to '" + (run_dir / "metrics.jsonl").string() + "'");
  }
  const int64_t step_tokens = static_cast<int64_t>(W) * B * T * tc.grad_accum;

  out.printf(
      "model: %s, width %d, %d heads, context %d, vocab %d: %.2fM "
      "parameters; %s, %d threads\n",
      model.describe().c_str(), cfg.model.n_embd, cfg.model.n_head, cfg.model.n_ctx, cfg.model.vocab_size,
      static_cast<double>(model.params().global_num_elements()) / 1e6, be.name().c_str(), be.num_threads());
  out.printf("active parameters per token %.2fM | %.3f GFLOP per training token\n",
             static_cast<double>(model.active_parameters()) / 1e6, model.flops_per_token(tc.seq_len) / 1e9);
  if (W > 1)
    out.printf("parallel: %d ranks = %d data-parallel x %d expert-parallel; rank 0 holds %.2fM parameters\n", W,
               groups.layout.dp_size(), tc.ep_size, static_cast<double>(model.params().num_elements()) / 1e6);
  out.printf("data: %llu training tokens, batch %d x %d x %d accumulation x %d ranks = %lld tokens a step\n",
             static_cast<unsigned long long>(train_loader.num_tokens()), B, T, tc.grad_accum, W,
             static_cast<long long>(step_tokens));
  if (out.lead())
    metrics << nlohmann::json{{"event", "start"},
                              {"parameters", model.params().global_num_elements()},
                              {"active_parameters", model.active_parameters()},
                              {"flops_per_token", model.flops_per_token(tc.seq_len)},
                              {"start_step", st.step},
                              {"ranks", W},
                              {"ep_size", tc.ep_size}}
                   .dump()
            << "\n";

  std::vector<int32_t> x(static_cast<size_t>(B) * T), y(x.size());
  // Each rank adds the gradient of its share of the global mean; the all-reduce sums them.
  const double grad_scale = 1.0 / (static_cast<double>(B) * T * tc.grad_accum * W);
  TrainSummary summary;
  double ema_ms = 0;
  fs::path last_saved;
  auto save = [&](int64_t step) {
    const auto ls = train_loader.state();
    st.loader_epoch = ls.epoch, st.loader_batch = ls.batch_in_epoch, st.rng = rng.state();
    st.loader_batch_samples = batch_samples, st.ranks = W, st.ep_size = tc.ep_size;
    const fs::path p = checkpoint_path(run_dir, step);
    const std::string failure = save_checkpoint(p, model, &opt, st, cfg.json, /*overwrite=*/true, nullptr, out.lead());
    int64_t failed = failure.empty() ? 0 : 1;
    world.allreduce_sum(&failed, 1);
    require(failed == 0, out.lead() ? failure : "rank 0 could not write checkpoint '" + p.string() + "'");
    last_saved = p;
    if (!out.lead()) return;
    metrics << nlohmann::json{{"event", "checkpoint"}, {"step", step}, {"path", p.string()}}.dump() << "\n"
            << std::flush;
    // Retention only once the new checkpoint is committed; the newest is always kept.
    const std::vector<fs::path> removed = apply_retention(run_dir, tc.keep_last, tc.keep_every);
    if (removed.empty()) return;
    std::string names;
    nlohmann::json paths = nlohmann::json::array();
    for (const fs::path& r : removed)
      names += (names.empty() ? "" : ", ") + r.filename().string(), paths.push_back(r.string());
    if (tty) out.printf("\n");
    out.printf("retention (train.keep_last %lld, train.keep_every %lld): removed %s\n",
               static_cast<long long>(tc.keep_last), static_cast<long long>(tc.keep_every), names.c_str());
    metrics << nlohmann::json{{"event", "retention"}, {"step", step}, {"removed", paths}}.dump() << "\n" << std::flush;
  };

  StopSignals stop_signals;
  for (int64_t step = st.step; step < last; ++step) {
    const auto t0 = Clock::now();
    model.params().zero_grads();
    model.reset_exchange_stats();
    double loss = 0, aux = 0;
    for (int micro = 0; micro < tc.grad_accum; ++micro) {
      train_loader.next_batch(x.data(), y.data());
      loss += model.forward_backward(x.data(), y.data(), B, T, grad_scale);
      aux += model.aux_loss();
    }
    allreduce_gradients(model.params(), world, *groups.ep_dp);
    // The logged loss is the mean over all ranks' micro-batches (sum and stop flag in one trip).
    double figures[3] = {loss / tc.grad_accum, aux / tc.grad_accum, g_stop_signal ? 1.0 : 0.0};
    world.allreduce_sum(figures, 3);
    loss = figures[0] / W, aux = figures[1] / W;
    const bool stop = figures[2] > 0;
    require(std::isfinite(loss), "training diverged at step " + std::to_string(step + 1) +
                                     ": the loss is not finite; lower train.lr or raise train.warmup_steps");
    const double norm = clip_grad_norm(model.params(), tc.grad_clip, groups.ep.get());
    const double lr = sched.at(step);
    opt.step(lr);
    be.synchronize();
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    st.step = step + 1;
    st.tokens_seen += step_tokens;
    ema_ms = step == 0 || ema_ms == 0 ? ms : 0.9 * ema_ms + 0.1 * ms;
    const double tok_s = static_cast<double>(step_tokens) / (ms / 1000.0);
    const double eta = ema_ms * static_cast<double>(last - st.step) / 1000.0;
    summary.last_train_loss = loss;
    // Token exchange of this step: bytes sent between ranks (all ranks), mean seconds inside.
    const parallel::ExchangeStats ex = model.exchange_stats();
    double exchange[2] = {static_cast<double>(ex.bytes_sent), ex.seconds};
    world.allreduce_sum(exchange, 2);
    const double exchange_s = exchange[1] / W, exchange_share = exchange_s / (ms / 1000.0);
    const nlohmann::json routing =
        model.routed_stage_count() == 0 ? nlohmann::json() : reduce_routing_stats(world, model.routing_stats());

    char line[320];
    int n = std::snprintf(line, sizeof line,
                          "step %5lld/%lld | loss %.4f | lr %.2e | grad norm %.3f | %.0f tok/s | %.0f ms/step",
                          static_cast<long long>(st.step), static_cast<long long>(last), loss, lr, norm, tok_s, ms);
    if (tc.ep_size > 1 && model.routed_stage_count() > 0)
      n += std::snprintf(line + n, sizeof line - n, " | exchange %.0f%%", 100 * exchange_share);
    std::snprintf(line + n, sizeof line - n, " | ETA %s", format_duration(eta).c_str());
    if (tty)
      out.printf("\r%s\x1b[K", line);
    else
      out.printf("%s\n", line);
    // nlohmann writes doubles in round-trip precision, so metrics compare bit for bit.
    nlohmann::json rec{{"step", st.step},
                       {"loss", loss},
                       {"lr", lr},
                       {"grad_norm", norm},
                       {"tokens_per_s", tok_s},
                       {"ms_per_step", ms},
                       {"tokens_seen", st.tokens_seen},
                       {"ranks", W},
                       {"ep_size", tc.ep_size}};
    if (model.routed_stage_count() > 0) {
      rec["aux_loss"] = aux;
      rec["routing"] = routing;
      rec["exchange_bytes"] = static_cast<int64_t>(exchange[0]);
      rec["exchange_trips"] = ex.trips;
      rec["exchange_s"] = exchange_s;
      rec["exchange_share"] = exchange_share;
    }
    if (out.lead()) metrics << rec.dump() << "\n";

    const bool final_step = st.step == last;
    if (tc.eval_every > 0 && (st.step % tc.eval_every == 0 || final_step) && tc.eval_batches > 0 && !stop) {
      const double vl = evaluate(model, val_loader, tc.eval_batches, B, T, world);
      summary.last_val_loss = vl;
      if (tty) out.printf("\n");
      out.printf("step %5lld | val loss %.4f | val perplexity %.2f\n", static_cast<long long>(st.step), vl,
                 std::exp(vl));
      if (out.lead()) metrics << nlohmann::json{{"step", st.step}, {"val_loss", vl}}.dump() << "\n";
      const nlohmann::json val_routing =
          model.routed_stage_count() == 0 ? nlohmann::json() : reduce_routing_stats(world, model.routing_stats());
      if (out.lead() && model.routed_stage_count() > 0) print_routing_summary(val_routing);
    }
    if (out.lead()) metrics << std::flush;
    if ((tc.save_every > 0 && st.step % tc.save_every == 0) || final_step || stop) save(st.step);
    if (stop) {
      if (tty) out.printf("\n");
      out.printf(
          "stopped by signal at step %lld: checkpoint %s saved; run again with --resume (or --auto-resume) "
          "to continue\n",
          static_cast<long long>(st.step), last_saved.string().c_str());
      if (out.lead())
        metrics << nlohmann::json{{"event", "stopped_by_signal"}, {"step", st.step}}.dump() << "\n" << std::flush;
      summary.stopped_by_signal = true;
      break;
    }
  }
  if (tty) out.printf("\n");
  summary.steps_done = st.step;
  summary.checkpoint = last_saved.empty() ? from : last_saved;
  if (!last_saved.empty() && !summary.stopped_by_signal) out.printf("checkpoint: %s\n", last_saved.string().c_str());
  return summary;
}

}  // namespace mom
