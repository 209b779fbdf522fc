// A run folder's checkpoints: which one a resume takes, which ones retention keeps, and the
// temporary files of saves that never finished.
//
// Why here and not in the trainer: these are the decisions an operator of long preemptible
// jobs depends on (a damaged newest checkpoint must not stop a requeued job for good; disks
// must not fill with checkpoints; a crashed save must not leave its temp file forever), and
// each is testable alone on a folder of files. Committed checkpoints are ckpt_NNNNNNNN.h5;
// a save in progress writes ckpt_NNNNNNNN.h5.tmp.HOST.PID and renames it when complete
// (io/checkpoint_file.h).
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace mom {

std::filesystem::path checkpoint_path(const std::filesystem::path& run_dir, int64_t step);
// Committed checkpoints (ckpt_NNNNNNNN.h5), newest step first; empty when there are none.
std::vector<std::filesystem::path> checkpoints_newest_first(const std::filesystem::path& run_dir);
// Newest committed checkpoint, or empty.
std::filesystem::path latest_checkpoint(const std::filesystem::path& run_dir);
// The step in a committed checkpoint's name.
int64_t checkpoint_step(const std::filesystem::path& ckpt);

// The checkpoint a resume takes: the newest that passes verification (every dataset and
// attribute read with its checksums, as `mom ckpt inspect --verify`, and its config parsed).
struct ResumeChoice {
  std::filesystem::path checkpoint;  // empty when none is usable
  // Each newer checkpoint that failed, with its error. It is moved aside to `moved_to`
  // (NAME.damaged, or NAME.damaged.N when that exists): never deleted or overwritten, and the
  // resumed run can write a good checkpoint of that step.
  struct Skipped {
    std::filesystem::path path, moved_to;
    std::string error;
  };
  std::vector<Skipped> skipped;
};
ResumeChoice choose_resume_checkpoint(const std::filesystem::path& run_dir);

// Retention after a checkpoint of `newest_step` is committed: keeps the newest `keep_last`
// committed checkpoints (0: all), every one whose step is a multiple of `keep_every` (0: none
// by this rule) and always the newest; deletes the rest. Returns the deleted files.
std::vector<std::filesystem::path> apply_retention(const std::filesystem::path& run_dir, int64_t keep_last,
                                                   int64_t keep_every);

// Temporary files of saves whose process no longer exists (same host, dead PID) are removed;
// those of a live process, or of another host, stay. Returns the removed files.
std::vector<std::filesystem::path> remove_stale_temporaries(const std::filesystem::path& run_dir);

}  // namespace mom
