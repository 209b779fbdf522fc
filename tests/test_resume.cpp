// Exact resume: 20 steps straight equal 10 steps, a checkpoint, a new process that loads it,
// and 10 more steps, bit for bit (every step's loss and the final weights and moments).
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "io/checkpoint_file.h"
#include "tests/support.h"

namespace mom::test {
namespace {

TEST(Resume, TwentyStepsEqualTenPlusTenBitForBit) {
  ScratchDir dir("resume");
  prepare_tiny_corpus(dir / "data");
  write_file(dir / "straight.json", tiny_config_json(dir / "data", dir / "straight"));
  write_file(dir / "split.json", tiny_config_json(dir / "data", dir / "split"));

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

}  // namespace
}  // namespace mom::test
