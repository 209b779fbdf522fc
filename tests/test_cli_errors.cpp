// Bad input through the `mom` binary: each case must end in one clear message naming the
// thing at fault, exit status 2 (never a crash, never "internal error"), and nothing that
// existed before may be overwritten.
#include <gtest/gtest.h>

#include <filesystem>

#include "tests/conformance.h"
#include "tests/support.h"

namespace mom::test {
namespace {

namespace fs = std::filesystem;

class CliErrors : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir("cli-errors");
    prepare_tiny_corpus(*dir_ / "data");
    write_file(*dir_ / "tiny.json", tiny_config_json(*dir_ / "data", *dir_ / "run", R"("steps": 2)"));
    const RunResult r = run_mom("train --config " + shell_quote(*dir_ / "tiny.json"));
    if (r.exit_code != 0) throw std::runtime_error("training the tiny model failed:\n" + r.output);
    good_ckpt_ = *dir_ / "run/ckpt_00000002.h5";
  }
  static void TearDownTestSuite() { delete dir_; }

  // Runs mom, expects exit 2 and every needle in the message.
  static void expect_user_error(const std::string& args, std::initializer_list<std::string> needles) {
    const RunResult r = run_mom(args);
    EXPECT_EQ(r.exit_code, 2) << "mom " << args << "\n" << r.output;
    EXPECT_EQ(r.output.find("internal error"), std::string::npos) << r.output;
    for (const auto& n : needles)
      EXPECT_NE(r.output.find(n), std::string::npos) << "missing '" << n << "' in:\n" << r.output;
  }

  static std::string copy_of_good(const std::string& name) {
    const std::string p = *dir_ / name;
    fs::copy_file(good_ckpt_, p, fs::copy_options::overwrite_existing);
    return p;
  }

  static ScratchDir* dir_;
  static std::string good_ckpt_;
};
ScratchDir* CliErrors::dir_ = nullptr;
std::string CliErrors::good_ckpt_;

TEST_F(CliErrors, TruncatedCheckpoint) {
  const std::string bytes = read_file(good_ckpt_);
  for (double frac : {0.0, 0.1, 0.5, 0.99}) {
    const std::string p = *dir_ / "truncated.h5";
    write_file(p, bytes.substr(0, static_cast<size_t>(static_cast<double>(bytes.size()) * frac)));
    expect_user_error("eval " + shell_quote(p), {"truncated.h5"});
    expect_user_error("ckpt inspect --verify " + shell_quote(p), {"truncated.h5"});
    expect_user_error("generate " + shell_quote(p) + " -n 2", {"truncated.h5"});
  }
}

TEST_F(CliErrors, BitFlippedCheckpoint) {
  // Flips in the tensor data are caught by Fletcher32; in metadata by HDF5's checksums.
  std::string bytes = read_file(good_ckpt_);
  int detected = 0, tried = 0;
  for (double frac : {0.02, 0.3, 0.5, 0.7, 0.95}) {
    std::string flipped = bytes;
    flipped[static_cast<size_t>(static_cast<double>(bytes.size()) * frac)] ^= 0x10;
    const std::string p = *dir_ / "flipped.h5";
    write_file(p, flipped);
    const RunResult r = run_mom("ckpt inspect --verify " + shell_quote(p));
    EXPECT_TRUE(r.exit_code == 0 || r.exit_code == 2) << r.output;  // 0 only for a flip in unused padding
    EXPECT_EQ(r.output.find("internal error"), std::string::npos) << r.output;
    ++tried;
    if (r.exit_code == 2) {
      ++detected;
      EXPECT_NE(r.output.find("flipped.h5"), std::string::npos) << r.output;
    }
  }
  EXPECT_GE(detected, tried - 1) << "bit flips should be detected";
}

TEST_F(CliErrors, ResumeFromCorruptCheckpointIsRefusedAndKeptIntact) {
  ScratchDir run("corrupt-run");
  fs::copy_file(good_ckpt_, run / "ckpt_00000002.h5");
  std::string bytes = read_file(run / "ckpt_00000002.h5");
  bytes[bytes.size() / 2] ^= 0x01;
  write_file(run / "ckpt_00000002.h5", bytes);
  write_file(run / "cfg.json", tiny_config_json(*dir_ / "data", run.path().string(), R"("steps": 4)"));
  expect_user_error("train --resume --config " + shell_quote(run / "cfg.json"),
                    {"ckpt_00000002.h5", "no usable checkpoint"});
  // Kept byte for byte, moved aside so that a later run can write a good checkpoint of that
  // step (core/run_folder.h).
  EXPECT_EQ(read_file(run / "ckpt_00000002.h5.damaged"), bytes);
}

TEST_F(CliErrors, NotACheckpoint) {
  write_file(*dir_ / "garbage.h5", std::string(4096, 'x'));
  expect_user_error("eval " + shell_quote(*dir_ / "garbage.h5"), {"garbage.h5"});
  expect_user_error("eval " + shell_quote(*dir_ / "missing.h5"), {"missing.h5"});
}

