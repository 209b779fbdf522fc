// Shared helpers for the tests: scratch folders, running the `mom` binary and other
// programs (python3 with torch, node), and reading files.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace mom::test {

struct RunResult {
  int exit_code = -1;  // the process's exit status, or 128+signal when killed
  std::string output;  // stdout and stderr together
};

// Runs `command` through /bin/sh, capturing stdout+stderr.
RunResult run(const std::string& command);
// Runs the built `mom` binary with `args` (already shell-quoted where needed).
RunResult run_mom(const std::string& args);

std::string source_dir();  // repository root
std::string mom_binary();  // absolute path of the built `mom`
// Debian's interpreter with torch and h5py (not the python3 first on PATH).
std::string reference_python();

// A fresh empty folder under the build tree, removed when the object goes away
// (kept when MOM_KEEP_TMP is set, for debugging).
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& label);
  ~ScratchDir();
  const std::filesystem::path& path() const { return path_; }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

std::string read_file(const std::filesystem::path& p);
void write_file(const std::filesystem::path& p, const std::string& bytes);
// Single-quotes a string for /bin/sh.
std::string shell_quote(const std::string& s);

}  // namespace mom::test

namespace mom::test {

// Tokenises ~0.3 MB of the Python standard library into `dir` with `mom data prepare`
// (train_*.bin, val_*.bin); throws with mom's output when that fails.
void prepare_tiny_corpus(const std::string& dir);
// The training loss of every step in a run's metrics.jsonl.
std::map<int64_t, double> losses_by_step(const std::string& metrics_path);
// A tiny GPT-2 training config (2 layers, width 64, context 64, batch 4) on a corpus made
// by prepare_tiny_corpus, as JSON text; `train_extra` is merged into its "train" section.
std::string tiny_config_json(const std::string& data_dir, const std::string& run_dir,
                             const std::string& train_extra = "");
// Trains a small routed stack on a tiny corpus in `dir`/data: a dense block, a MoM chunk (4 + 4
// modules, SKIP, top-2, 2 steps, GRU routers, anchored) and an MoE layer (4 experts, top-2,
// capacity factor 1, so that some assignments are dropped); context 32, 6 steps. Returns the
// checkpoint (`dir`/routed/ckpt_00000006.h5); throws with mom's output when training fails.
std::string train_routed_model(const ScratchDir& dir);

}  // namespace mom::test
