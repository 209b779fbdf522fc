// Offline routing analysis through the real binary (jobs/cmd_route.cpp, docs/routing.md):
// - `mom route` over a token file writes a trace that an independent h5py script
//   (tests/ref/route_check.py) finds consistent: shapes, module ids in range or -1, the choices
//   the top-K of the stored probabilities, weights in [0, 1] summing to at most 1, rows the
//   token stream in order; its mean loss equals `mom eval`'s for the same data, T and B, bit
//   for bit, for a model with a MoM chunk and an MoE layer (capacity drops included);
// - `--disable-module chunks/0/attn/1` (route and eval): module 1 never appears in that
//   router's trace, the loss changes, and route and eval still agree;
// - clear errors (exit 2, naming the thing) for bad module paths, a missing data file,
//   --seq-len above the context and an existing output;
// - jobs/analysis/plot_routing.py draws the three PNGs and fails clearly on a missing file and
//   on a dense model's trace;
// - int32 datasets round-trip through the checkpoint file layer, and are refused as floats.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/checkpoint_file.h"
#include "tests/support.h"

namespace mom::test {
namespace {

namespace fs = std::filesystem;

class Route : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir("route");
    ckpt_ = train_routed_model(*dir_);
    data_ = *dir_ / "data/val_*.bin";
  }
  static void TearDownTestSuite() { delete dir_; }

  // `mom route` with the test's geometry (T 16, B 3: windows that do not divide the context).
  static RunResult route(const std::string& out, const std::string& extra = "") {
    return run_mom("route " + shell_quote(ckpt_) + " --data " + shell_quote(data_) + " --out " + shell_quote(out) +
                   " --seq-len 16 --batch-size 3 --threads 1 " + extra);
  }
  static double eval_loss(const std::string& extra = "") {
    const RunResult r = run_mom("eval " + shell_quote(ckpt_) + " --data " + shell_quote(data_) +
                                " --seq-len 16 --batch-size 3 --threads 1 --json " + extra);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return nlohmann::json::parse(r.output).at("loss").get<double>();
  }
  // The independent checker's report of a trace (exit 0 required).
  static nlohmann::json check(const std::string& trace) {
    const RunResult r = run(shell_quote(reference_python()) + " " +
                            shell_quote(source_dir() + "/tests/ref/route_check.py") + " " + shell_quote(trace));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.exit_code == 0 ? nlohmann::json::parse(r.output) : nlohmann::json::object();
  }

  static ScratchDir* dir_;
  static std::string ckpt_, data_;
};
ScratchDir* Route::dir_ = nullptr;
std::string Route::ckpt_, Route::data_;

