// Runs that survive bad disks and explain themselves (core/run_folder.h, mom eval, plots):
// - a damaged newest checkpoint (truncated, bit-flipped, garbage) is skipped by --auto-resume,
//   named in a warning and kept (moved aside), and the finished run equals the uninterrupted
//   one bit for bit; with every checkpoint damaged the run stops with the list, exit 2;
// - retention keeps exactly keep_last + every keep_every-th + the newest, also across kill -9
//   and resume; stale temporary files of a dead process go, a live one's stay;
// - "val loss n/a" when no evaluation ran; `mom eval --seq-len` equals an independent
//   computation over stride-T windows and refuses T above the context;
// - jobs/analysis/plot_run.py draws a resumed run and fails clearly without metrics.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include "core/run_folder.h"
#include "tests/support.h"

namespace mom::test {
namespace {

namespace fs = std::filesystem;

class RunFolder : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir("run-folder");
    prepare_tiny_corpus(*dir_ / "data");
  }
  static void TearDownTestSuite() { delete dir_; }
  // A tiny config for run folder `name`: 20 steps, a checkpoint every 5.
  static std::string config(const std::string& name, const std::string& extra = "") {
    const std::string path = *dir_ / (name + ".json");
    write_file(path, tiny_config_json(*dir_ / "data", *dir_ / name,
                                      R"("save_every": 5)" + (extra.empty() ? "" : ", " + extra)));
    return path;
  }
  static std::set<int64_t> steps_in(const std::string& name) {
    std::set<int64_t> s;
    for (const auto& p : checkpoints_newest_first(*dir_ / name)) s.insert(checkpoint_step(p));
    return s;
  }
  static ScratchDir* dir_;
};
ScratchDir* RunFolder::dir_ = nullptr;

// Damage in three forms, each written over a copy of a real checkpoint.
void truncate_file(const fs::path& p) { fs::resize_file(p, fs::file_size(p) / 2); }
void flip_bits(const fs::path& p) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  const auto size = static_cast<std::streamoff>(fs::file_size(p));
  for (const std::streamoff at : {size / 3, size / 2, 2 * size / 3}) {
    f.seekg(at);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x5A);
    f.seekp(at);
    f.write(&c, 1);
  }
}
void overwrite_with_garbage(const fs::path& p) {
  std::string junk(static_cast<size_t>(fs::file_size(p)), '\0');
  for (size_t i = 0; i < junk.size(); ++i) junk[i] = static_cast<char>((i * 2654435761u) >> 13);
  write_file(p, junk);
}

