// Errors a user can cause (bad config, missing or corrupt files, bad requests).
//
// Why a distinct type: the `mom` binary catches UserError at the top, prints its message
// (which names the thing and the fix) and exits with status 2; anything else is a bug and
// exits with status 3 after printing "internal error". Library code throws, never exits.
#pragma once
#include <stdexcept>
#include <string>

namespace mom {

struct UserError : std::runtime_error {
  explicit UserError(const std::string& what) : std::runtime_error(what) {}
};

// Not an error: the run stopped early on purpose and the process should exit with `code`
// (after cleanup such as MPI_Finalize), e.g. 75 after a signal-triggered checkpoint.
struct ExitStatus {
  int code;
};

// Throws UserError(message) when `ok` is false.
inline void require(bool ok, const std::string& message) {
  if (!ok) throw UserError(message);
}

}  // namespace mom
