// Expert and data parallelism through the real binary under mpirun (oversubscribed on small
// machines): the multi-rank trainer must be the one-process trainer, only spread out.
//
// - Loss trajectories: np 1, 2, 4 x ep_size 1, 2, 4 for a MoM and an MoE model with the same
//   global batch (np x grad_accum micro-batches of B sequences) equal one plain process
//   within 1e-6 relative; one rank under mpirun equals it bit for bit.
// - Checkpoints: saved at ep_size 2, loaded at ep_size 1 and 4 (and other rank counts); the
//   next steps' losses equal the uninterrupted run's.
// - SIGUSR1 to the ranks: every rank finishes its step, the checkpoint is written, exit 75;
//   --auto-resume then finishes the run with the uninterrupted run's losses, bit for bit.
// - Failures: configs that differ between ranks, ep_size not dividing the ranks or a pool,
//   and a rank killed mid-step (the job ends non-zero within a bound; the last complete
//   checkpoint loads).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "tests/support.h"

namespace mom::test {
namespace {

namespace fs = std::filesystem;

constexpr double kRelTol = 1e-6;

std::string mpirun(int np) {
  return std::string(MOM_MPIEXEC) + " --allow-run-as-root --oversubscribe -np " + std::to_string(np) + " ";
}

// MoM: 4 attention + 4 FFN modules, SKIP, top-2, 2 steps, GRU routers, balance loss.
// MoE: 4 experts, top-2, capacity factor 1 (drops happen), aux and z losses.
// AltUp: a MoM chunk, an MoE layer and a SAS-P block inside a K = 2 AltUp stream with Gemma 3n's
// input-dependent coefficients (model_extra).
std::string stack_of(const std::string& kind) {
  if (kind == "AltUp")
    return R"([{"type": "mom", "attn_modules": 4, "ffn_modules": 4, "skip": true, "steps": 2, "top_k": 2,
                "router": "gru", "router_dim": 16, "balance_coef": 0.01},
               {"type": "moe", "experts": 4, "top_k": 2, "aux_coef": 0.01, "z_coef": 0.001},
               {"type": "sas_p", "count": 1}])";
  if (kind == "MoM")
    return R"([{"type": "dense", "count": 1},
               {"type": "mom", "attn_modules": 4, "ffn_modules": 4, "skip": true, "steps": 2, "top_k": 2,
                "router": "gru", "router_dim": 16, "anchor": true, "balance_coef": 0.01}])";
  return R"([{"type": "dense", "count": 1},
             {"type": "moe", "experts": 4, "top_k": 2, "aux_coef": 0.01, "z_coef": 0.001, "capacity_factor": 1.0},
             {"type": "dense", "count": 1}])";
}

std::string config_json(const std::string& kind, const std::string& data, const std::string& run_dir, int steps = 8,
                        int save_every = 0) {
  const std::string altup = kind == "AltUp" ? R"(, "altup": {"k": 2, "coefficients": "input_dependent"})" : "";
  return R"({"model": {"n_ctx": 32, "n_head": 2, "n_embd": 32, "stack": )" + stack_of(kind) + altup + R"(},
            "data": {"train": ")" +
         data + R"(/train_*.bin", "val": ")" + data + R"(/val_*.bin"},
            "train": {"batch_size": 1, "seq_len": 32, "steps": )" +
         std::to_string(steps) + R"(, "warmup_steps": 2, "lr": 2e-3, "threads": 1, "eval_every": 0, "save_every": )" +
         std::to_string(save_every) + R"(, "seed": 11},
            "run_dir": ")" +
         run_dir + R"("})";
}

double relative_gap(double a, double b) { return std::abs(a - b) / std::max(std::abs(a), 1e-30); }

// The largest relative gap between two runs' losses over the steps both have, and how many.
std::pair<double, size_t> compare(const std::map<int64_t, double>& want, const std::map<int64_t, double>& got) {
  double worst = 0;
  size_t n = 0;
  for (const auto& [step, loss] : got) {
    const auto it = want.find(step);
    if (it == want.end()) continue;
    worst = std::max(worst, relative_gap(it->second, loss)), ++n;
  }
  return {worst, n};
}

