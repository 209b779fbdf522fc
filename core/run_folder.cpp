#include "core/run_folder.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <regex>

#include "core/checkpointing.h"
#include "io/checkpoint_file.h"

namespace mom {

namespace fs = std::filesystem;

namespace {
const std::regex kCommitted(R"(ckpt_(\d{8})\.h5)");
// A save in progress: ckpt_NNNNNNNN.h5.tmp.HOST.PID (older builds wrote .tmp.PID).
const std::regex kTemporary(R"(ckpt_\d{8}\.h5\.tmp\.(?:(.+)\.)?(\d+))");

std::string host_name() {
  char name[256] = {};
  ::gethostname(name, sizeof name - 1);
  return name;
}
}  // namespace

fs::path checkpoint_path(const fs::path& run_dir, int64_t step) {
  char name[64];
  std::snprintf(name, sizeof name, "ckpt_%08lld.h5", static_cast<long long>(step));
  return run_dir / name;
}

int64_t checkpoint_step(const fs::path& ckpt) {
  std::smatch m;
  const std::string name = ckpt.filename().string();
  return std::regex_match(name, m, kCommitted) ? std::stoll(m[1]) : -1;
}

std::vector<fs::path> checkpoints_newest_first(const fs::path& run_dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(run_dir))
    if (checkpoint_step(e.path()) >= 0) out.push_back(e.path());
  std::sort(out.begin(), out.end(),
            [](const fs::path& a, const fs::path& b) { return checkpoint_step(a) > checkpoint_step(b); });
  return out;
}

fs::path latest_checkpoint(const fs::path& run_dir) {
  const auto all = checkpoints_newest_first(run_dir);
  return all.empty() ? fs::path() : all.front();
}

ResumeChoice choose_resume_checkpoint(const fs::path& run_dir) {
  ResumeChoice choice;
  for (const fs::path& p : checkpoints_newest_first(run_dir)) {
    try {
      io::CheckpointReader(p).verify();
      read_checkpoint_config(p);
      choice.checkpoint = p;
      return choice;
    } catch (const std::exception& e) {
      fs::path aside = p;
      aside += ".damaged";
      for (int n = 1; fs::exists(aside); ++n) aside = p.string() + ".damaged." + std::to_string(n);
      std::error_code ec;
      fs::rename(p, aside, ec);
      choice.skipped.push_back({p, ec ? fs::path() : aside, e.what()});
    }
  }
  return choice;
}

std::vector<fs::path> apply_retention(const fs::path& run_dir, int64_t keep_last, int64_t keep_every) {
  std::vector<fs::path> removed;
  if (keep_last <= 0) return removed;  // keep everything
  const auto all = checkpoints_newest_first(run_dir);
  for (size_t i = 0; i < all.size(); ++i) {
    const int64_t step = checkpoint_step(all[i]);
    const bool keep = i == 0 || static_cast<int64_t>(i) < keep_last || (keep_every > 0 && step % keep_every == 0);
    std::error_code ec;
    if (!keep && fs::remove(all[i], ec)) removed.push_back(all[i]);
  }
  return removed;
}

std::vector<fs::path> remove_stale_temporaries(const fs::path& run_dir) {
  std::vector<fs::path> removed;
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec)) return removed;
  const std::string host = host_name();
  for (const auto& e : fs::directory_iterator(run_dir)) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (!std::regex_match(name, m, kTemporary)) continue;
    if (m[1].matched && m[1].str() != host) continue;  // another host's process: cannot tell
    const long pid = std::stol(m[2]);
    const bool dead = pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
    if (dead && fs::remove(e.path(), ec)) removed.push_back(e.path());
  }
  return removed;
}

}  // namespace mom
