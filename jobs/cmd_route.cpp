// `mom route`: the routing trace of a whole token file, to HDF5, for offline analysis.
//
// What it does: scores a token file exactly as `mom eval` does (the same loader, windows of T+1
// tokens at stride T, in stream order, the same batches; so the mean loss is eval's) and, after
// each batch's forward, takes every routed stage's router decisions (Gpt2::routing_trace) and
// appends them, token by token, to one dataset per stage, router and field. Row i of every
// dataset is token i of the stream (the windows tile it), so positions, documents and the
// per-token loss line up without an index. Layout and semantics: docs/routing.md.
//
// Why through the checkpoint file layer: the trace gets the same atomic commit (a crash leaves
// no half-written file under the final name), Fletcher32 on every chunk and checked metadata;
// `mom ckpt inspect --verify` and h5py read it. Rows are buffered and written in blocks of at
// least kFlushTokens, so chunks are written whole rather than rewritten once per batch.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/checkpointing.h"
#include "core/error.h"
#include "core/gpt2.h"
#include "io/checkpoint_file.h"
#include "io/config.h"
#include "io/dataloader.h"
#include "jobs/commands.h"
#include "jobs/scoring.h"

namespace mom::jobs {
namespace {

// Buffered tokens before a block of rows goes to the file (about a megabyte per dataset).
constexpr int64_t kFlushTokens = int64_t{1} << 16;

// One dataset [tokens, inner...] filled block by block of rows.
template <typename T>
struct Column {
  Column() = default;
  Column(std::string n, std::vector<int64_t> s) : name(std::move(n)), shape(std::move(s)) {}
  std::string name;
  std::vector<int64_t> shape;  // global shape, axis 0 = tokens
  int64_t row = 1;             // elements per token
  std::vector<T> buf;          // rows not yet written
  int64_t written = 0;         // rows already in the file