class ParallelTraining : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::make_unique<ScratchDir>("parallel");
    prepare_tiny_corpus(*dir_ / "data");
  }
  static void TearDownTestSuite() { dir_.reset(); }

  // Writes the config and returns its path.
  static std::string config(const std::string& name, const std::string& kind, int steps = 8, int save_every = 0) {
    const std::string path = *dir_ / (name + ".json");
    write_file(path, config_json(kind, *dir_ / "data", *dir_ / name, steps, save_every));
    return path;
  }
  // `mom train` on np ranks (np 0: a plain process without mpirun).
  static RunResult train(int np, const std::string& cfg, int ep, int accum, const std::string& extra = "") {
    const std::string args = "train --config " + shell_quote(cfg) + " --set train.ep_size=" + std::to_string(ep) +
                             " --set train.grad_accum=" + std::to_string(accum) + " " + extra;
    if (np == 0) return run_mom(args);
    return run(mpirun(np) + shell_quote(mom_binary()) + " " + args);
  }
  static std::map<int64_t, double> losses(const std::string& name) {
    return losses_by_step(*dir_ / (name + "/metrics.jsonl"));
  }

  static std::unique_ptr<ScratchDir> dir_;
};
std::unique_ptr<ScratchDir> ParallelTraining::dir_;

class LossTrajectory : public ParallelTraining, public ::testing::WithParamInterface<const char*> {};