TEST_F(Route, TraceIsConsistentAndItsLossIsEvals) {
  const std::string trace = *dir_ / "trace.h5";
  RunResult r = route(trace);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::printf("%s", r.output.c_str());
  const nlohmann::json rep = check(trace);
  ASSERT_TRUE(rep.contains("routers")) << rep.dump();
  // The MoM chunk's two routers and the MoE layer's gate; an MoE layer's attention is dense.
  std::vector<std::string> routers;
  for (const auto& [name, _] : rep["routers"].items()) routers.push_back(name);
  EXPECT_EQ(routers, (std::vector<std::string>{"chunks/0/attn", "chunks/0/ffn", "moe/0/ffn"}));
  EXPECT_EQ(rep["routers"]["chunks/0/attn"]["steps"], 2);
  EXPECT_EQ(rep["routers"]["moe/0/ffn"]["steps"], 1);
  EXPECT_GT(rep["routers"]["moe/0/ffn"]["dropped"].get<int>(), 0) << "capacity factor 1 should drop some";
  EXPECT_EQ(rep["tokens"].get<int64_t>() % 48, 0);
  // The file's mean loss is eval's, computed the same way over the same windows.
  const double want = eval_loss();
  std::printf("route mean loss %.17g, eval %.17g\n", rep["mean_loss"].get<double>(), want);
  EXPECT_EQ(rep["mean_loss"].get<double>(), want);
  EXPECT_NEAR(rep["losses_mean"].get<double>(), want, 1e-9 * want);

  // --batches limits both alike; `mom ckpt inspect --verify` reads the trace's checksums.
  r = route(*dir_ / "trace2.h5", "--batches 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(check(*dir_ / "trace2.h5")["tokens"], 96);
  EXPECT_EQ(check(*dir_ / "trace2.h5")["mean_loss"].get<double>(), eval_loss("--batches 2"));
  r = run_mom("ckpt inspect --verify " + shell_quote(*dir_ / "trace2.h5"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("trace/"), std::string::npos) << r.output;
}

TEST_F(Route, DisabledModuleIsNeverChosenAndChangesTheLoss) {
  const std::string base = *dir_ / "base.h5", ablated = *dir_ / "ablated.h5";
  RunResult r = route(base, "--batches 4");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = route(ablated, "--batches 4 --disable-module chunks/0/attn/1 --disable-module moe/0/ffn/2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("without chunks/0/attn/1"), std::string::npos) << r.output;
  const nlohmann::json b = check(base), a = check(ablated);
  ASSERT_TRUE(a.contains("routers") && b.contains("routers"));
  // The modules were in use before; now they never appear (route_check also checks that their
  // probability is 0 and that the choices are the top-K of the remaining classes).
  auto used = [](const nlohmann::json& rep, const std::string& router, int module) {
    const auto& u = rep["routers"][router]["used"];
    return std::find(u.begin(), u.end(), module) != u.end();
  };
  EXPECT_TRUE(used(b, "chunks/0/attn", 1)) << b.dump();
  EXPECT_TRUE(used(b, "moe/0/ffn", 2)) << b.dump();
  EXPECT_FALSE(used(a, "chunks/0/attn", 1)) << a.dump();
  EXPECT_FALSE(used(a, "moe/0/ffn", 2)) << a.dump();
  EXPECT_EQ(a["routers"]["chunks/0/attn"]["load"][1], 0.0);
  EXPECT_GT(b["routers"]["chunks/0/attn"]["load"][1].get<double>(), 0.05);
  const double lb = b["mean_loss"].get<double>(), la = a["mean_loss"].get<double>();
  std::printf("loss %.6f, without chunks/0/attn/1 and moe/0/ffn/2 %.6f\n", lb, la);
  EXPECT_NE(la, lb);
  EXPECT_EQ(la, eval_loss("--batches 4 --disable-module chunks/0/attn/1 --disable-module moe/0/ffn/2"));
  // One module alone, through eval only.
  EXPECT_NE(eval_loss("--batches 4 --disable-module chunks/0/attn/1"), lb);
}

TEST_F(Route, BadInputIsAClearError) {
  struct Case {
    std::string args, says;
  };
  const std::string out = *dir_ / "bad.h5";
  const std::vector<Case> cases = {
      {"--disable-module chunks/0/attn/7", "chunks/0/attn/7"},
      {"--disable-module chunks/0/attn/7", "does not exist (it has 4: 0..3)"},
      {"--disable-module chunks/3/attn/1", "no such routed stage"},
      {"--disable-module chunks/0/attn/x", "the module must be a number"},
      {"--disable-module chunks/0/mlp/1", "no router side 'mlp'"},
      {"--disable-module moe/0/attn/0", "has no learned router"},
      {"--seq-len 33", "model.n_ctx 32"},
  };
  for (const Case& c : cases)
    for (const std::string cmd : {"route", "eval"}) {
      const std::string base =
          cmd == "route" ? "route " + shell_quote(ckpt_) + " --out " + shell_quote(out) : "eval " + shell_quote(ckpt_);
      const RunResult r = run_mom(base + " --data " + shell_quote(data_) + " " + c.args);
      EXPECT_EQ(r.exit_code, 2) << cmd << " " << c.args << ": " << r.output;
      EXPECT_NE(r.output.find(c.says), std::string::npos) << cmd << " " << c.args << ": " << r.output;
    }
  // Disabling so many that fewer classes than top_k are left (4 modules + SKIP, top-2).
  RunResult r = route(out,
                      "--disable-module chunks/0/ffn/0 --disable-module chunks/0/ffn/1 "
                      "--disable-module chunks/0/ffn/2 --disable-module chunks/0/ffn/3");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("fewer than top_k"), std::string::npos) << r.output;
  const std::string missing = *dir_ / "nowhere/val_000000.bin";
  r = run_mom("route " + shell_quote(ckpt_) + " --data " + shell_quote(missing) + " --out " + shell_quote(out));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find(missing), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out)) << "a failed route leaves no file";
  // An existing trace is kept unless --force.
  ASSERT_EQ(route(out, "--batches 1").exit_code, 0);
  r = route(out, "--batches 1");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("pass --force"), std::string::npos) << r.output;
  EXPECT_EQ(route(out, "--batches 1 --force").exit_code, 0);
}