  void create(io::CheckpointWriter& w, io::DType dtype) {
    row = 1;
    for (size_t i = 1; i < shape.size(); ++i) row *= shape[i];
    w.create(name, shape, dtype);
  }
  void flush(io::CheckpointWriter& w) {
    const int64_t rows = static_cast<int64_t>(buf.size()) / row;
    if (rows == 0) return;
    w.write_rows(name, written, written + rows, buf.data());
    written += rows;
    buf.clear();
  }
};

// The trace of one router side of one stage over all its assembly steps.
struct RouterColumns {
  std::string group;  // "trace/chunks/0/attn"
  int steps = 0, K = 0, classes = 0, modules = 0;
  Column<int32_t> modules_col, dropped_col;
  Column<double> weights_col, probs_col;
  std::vector<int64_t> load;  // tokens per class (modules, then SKIP), all steps together
};

}  // namespace

void add_route_command(CLI::App& app) {
  struct Args {
    std::string ckpt, out;
    std::vector<std::string> data;
    ScoringOptions scoring;
    bool force = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd =
      app.add_subcommand("route", "Write the routing trace of every token of a token file to HDF5 (docs/routing.md)");
  cmd->add_option("checkpoint", args->ckpt, "Checkpoint (.h5)")->required();
  cmd->add_option("--data", args->data, "Token files to route (paths or globs such as DIR/val_*.bin)")->required();
  cmd->add_option("-o,--out", args->out, "The trace file to write (.h5)")->required();
  add_scoring_options(cmd, args->scoring);
  cmd->add_flag("--force", args->force, "Replace an existing trace file");
  cmd->callback([args] {
    std::error_code ec;
    require(args->force || !std::filesystem::exists(args->out, ec),
            "trace file " + args->out + " exists; pass --force to replace it");
    ScoringRun run = open_scoring(args->ckpt, args->data, args->scoring);
    Gpt2& model = *run.model;
    const int B = run.B, T = run.T;
    const int64_t n = run.batches;
    const int64_t N = static_cast<int64_t>(B) * T, total = n * N;

    // Pool sizes per stage name, for the group attributes.
    std::map<std::string, const RoutedStageConfig*> stage_cfg;
    for (const auto& b : model.blocks())
      if (const RoutedStage* st = b->routed_stage()) stage_cfg[st->name()] = &st->config();

    io::CheckpointWriter w(args->out, args->force);
    Column<int32_t> tokens{"tokens", {total}}, targets{"targets", {total}};
    Column<double> losses{"losses", {total}};
    tokens.create(w, io::DType::I32), targets.create(w, io::DType::I32), losses.create(w, io::DType::F64);
    std::vector<RouterColumns> routers;  // made after the first forward, when K and classes are known

    std::vector<int32_t> x(static_cast<size_t>(N)), y(x.size());
    std::vector<double> tl;
    double sum = 0;
    auto flush_all = [&] {
      tokens.flush(w), targets.flush(w), losses.flush(w);
      for (RouterColumns& r : routers)
        r.modules_col.flush(w), r.weights_col.flush(w), r.probs_col.flush(w), r.dropped_col.flush(w);
    };
    for (int64_t i = 0; i < n; ++i) {
      run.loader->next_batch(x.data(), y.data());
      sum += model.forward(x.data(), y.data(), B, T);
      model.token_losses(tl);
      require(static_cast<int64_t>(tl.size()) == N, "mom route: the model returned " + std::to_string(tl.size()) +
                                                        " token losses for " + std::to_string(N) + " tokens");
      tokens.buf.insert(tokens.buf.end(), x.begin(), x.end());
      targets.buf.insert(targets.buf.end(), y.begin(), y.end());
      losses.buf.insert(losses.buf.end(), tl.begin(), tl.end());

      // Per stage, per side: that side's RouterTrace of every step, in step order.
      size_t r_at = 0;
      for (const auto& stage : model.routing_trace()) {
        for (const char* side : {"attn", "ffn"}) {
          std::vector<const RouterTrace*> steps;
          for (const RouterTrace& t : stage.routers)
            if (t.router == side) steps.push_back(&t);
          if (steps.empty()) continue;
          std::sort(steps.begin(), steps.end(), [](auto* a, auto* b) { return a->step < b->step; });
          const int S = static_cast<int>(steps.size()), K = steps[0]->K, C = steps[0]->classes;
          for (const RouterTrace* t : steps)
            require(t->N == N && t->K == K && t->classes == C,
                    "mom route: stage " + stage.stage + side + " traced an unexpected shape");
          if (i == 0) {
            RouterColumns r;
            r.group = "trace/" + stage.stage + side;
            r.steps = S, r.K = K, r.classes = C;
            const RoutedStageConfig* sc = stage_cfg.at(stage.stage);
            r.modules = std::string(side) == "attn" ? sc->attn_modules : sc->ffn_modules;
            r.modules_col = {r.group + "/modules", {total, S, K}};
            r.weights_col = {r.group + "/weights", {total, S, K}};
            r.probs_col = {r.group + "/probs", {total, S, C}};
            r.dropped_col = {r.group + "/dropped", {total, S, K}};
            r.modules_col.create(w, io::DType::I32), r.weights_col.create(w, io::DType::F64);
            r.probs_col.create(w, io::DType::F64), r.dropped_col.create(w, io::DType::I32);
            r.load.assign(static_cast<size_t>(C), 0);
            routers.push_back(std::move(r));
          }
          require(r_at < routers.size() && routers[r_at].group == "trace/" + stage.stage + side,
                  "mom route: the model's routed stages changed between batches");
          RouterColumns& r = routers[r_at++];
          // [N, S, K] from S arrays of [N, K]: token-major, then step, then choice.
          for (int64_t t = 0; t < N; ++t)
            for (int s = 0; s < S; ++s) {
              const RouterTrace& tr = *steps[static_cast<size_t>(s)];
              for (int k = 0; k < K; ++k) {
                const size_t at = static_cast<size_t>(t * K + k);
                const int32_t m = tr.modules[at];
                r.modules_col.buf.push_back(m);
                r.weights_col.buf.push_back(tr.weights[at]);
                r.dropped_col.buf.push_back(tr.dropped[at]);
                ++r.load[static_cast<size_t>(m < 0 ? C - 1 : m)];
              }
              const double* p = tr.probs.data() + static_cast<size_t>(t) * C;
              r.probs_col.buf.insert(r.probs_col.buf.end(), p, p + C);
            }
        }
      }
      require(r_at == routers.size(), "mom route: the model's routed stages changed between batches");
      if (static_cast<int64_t>(tokens.buf.size()) >= kFlushTokens) flush_all();
    }
    flush_all();
    const double loss = sum / static_cast<double>(n);

    nlohmann::json disabled = args->scoring.disabled;
    w.set_attr("/", "kind", std::string("mom-routing-trace"));
    w.set_attr("/", "trace_version", int64_t{1});
    w.set_attr("/", "checkpoint", args->ckpt);
    w.set_attr("/", "config", run.config_json.dump());
    w.set_attr("/", "data", nlohmann::json(args->data).dump());
    w.set_attr("/", "seq_len", T);
    w.set_attr("/", "batch_size", B);
    w.set_attr("/", "batches", n);
    w.set_attr("/", "tokens", total);
    w.set_attr("/", "disabled_modules", disabled.dump());
    w.set_attr("/", "mean_loss", loss);
    nlohmann::json stages = nlohmann::json::array();
    for (const RouterColumns& r : routers) {
      w.set_attr(r.group, "steps", r.steps);
      w.set_attr(r.group, "top_k", r.K);
      w.set_attr(r.group, "classes", r.classes);
      w.set_attr(r.group, "modules", r.modules);
      w.set_attr(r.group, "skip", static_cast<int64_t>(r.classes > r.modules));
      stages.push_back(r.group.substr(6));
    }
    w.set_attr("/", "routers", stages.dump());
    w.commit();

    std::string pattern;
    for (const auto& d : args->data) pattern += (pattern.empty() ? "" : " ") + d;
    std::printf("%s\n", scoring_line(pattern, run, loss, args->scoring).c_str());
    if (routers.empty())
      std::printf("the model has no routed stages: %s holds tokens, targets and losses only\n", args->out.c_str());
    for (const RouterColumns& r : routers) {
      // The share of all (token, step, choice) assignments per class, SKIP last.
      const double all = static_cast<double>(total) * r.steps * r.K;
      std::printf("%s: [%lld, %d, %d] load", r.group.c_str(), static_cast<long long>(total), r.steps, r.K);
      for (int c = 0; c < r.classes; ++c)
        std::printf(" %s%.3f", c < r.modules ? (std::to_string(c) + ":").c_str() : "SKIP:",
                    static_cast<double>(r.load[static_cast<size_t>(c)]) / all);
      std::printf("\n");
    }
    std::printf("wrote %s\n", args->out.c_str());
  });
}

}  // namespace mom::jobs