TEST_P(LossTrajectory, EveryRankCountAndEpSizeMatchesOneProcess) {
  const std::string kind = GetParam();
  // Global batch: 4 micro-batches of 1 sequence a step, however they are spread.
  const std::string ref = kind + "_ref";
  RunResult r = train(0, config(ref, kind), 1, 4);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto want = losses(ref);
  ASSERT_EQ(want.size(), 8u);
  for (auto [np, ep] : {std::pair{1, 1}, {2, 1}, {2, 2}, {4, 1}, {4, 2}, {4, 4}}) {
    const std::string name = kind + "_np" + std::to_string(np) + "_ep" + std::to_string(ep);
    r = train(np, config(name, kind), ep, 4 / np);
    ASSERT_EQ(r.exit_code, 0) << name << "\n" << r.output;
    const auto [gap, n] = compare(want, losses(name));
    EXPECT_EQ(n, want.size()) << name;
    EXPECT_LE(gap, kRelTol) << name;
    if (np == 1) {
      EXPECT_EQ(gap, 0.0) << name << ": one rank under mpirun must be the plain process bit for bit";
    }
    // The exchange is only used, and only reported as traffic, across ranks.
    const std::string metrics = read_file(*dir_ / (name + "/metrics.jsonl"));
    EXPECT_NE(metrics.find("\"exchange_bytes\":" + std::string(ep > 1 ? "" : "0,")), std::string::npos) << name;
    if (ep > 1) {
      EXPECT_EQ(metrics.find("\"exchange_bytes\":0,"), std::string::npos) << name;
    }
    std::printf("%s: %zu steps, worst relative loss gap %.2e\n", name.c_str(), n, gap);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, LossTrajectory, ::testing::Values("MoM", "MoE"));

TEST_F(ParallelTraining, CheckpointSavedAtEpSize2LoadsAtEpSize1And4) {
  for (const std::string kind : {"MoM", "MoE"}) {
    const std::string ref = kind + "_straight";
    RunResult r = train(0, config(ref, kind), 1, 4);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto want = losses(ref);
    const std::string saved = kind + "_saved";
    r = train(2, config(saved, kind), 2, 2, "--until-step 4");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const fs::path ckpt = *dir_ / (saved + "/ckpt_00000004.h5");
    ASSERT_TRUE(fs::exists(ckpt));
    // The pools are stored whole along their module axis, marked for readers.
    r = run_mom("ckpt inspect " + shell_quote(ckpt.string()));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("pool_axis = 0"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("saved_ep_size = 2"), std::string::npos) << r.output;
    for (auto [np, ep] : {std::pair{0, 1}, {4, 4}, {4, 1}, {2, 1}}) {
      const std::string name = kind + "_load_np" + std::to_string(np) + "_ep" + std::to_string(ep);
      const std::string cfg = config(name, kind);
      fs::create_directories(*dir_ / name);
      fs::copy_file(ckpt, *dir_ / (name + "/ckpt_00000004.h5"));
      r = train(np, cfg, ep, 4 / std::max(np, 1), "--resume");
      ASSERT_EQ(r.exit_code, 0) << name << "\n" << r.output;
      EXPECT_NE(r.output.find("saved by 2 ranks at ep_size 2"), std::string::npos) << r.output;
      const auto got = losses(name);
      const auto [gap, n] = compare(want, got);
      EXPECT_EQ(n, 4u) << name;
      EXPECT_LE(gap, kRelTol) << name;
      std::printf("%s: steps 5-8 after loading, worst relative loss gap %.2e\n", name.c_str(), gap);
    }
  }
}

// AltUp around sharded pools: the wrapped MoM chunk and MoE layer exchange tokens as without
// AltUp, so 2 and 4 ranks at ep_size 2 and 4 train as one process, and a checkpoint saved at
// ep_size 2 continues at ep_size 1.
TEST_F(ParallelTraining, AltUpAroundShardedPoolsMatchesOneProcess) {
  RunResult r = train(0, config("altup_ref", "AltUp"), 1, 4);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto want = losses("altup_ref");
  ASSERT_EQ(want.size(), 8u);
  for (auto [np, ep] : {std::pair{2, 2}, {4, 4}}) {
    const std::string name = "altup_np" + std::to_string(np) + "_ep" + std::to_string(ep);
    r = train(np, config(name, "AltUp"), ep, 4 / np, np == 2 ? "--until-step 4" : "");
    ASSERT_EQ(r.exit_code, 0) << name << "\n" << r.output;
    const auto [gap, n] = compare(want, losses(name));
    EXPECT_EQ(n, np == 2 ? 4u : 8u) << name;
    EXPECT_LE(gap, kRelTol) << name;
    std::printf("%s: %zu steps, worst relative loss gap %.2e\n", name.c_str(), n, gap);
  }
  // The ep_size-2 run's step-4 checkpoint, continued by one plain process.
  r = train(0, config("altup_np2_ep2", "AltUp"), 1, 4, "--resume");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto [gap, n] = compare(want, losses("altup_np2_ep2"));
  EXPECT_EQ(n, 8u);
  EXPECT_LE(gap, kRelTol);
}

TEST_F(ParallelTraining, SignalStopsEveryRankWithACheckpointAndAutoResumeFinishes) {
  constexpr int kSteps = 60;
  const std::string ref = "signal_straight";
  RunResult r = train(2, config(ref, "MoM", kSteps), 2, 1);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto want = losses(ref);
  const std::string name = "signal";
  const std::string cfg = config(name, "MoM", kSteps);
  const std::string metrics = *dir_ / (name + "/metrics.jsonl");
  // mpirun in the background; once a few steps are logged, SIGUSR1 goes to both ranks.
  const std::string script = mpirun(2) + shell_quote(mom_binary()) + " train --config " + shell_quote(cfg) +
                             " --set train.ep_size=2 > " + shell_quote(*dir_ / "signal.log") +
                             " 2>&1 & MP=$!\n"
                             "for i in $(seq 600); do [ \"$(grep -c '\"loss\"' " +
                             shell_quote(metrics) +
                             " 2>/dev/null)\" -ge 3 ] && break; sleep 0.05; done\n"
                             "pkill -USR1 -P $MP\n"
                             "wait $MP; echo \"exit=$?\"";
  r = run(script);
  const std::string log = read_file(*dir_ / "signal.log");
  ASSERT_NE(r.output.find("exit=75"), std::string::npos) << r.output << log;
  EXPECT_NE(log.find("stopped by signal at step"), std::string::npos) << log;
  const auto partial = losses(name);
  ASSERT_GE(partial.size(), 3u);
  ASSERT_LT(partial.size(), static_cast<size_t>(kSteps)) << "the signal came too late to test anything";
  const std::string step = std::to_string(partial.rbegin()->first);
  EXPECT_TRUE(fs::exists(*dir_ / (name + "/ckpt_" + std::string(8 - step.size(), '0') + step + ".h5")));
  // Same layout, exact resume: the finished run is the uninterrupted one bit for bit.
  r = train(2, cfg, 2, 1, "--auto-resume");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto got = losses(name);
  ASSERT_EQ(got.size(), static_cast<size_t>(kSteps));
  EXPECT_EQ(compare(want, got).first, 0.0);
}

TEST_F(ParallelTraining, RanksWithDifferentConfigsAreStoppedAtStartUp) {
  const std::string cfg = config("mismatch", "MoM");
  // Each rank gets its own learning rate from its rank number.
  const RunResult r = run(mpirun(2) + "sh -c " +
                          shell_quote(shell_quote(mom_binary()) + " train --config " + shell_quote(cfg) +
                                      " --set train.ep_size=2 --set train.lr=0.00${OMPI_COMM_WORLD_RANK}1"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("the ranks were given different configs"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("/train/lr"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(*dir_ / "mismatch/metrics.jsonl"));
}

TEST_F(ParallelTraining, EpSizeMustDivideTheRanksAndEveryPool) {
  RunResult r = train(2, config("bad_ep", "MoM"), 4, 1);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("ep_size"), std::string::npos) << r.output;
  std::string six = config_json("MoE", *dir_ / "data", *dir_ / "bad_pool");
  const std::string four = "\"experts\": 4";
  six.replace(six.find(four), four.size(), "\"experts\": 6");
  write_file(*dir_ / "bad_pool.json", six);
  r = train(4, *dir_ / "bad_pool.json", 4, 1);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("experts (6) is not a multiple of train.ep_size (4)"), std::string::npos) << r.output;
}

TEST_F(ParallelTraining, KilledRankEndsTheJobQuicklyAndTheLastCheckpointLoads) {
  const std::string name = "killed";
  const std::string cfg = config(name, "MoE", 100000, 5);
  // A rank is killed with SIGKILL between checkpoints; the job must end non-zero within 60 s.
  const std::string script = "export MOM_COMM_TIMEOUT_S=30\n" + mpirun(2) + shell_quote(mom_binary()) +
                             " train --config " + shell_quote(cfg) + " --set train.ep_size=2 > " +
                             shell_quote(*dir_ / "killed.log") +
                             " 2>&1 & MP=$!\n"
                             "for i in $(seq 600); do ls " +
                             shell_quote(*dir_ / name) +
                             "/ckpt_*.h5 >/dev/null 2>&1 && break; sleep 0.1; done\n"
                             "sleep 0.7\n"
                             "victim=$(pgrep -P $MP | tail -n 1)\n"
                             "start=$(date +%s%N); kill -9 $victim; wait $MP; rc=$?; end=$(date +%s%N)\n"
                             "echo \"exit=$rc seconds=$(( (end - start) / 1000000000 ))\"";
  RunResult r = run(script);
  std::printf("%s", r.output.c_str());
  const auto at = r.output.find("exit=");
  ASSERT_NE(at, std::string::npos) << r.output;
  EXPECT_NE(std::stoi(r.output.substr(at + 5)), 0) << r.output;
  const auto sec = r.output.find("seconds=");
  ASSERT_NE(sec, std::string::npos);
  EXPECT_LE(std::stoi(r.output.substr(sec + 8)), 60) << r.output;
  // The newest committed checkpoint reads back with valid checksums and evaluates.
  fs::path newest;
  for (const auto& e : fs::directory_iterator(*dir_ / name))
    if (e.path().extension() == ".h5" && e.path().filename().string().rfind("ckpt_", 0) == 0 &&
        e.path().filename().string().size() == 16 && (newest.empty() || e.path() > newest))
      newest = e.path();
  ASSERT_FALSE(newest.empty());
  r = run_mom("ckpt inspect --verify " + shell_quote(newest.string()));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  r = run_mom("eval " + shell_quote(newest.string()) + " --batches 2");
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

}  // namespace
}  // namespace mom::test
