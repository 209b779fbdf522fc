#include "tests/support.h"

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

namespace mom::test {

RunResult run(const std::string& command) {
  RunResult r;
  const std::string full = "(" + command + ") 2>&1";
  FILE* pipe = popen(full.c_str(), "r");
  if (!pipe) throw std::runtime_error("popen failed for: " + command);
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  const int status = pclose(pipe);
  if (WIFEXITED(status))
    r.exit_code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status))
    r.exit_code = 128 + WTERMSIG(status);
  return r;
}

RunResult run_mom(const std::string& args) { return run(shell_quote(mom_binary()) + " " + args); }

// Compiled-in paths, overridable so that the test binaries also run from a bundle on another
// machine (jobs/device/bundle.sh, docs/gpu.md).
namespace {
std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}
}  // namespace

std::string source_dir() { return env_or("MOM_SOURCE_DIR", MOM_SOURCE_DIR); }
std::string mom_binary() { return env_or("MOM_BINARY", MOM_BINARY); }
std::string reference_python() { return env_or("MOM_REFERENCE_PYTHON", "/usr/bin/python3"); }

ScratchDir::ScratchDir(const std::string& label) {
  const auto base = std::filesystem::path(env_or("MOM_SCRATCH_DIR", MOM_BUILD_DIR "/test-scratch"));
  std::filesystem::create_directories(base);
  std::string templ = (base / (label + "-XXXXXX")).string();
  if (!mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed under " + base.string());
  path_ = templ;
}

ScratchDir::~ScratchDir() {
  if (!std::getenv("MOM_KEEP_TMP")) {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
}

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + p.string());
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

void write_file(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error("cannot write " + p.string());
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'')
      q += "'\\''";
    else
      q += c;
  }
  return q + "'";
}

}  // namespace mom::test

namespace mom::test {

void prepare_tiny_corpus(const std::string& dir) {
  const RunResult r = run_mom("data prepare --max-mb 0.3 --val-fraction 0.1 --out " + shell_quote(dir));
  if (r.exit_code != 0) throw std::runtime_error("mom data prepare failed:\n" + r.output);
}

std::map<int64_t, double> losses_by_step(const std::string& metrics_path) {
  std::map<int64_t, double> out;
  std::ifstream in(metrics_path);
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out[j["step"].get<int64_t>()] = j["loss"].get<double>();
  }
  return out;
}

std::string tiny_config_json(const std::string& data_dir, const std::string& run_dir, const std::string& train_extra) {
  std::string train = R"("batch_size": 4, "seq_len": 64, "steps": 20, "warmup_steps": 2, "lr": 3e-3,
                         "eval_every": 0, "save_every": 0, "threads": 2, "seed": 5)";
  if (!train_extra.empty()) train += ", " + train_extra;
  return R"({"model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "n_ctx": 64},
            "data": {"train": ")" +
         data_dir + R"(/train_*.bin", "val": ")" + data_dir + R"(/val_*.bin"},
            "train": {)" +
         train + R"(},
            "run_dir": ")" +
         run_dir + R"("})";
}

std::string train_routed_model(const ScratchDir& dir) {
  prepare_tiny_corpus(dir / "data");
  const std::string data = dir / "data", cfg = dir / "routed.json", run_dir = dir / "routed";
  write_file(cfg, R"({"model": {"n_ctx": 32, "n_head": 2, "n_embd": 32, "stack": [
              {"type": "dense", "count": 1},
              {"type": "mom", "attn_modules": 4, "ffn_modules": 4, "skip": true, "steps": 2, "top_k": 2,
               "router": "gru", "router_dim": 16, "anchor": true, "balance_coef": 0.01},
              {"type": "moe", "experts": 4, "top_k": 2, "aux_coef": 0.01, "capacity_factor": 1.0}]},
            "data": {"train": ")" +
                      data + R"(/train_*.bin", "val": ")" + data + R"(/val_*.bin"},
            "train": {"batch_size": 2, "seq_len": 32, "steps": 6, "warmup_steps": 2, "lr": 2e-3, "threads": 1,
                      "eval_every": 0, "save_every": 6, "seed": 3},
            "run_dir": ")" +
                      run_dir + R"("})");
  const RunResult r = run_mom("train --config " + shell_quote(cfg));
  const std::string ckpt = run_dir + "/ckpt_00000006.h5";
  if (r.exit_code != 0 || !std::filesystem::exists(ckpt)) throw std::runtime_error("mom train failed:\n" + r.output);
  return ckpt;
}

}  // namespace mom::test
