// detect_launch_env: OpenMPI's or Slurm's variables, checked (see the header).
#include "parallel/launch_env.h"

#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"

namespace mom::parallel {

namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

int parse_int(const std::string& text, const std::string& what) {
  size_t used = 0;
  int v = -1;
  try {
    v = std::stoi(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  require(used == text.size() && v >= 0, what + " must be a non-negative integer, got '" + text + "'");
  return v;
}

int env_int(const char* name) {
  const char* v = env(name);
  require(v != nullptr, std::string(name) + " is not set");
  return parse_int(v, name);
}

// SLURM_TASKS_PER_NODE, e.g. "4(x2),3", expanded to one count per node.
std::vector<int> expand_tasks_per_node(const std::string& text) {
  std::vector<int> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = text.find(',', pos);
    const std::string item = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    const size_t paren = item.find("(x");
    int repeat = 1;
    if (paren != std::string::npos) {
      require(item.back() == ')', "SLURM_TASKS_PER_NODE entry '" + item + "' is malformed");
      repeat = parse_int(item.substr(paren + 2, item.size() - paren - 3), "SLURM_TASKS_PER_NODE repeat");
    }
    const int count = parse_int(item.substr(0, paren), "SLURM_TASKS_PER_NODE");
    out.insert(out.end(), static_cast<size_t>(repeat), count);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

void check_consistent(const LaunchEnv& e) {
  const std::string who = e.launcher == "openmpi" ? "OMPI_COMM_WORLD_*" : "SLURM_*";
  require(e.world_size >= 1 && e.rank < e.world_size,
          who + ": rank " + std::to_string(e.rank) + " is not below the world size " + std::to_string(e.world_size));
  require(e.local_size >= 1 && e.local_rank < e.local_size && e.local_size <= e.world_size,
          who + ": local rank " + std::to_string(e.local_rank) + " / local size " + std::to_string(e.local_size) +
              " contradict each other or the world size " + std::to_string(e.world_size));
}

}  // namespace

LaunchEnv detect_launch_env() {
  LaunchEnv e;
  if (env("OMPI_COMM_WORLD_RANK")) {
    e.launcher = "openmpi";
    e.rank = env_int("OMPI_COMM_WORLD_RANK");
    e.world_size = env_int("OMPI_COMM_WORLD_SIZE");
    e.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK");
    e.local_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE");
  } else if (env("SLURM_PROCID")) {
    e.launcher = "slurm";
    e.rank = env_int("SLURM_PROCID");
    e.world_size = env_int("SLURM_NTASKS");
    e.local_rank = env_int("SLURM_LOCALID");
    if (const char* list = env("SLURM_TASKS_PER_NODE")) {
      const std::vector<int> counts = expand_tasks_per_node(list);
      const int node = env("SLURM_NODEID") ? env_int("SLURM_NODEID") : 0;
      require(node < static_cast<int>(counts.size()), "SLURM_NODEID " + std::to_string(node) +
                                                          " has no entry in SLURM_TASKS_PER_NODE '" + list + "'");
      e.local_size = counts[static_cast<size_t>(node)];
    } else {
      require(env("SLURM_NTASKS_PER_NODE") != nullptr,
              "Slurm launch without SLURM_TASKS_PER_NODE or SLURM_NTASKS_PER_NODE: cannot tell the ranks per node");
      e.local_size = env_int("SLURM_NTASKS_PER_NODE");
    }
  } else {
    return e;
  }
  check_consistent(e);
  return e;
}

}  // namespace mom::parallel