TEST_F(RunFolder, AutoResumeSkipsADamagedNewestCheckpoint) {
  RunResult r = run_mom("train --config " + shell_quote(config("straight")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto want = losses_by_step(*dir_ / "straight/metrics.jsonl");
  ASSERT_EQ(want.size(), 20u);
  const std::pair<const char*, void (*)(const fs::path&)> damages[] = {
      {"truncated", truncate_file}, {"bit-flipped", flip_bits}, {"garbage", overwrite_with_garbage}};
  for (const auto& [label, damage] : damages) {
    const std::string name = std::string("damaged-") + label;
    r = run_mom("train --config " + shell_quote(config(name)) + " --until-step 15");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const fs::path newest = dir_->path() / name / "ckpt_00000015.h5";
    damage(newest);
    const std::string damaged_bytes = read_file(newest);
    r = run_mom("train --config " + shell_quote(config(name)) + " --auto-resume");
    ASSERT_EQ(r.exit_code, 0) << label << "\n" << r.output;
    EXPECT_NE(r.output.find("warning: skipping damaged checkpoint " + newest.string()), std::string::npos)
        << label << "\n"
        << r.output;
    EXPECT_NE(r.output.find("resumed from " + (dir_->path() / name / "ckpt_00000010.h5").string()), std::string::npos) << r.output;
    // Kept, byte for byte, beside the good checkpoint of step 15 the resumed run wrote.
    EXPECT_EQ(read_file(newest.string() + ".damaged"), damaged_bytes) << label;
    EXPECT_EQ(run_mom("ckpt inspect --verify " + shell_quote(newest.string())).exit_code, 0) << label;
    const auto got = losses_by_step(dir_->path() / name / "metrics.jsonl");  // newest record per step
    ASSERT_EQ(got.size(), 20u) << label;
    for (int64_t s = 1; s <= 20; ++s) EXPECT_EQ(got.at(s), want.at(s)) << label << ": loss differs at step " << s;
  }
  // Every checkpoint damaged: a clear error listing them, exit 2, nothing deleted.
  const std::string name = "all-damaged";
  r = run_mom("train --config " + shell_quote(config(name)) + " --until-step 10");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  truncate_file(dir_->path() / name / "ckpt_00000010.h5");
  overwrite_with_garbage(dir_->path() / name / "ckpt_00000005.h5");
  r = run_mom("train --config " + shell_quote(config(name)) + " --auto-resume");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("no usable checkpoint"), std::string::npos) << r.output;
  for (const char* f : {"ckpt_00000010.h5", "ckpt_00000005.h5"}) {
    EXPECT_NE(r.output.find(f), std::string::npos) << r.output;
    EXPECT_TRUE(fs::exists(dir_->path() / name / (std::string(f) + ".damaged"))) << f;
  }
  EXPECT_EQ(r.output.find("internal error"), std::string::npos) << r.output;
}

TEST_F(RunFolder, RetentionKeepsTheDocumentedSetAcrossKillAndResume) {
  const std::string extra = R"("steps": 30, "save_every": 1, "keep_last": 2, "keep_every": 10)";
  RunResult r = run_mom("train --config " + shell_quote(config("retention", extra)));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(steps_in("retention"), (std::set<int64_t>{10, 20, 29, 30}));
  EXPECT_NE(r.output.find("retention (train.keep_last 2, train.keep_every 10): removed"), std::string::npos);

  // The same run killed with SIGKILL part-way, then resumed: the same final set.
  const std::string cfg = config("retention-killed", extra);
  const fs::path folder = *dir_ / "retention-killed";
  const std::string script = shell_quote(mom_binary()) + " train --config " + shell_quote(cfg) +
                             " > /dev/null 2>&1 & P=$!\n"
                             "for i in $(seq 600); do [ -e " +
                             shell_quote((folder / "ckpt_00000013.h5").string()) +
                             " ] && break; sleep 0.05; done\n"
                             "kill -9 $P; wait $P; echo killed";
  r = run(script);
  ASSERT_NE(r.output.find("killed"), std::string::npos) << r.output;
  const std::set<int64_t> at_kill = steps_in("retention-killed");
  ASSERT_FALSE(at_kill.empty());
  ASSERT_LT(*at_kill.rbegin(), 30) << "the kill came too late to test anything";
  r = run_mom("train --config " + shell_quote(cfg) + " --auto-resume");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(steps_in("retention-killed"), (std::set<int64_t>{10, 20, 29, 30}));
  const auto a = losses_by_step(*dir_ / "retention/metrics.jsonl");
  const auto b = losses_by_step(folder / "metrics.jsonl");
  ASSERT_EQ(b.size(), 30u);
  for (int64_t s = 1; s <= 30; ++s) EXPECT_EQ(a.at(s), b.at(s)) << "loss differs at step " << s;
  // Nothing but committed checkpoints is left (a save the kill interrupted was cleaned up).
  for (const auto& e : fs::directory_iterator(folder))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
}

TEST_F(RunFolder, StaleTemporaryFilesOfDeadProcessesGo) {
  const std::string cfg = config("stale", R"("steps": 2)");
  const fs::path folder = *dir_ / "stale";
  fs::create_directories(folder);
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  // A PID that certainly ended (a child that exited), and one that is alive (this process).
  const RunResult child = run("sh -c 'echo $$'");
  const std::string dead = child.output.substr(0, child.output.find('\n'));
  const fs::path stale = folder / ("ckpt_00000007.h5.tmp." + std::string(host) + "." + dead);
  const fs::path live = folder / ("ckpt_00000008.h5.tmp." + std::string(host) + "." + std::to_string(::getpid()));
  const fs::path other_host = folder / ("ckpt_00000009.h5.tmp.some-other-node." + dead);
  for (const auto& p : {stale, live, other_host}) write_file(p, "partial");
  RunResult r = run_mom("train --config " + shell_quote(cfg));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_NE(r.output.find("removed " + stale.string()), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(live));
  EXPECT_TRUE(fs::exists(other_host));
  // No evaluation ran (the tiny config's eval_every is 0): no made-up validation loss.
  EXPECT_NE(r.output.find("val loss n/a"), std::string::npos) << r.output;
  EXPECT_EQ(read_file(folder / "metrics.jsonl").find("val_loss"), std::string::npos);
}

TEST_F(RunFolder, EvalSeqLenMatchesAnIndependentComputation) {
  RunResult r = run_mom("train --config " + shell_quote(config("eval", R"("steps": 5)")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string ckpt = *dir_ / "eval/ckpt_00000005.h5", data = *dir_ / "data/val_*.bin";
  for (const int T : {17, 64}) {
    r = run_mom("eval " + shell_quote(ckpt) + " --data " + shell_quote(data) + " --seq-len " + std::to_string(T) +
                " --batch-size 1");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto at = r.output.find("loss ");
    ASSERT_NE(at, std::string::npos) << r.output;
    const double ours = std::stod(r.output.substr(at + 5));
    const RunResult ref =
        run(shell_quote(reference_python()) + " " + shell_quote(source_dir() + "/tests/ref/eval_reference.py") + " " +
            shell_quote(ckpt) + " " + shell_quote(data) + " " + std::to_string(T));
    ASSERT_EQ(ref.exit_code, 0) << ref.output;
    const double want = std::stod(ref.output);
    std::printf("eval --seq-len %d: mom %.6f, reference %.6f\n", T, ours, want);
    EXPECT_NEAR(ours, want, 1e-4 * want) << "T " << T;  // mom prints 4 decimals
  }
  r = run_mom("eval " + shell_quote(ckpt) + " --seq-len 65");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("model.n_ctx 64"), std::string::npos) << r.output;
}

TEST_F(RunFolder, PlotDrawsAResumedRunAndNamesMissingMetrics) {
  const std::string cfg = config("plot", R"("steps": 12, "eval_every": 4, "eval_batches": 2)");
  RunResult r = run_mom("train --config " + shell_quote(cfg) + " --until-step 7");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // Without the step-7 checkpoint the resume starts at step 5: steps 6 and 7 are logged twice.
  fs::remove(*dir_ / "plot/ckpt_00000007.h5");
  r = run_mom("train --config " + shell_quote(cfg) + " --resume");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string plot =
      shell_quote(reference_python()) + " " + shell_quote(source_dir() + "/jobs/analysis/plot_run.py");
  const std::string png = *dir_ / "plot.png";
  r = run(plot + " " + shell_quote(*dir_ / "plot") + " --out " + shell_quote(png));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("12 steps, resumed 1x"), std::string::npos) << r.output;  // steps counted once
  EXPECT_EQ(read_file(png).substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  r = run(plot + " " + shell_quote(*dir_ / "nowhere"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("no metrics file"), std::string::npos) << r.output;
  fs::create_directories(*dir_ / "empty-run");
  write_file(*dir_ / "empty-run/metrics.jsonl", "");
  r = run(plot + " " + shell_quote(*dir_ / "empty-run"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("no training steps"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace mom::test
