// Exact resume: 20 steps straight equal 10 steps, a checkpoint, a new process that loads it,
// and 10 more steps, bit for bit (every step's loss and the final weights and moments), on
// the CPU and on a GPU; and a checkpoint moves between the two devices.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "io/checkpoint_file.h"
#include "tests/conformance.h"
#include "tests/support.h"

namespace mom::test {
namespace {

// `train_extra`: more keys of the config's train section (the device).
void check_twenty_equal_ten_plus_ten(const std::string& train_extra) {
  ScratchDir dir("resume");
  prepare_tiny_corpus(dir / "data");
  write_file(dir / "straight.json", tiny_config_json(dir / "data", dir / "straight", train_extra));
  write_file(dir / "split.json", tiny_config_json(dir / "data", dir / "split", train_extra));

  RunResult r = run_mom("train --config " + shell_quote(dir / "straight.json"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_mom("train --config " + shell_quote(dir / "split.json") + " --until-step 10");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(std::filesystem::exists(dir / "split/ckpt_00000010.h5"));
  r = run_mom("train --config " + shell_quote(dir / "split.json") + " --resume");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from"), std::string::npos) << r.output;

  const auto a = losses_by_step(dir / "straight/metrics.jsonl");
  const auto b = losses_by_step(dir / "split/metrics.jsonl");
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(b.size(), 20u);
  for (int64_t s = 1; s <= 20; ++s) EXPECT_EQ(a.at(s), b.at(s)) << "loss differs at step " << s;
  EXPECT_LT(a.at(20), a.at(1)) << "the loss should fall over 20 steps";

  // Final parameters and AdamW moments, bit for bit.
  io::CheckpointReader ca(dir / "straight/ckpt_00000020.h5"), cb(dir / "split/ckpt_00000020.h5");
  const auto names = ca.datasets();
  ASSERT_EQ(names, cb.datasets());
  ASSERT_GT(names.size(), 40u);  // params + both moments
  for (const auto& n : names) {
    const auto shape = ca.shape(n);
    int64_t count = 1;
    for (auto d : shape) count *= d;
    std::vector<float> va(static_cast<size_t>(count)), vb(va.size());
    ca.read(n, shape, va.data());
    cb.read(n, shape, vb.data());
    EXPECT_EQ(std::memcmp(va.data(), vb.data(), va.size() * sizeof(float)), 0) << n << " differs";
  }
  EXPECT_EQ(ca.attr_int("/", "tokens_seen"), cb.attr_int("/", "tokens_seen"));
  EXPECT_EQ(ca.attr_u64s("/", "rng_state"), cb.attr_u64s("/", "rng_state"));
}

TEST(Resume, TwentyStepsEqualTenPlusTenBitForBit) { check_twenty_equal_ten_plus_ten(""); }

TEST(Resume, CudaTwentyStepsEqualTenPlusTenBitForBit) {
  std::string why;
  if (!cuda_backend_or_null(&why)) GTEST_SKIP() << gpu_skip_message(why);
  check_twenty_equal_ten_plus_ten(R"("device": "cuda")");
}

// Ten steps on the GPU, then the checkpoint resumed on the CPU for ten more: the losses follow
// the GPU's straight run within f32 tolerance (the devices round differently, so not bit for
// bit), and the CPU run's checkpoint loads back onto the GPU for `mom eval --device cuda`.
TEST(Resume, CudaCheckpointMovesToCpuAndBack) {
  std::string why;
  if (!cuda_backend_or_null(&why)) GTEST_SKIP() << gpu_skip_message(why);
  ScratchDir dir("resume_move");
  prepare_tiny_corpus(dir / "data");
  write_file(dir / "gpu.json", tiny_config_json(dir / "data", dir / "gpu", R"("device": "cuda")"));
  write_file(dir / "moved.json", tiny_config_json(dir / "data", dir / "moved", R"("device": "cuda")"));
  write_file(dir / "moved_cpu.json", tiny_config_json(dir / "data", dir / "moved", R"("device": "cpu")"));
  RunResult r = run_mom("train --config " + shell_quote(dir / "gpu.json"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_mom("train --config " + shell_quote(dir / "moved.json") + " --until-step 10");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_mom("train --config " + shell_quote(dir / "moved_cpu.json") + " --resume");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto a = losses_by_step(dir / "gpu/metrics.jsonl");
  const auto b = losses_by_step(dir / "moved/metrics.jsonl");
  ASSERT_EQ(b.size(), 20u);
  for (int64_t s = 1; s <= 20; ++s) EXPECT_NEAR(a.at(s), b.at(s), 1e-3 * a.at(s)) << "step " << s;
  const std::string ckpt = dir / "moved/ckpt_00000020.h5";
  const RunResult on_cpu = run_mom("eval " + shell_quote(ckpt) + " --batches 2");
  const RunResult on_gpu = run_mom("eval " + shell_quote(ckpt) + " --batches 2 --device cuda");
  ASSERT_EQ(on_cpu.exit_code, 0) << on_cpu.output;
  ASSERT_EQ(on_gpu.exit_code, 0) << on_gpu.output;
  auto loss_of = [](const std::string& out) { return std::stod(out.substr(out.find("| loss ") + 7)); };
  EXPECT_NEAR(loss_of(on_cpu.output), loss_of(on_gpu.output), 1e-3);
}

}  // namespace
}  // namespace mom::test