TEST_F(Route, PlotsDrawAndFailClearly) {
  const std::string trace = *dir_ / "plot.h5";
  RunResult r = route(trace, "--batches 4");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string plot =
      shell_quote(reference_python()) + " " + shell_quote(source_dir() + "/jobs/analysis/plot_routing.py");
  const std::string prefix = *dir_ / "plots/route";
  fs::create_directories(*dir_ / "plots");
  r = run(plot + " " + shell_quote(trace) + " --out " + shell_quote(prefix));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* name : {"_load.png", "_skip_position.png", "_coselect.png"}) {
    const std::string png = prefix + name;
    ASSERT_TRUE(fs::exists(png)) << png << ": " << r.output;
    EXPECT_EQ(read_file(png).substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << png;
  }
  r = run(plot + " " + shell_quote(*dir_ / "missing.h5"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("no trace file"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("missing.h5"), std::string::npos) << r.output;
  r = run(plot + " " + shell_quote(ckpt_));  // an HDF5 file, but a checkpoint
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("not a routing trace"), std::string::npos) << r.output;

  // A dense model's trace: tokens, targets and losses only; the plot says there is nothing.
  const std::string dense_cfg = *dir_ / "dense.json";
  write_file(dense_cfg,
             tiny_config_json(*dir_ / "data", *dir_ / "dense", R"("steps": 2, "warmup_steps": 1, "save_every": 2)"));
  r = run_mom("train --config " + shell_quote(dense_cfg));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string dense_trace = *dir_ / "dense.h5";
  r = run_mom("route " + shell_quote(*dir_ / "dense/ckpt_00000002.h5") + " --data " + shell_quote(data_) + " --out " +
              shell_quote(dense_trace) + " --batches 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("no routed stages"), std::string::npos) << r.output;
  EXPECT_EQ(check(dense_trace)["routers"], nlohmann::json::object());
  r = run(plot + " " + shell_quote(dense_trace));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("no routed stages"), std::string::npos) << r.output;
}

TEST(CheckpointFileInt32, RoundTripsAndIsNotAFloat) {
  ScratchDir dir("route-int32");
  const fs::path path = dir / "ints.h5";
  const std::vector<int32_t> ids = {-1, 0, 3, 2147483647, -2147483647 - 1, 7};
  const std::array<int64_t, 2> shape{3, 2};
  const std::vector<double> reals = {0.5, -1.25};
  {
    io::CheckpointWriter w(path, false);
    w.write("ids", shape, ids.data());
    w.write("reals", std::array<int64_t, 1>{2}, reals.data());
    w.commit();
  }
  io::CheckpointReader rd(path);
  EXPECT_EQ(rd.dtype("ids"), "int32");
  std::vector<int32_t> back(6);
  rd.read("ids", shape, back.data());
  EXPECT_EQ(back, ids);
  std::vector<int32_t> row(2);
  rd.read_rows("ids", 1, 2, row.data());
  EXPECT_EQ(row, (std::vector<int32_t>{3, 2147483647}));
  std::vector<float> as_float(6);
  EXPECT_THROW(rd.read("ids", shape, as_float.data()), UserError);
  std::vector<int32_t> as_int(2);
  EXPECT_THROW(rd.read("reals", std::array<int64_t, 1>{2}, as_int.data()), UserError);
  rd.verify();
}

}  // namespace
}  // namespace mom::test