TEST_F(CliErrors, ShardWithWrongMagicOrSize) {
  ScratchDir d("bad-shards");
  fs::copy_file(*dir_ / "data/val_000000.bin", d / "val_000000.bin");
  std::string bytes = read_file(*dir_ / "data/train_000000.bin");
  std::string wrong_magic = bytes;
  wrong_magic[0] ^= 0x7f;
  write_file(d / "train_000000.bin", wrong_magic);
  write_file(d / "cfg.json", tiny_config_json(d.path().string(), d / "run"));
  expect_user_error("train --config " + shell_quote(d / "cfg.json"), {"train_000000.bin", "magic"});
  write_file(d / "train_000000.bin", bytes.substr(0, bytes.size() - 7));
  expect_user_error("train --config " + shell_quote(d / "cfg.json"), {"train_000000.bin"});
  EXPECT_FALSE(fs::exists(d / "run/ckpt_00000020.h5"));
}

TEST_F(CliErrors, MissingVocabularyFiles) {
  ScratchDir empty("no-vocab");
  expect_user_error(
      "data prepare --tokenizer " + shell_quote(empty.path().string()) + " --out " + shell_quote(empty / "out"),
      {"no-vocab"});
  expect_user_error("generate " + shell_quote(good_ckpt_) + " --tokenizer " + shell_quote(empty.path().string()),
                    {"no-vocab"});
}

TEST_F(CliErrors, InvalidConfigs) {
  auto cfg = [&](const std::string& name, const std::string& text) {
    write_file(*dir_ / name, text);
    return "train --config " + shell_quote(*dir_ / name);
  };
  expect_user_error(cfg("unknown.json", R"({"train": {"lrr": 0.1}})"), {"train.lrr", "train.lr"});
  expect_user_error(cfg("heads.json", R"({"model": {"n_embd": 100, "n_head": 3}})"), {"model.n_embd", "model.n_head"});
  expect_user_error(cfg("type.json", R"({"train": {"batch_size": "eight"}})"), {"train.batch_size", "integer"});
  expect_user_error(cfg("range.json", R"({"train": {"lr": -1}})"), {"train.lr"});
  expect_user_error(cfg("ctx.json", R"({"model": {"n_ctx": 32}, "train": {"seq_len": 64}})"), {"train.seq_len"});
  expect_user_error(cfg("notjson.json", "{ model: "), {"notjson.json", "JSON"});
  expect_user_error("train --config " + shell_quote(*dir_ / "nope.json"), {"nope.json"});
  expect_user_error("train --set train.nonsense=1", {"train.nonsense"});
  expect_user_error("train --set model.n_head=0", {"model.n_head"});
  expect_user_error("train --set train.matmul_precision=low", {"train.matmul_precision", "\"medium\""});
  expect_user_error("train --set train.matmul_precision=medium", {"train.matmul_precision", "train.device"});
}

TEST_F(CliErrors, ExistingOutputsNeedForce) {
  // A prepared dataset is not replaced without --force.
  const std::string meta_before = read_file(*dir_ / "data/meta.json");
  expect_user_error("data prepare --max-mb 0.1 --out " + shell_quote(*dir_ / "data"), {"--force"});
  EXPECT_EQ(read_file(*dir_ / "data/meta.json"), meta_before);
  // A run folder with checkpoints is not restarted without --resume or --force.
  const std::string ckpt_before = read_file(good_ckpt_);
  expect_user_error("train --config " + shell_quote(*dir_ / "tiny.json"), {"--resume", "--force"});
  EXPECT_EQ(read_file(good_ckpt_), ckpt_before);
}

TEST_F(CliErrors, UsageErrorsAreNotCrashes) {
  const RunResult r = run_mom("train --no-such-flag");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_LT(r.exit_code, 128) << r.output;
  const RunResult help = run_mom("--help");
  EXPECT_EQ(help.exit_code, 0);
  // Only devices the build has are offered.
#ifdef MOM_HAVE_CUDA
  EXPECT_NE(help.output.find("CUDA GPUs"), std::string::npos) << help.output;
#else
  EXPECT_EQ(help.output.find("GPU"), std::string::npos) << help.output;
  EXPECT_NE(help.output.find("no CUDA backend"), std::string::npos) << help.output;
#endif
  for (const char* sub : {"train", "eval", "generate", "data prepare", "ckpt inspect", "bench train"}) {
    const RunResult h = run_mom(std::string(sub) + " --help");
    EXPECT_EQ(h.exit_code, 0) << sub;
    EXPECT_NE(h.output.find("Usage"), std::string::npos) << sub << ":\n" << h.output;
  }
}

// Asking for a GPU where there is none: one message naming the device and the fix, from every
// command that runs a model (a machine with a GPU runs these commands instead: see
// test_resume's Cuda tests).
TEST_F(CliErrors, DeviceThatIsNotHere) {
  std::string why;
  if (cuda_backend_or_null(&why)) GTEST_SKIP() << "this machine has a CUDA device";
  const std::string ckpt = shell_quote(good_ckpt_);
  for (const std::string& args :
       {"eval " + ckpt + " --device cuda", "generate " + ckpt + " --device cuda -n 2",
        "train --config " + shell_quote(*dir_ / "tiny.json") + " --set train.device=cuda --until-step 1"})
    expect_user_error(args, {"device 'cuda'", "\"cpu\""});
  const RunResult r = run_mom("eval " + ckpt + " --device tpu");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--device"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace mom::test
