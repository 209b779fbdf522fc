// NCCL when every rank has a GPU of its own, else MPI with host staging (see
// parallel/device_communicator.h).
#include "parallel/cuda/select_communicator.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

#include "core/backend.h"
#include "core/backend/cuda/cuda_backend.h"
#include "core/error.h"
#include "parallel/cuda/cuda_memory.h"
#include "parallel/cuda/staged_communicator.h"
#ifdef MOM_HAVE_NCCL
#include "parallel/nccl/nccl_communicator.h"
#endif

namespace mom::parallel {

namespace {

constexpr size_t kIdentityBytes = 256;  // hostname (up to 64 on Linux) + UUID, zero padded

std::string uuid_hex(const cudaUUID_t& u) {
  static const char* digits = "0123456789abcdef";
  std::string s = "GPU-";
  for (int i = 0; i < 16; ++i) {
    const auto b = static_cast<unsigned char>(u.bytes[i]);
    s += digits[b >> 4];
    s += digits[b & 15];
    if (i == 3 || i == 5 || i == 7 || i == 9) s += '-';
  }
  return s;
}

std::string comm_choice_from_env() {
  const char* v = std::getenv("MOM_COMM");
  const std::string s = v ? v : "";
  if (s.empty() || s == "auto") return "";
  require(s == "mpi" || s == "nccl",
          "MOM_COMM must be \"mpi\" (host staging through MPI), \"nccl\" or \"auto\" (NCCL when every rank has a GPU "
          "of its own), got '" +
              s + "'");
  return s;
}

}  // namespace

std::string local_gpu_identity(int* device_index) {
  auto& be = dynamic_cast<CudaBackend&>(backend_for(Device::CUDA));
  const int dev = be.device_index();
  cudaDeviceProp prop{};
  check_cuda(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "unknown-host");
  if (device_index) *device_index = dev;
  return std::string(host) + " " + uuid_hex(prop.uuid);
}

bool choose_nccl(const std::vector<std::string>& identities, const std::string& forced, bool have_nccl,
                 std::string& why) {
  const size_t n = identities.size();
  if (forced == "mpi") {
    why = "MOM_COMM=mpi";
    return false;
  }
  if (!have_nccl) {
    why = "this build has no NCCL (nccl.h and libnccl were not found at configure time)";
    return false;
  }
  if (forced == "nccl") {
    why = "MOM_COMM=nccl";
    return true;
  }
  if (n <= 1) {
    why = "a single rank has nothing to send";
    return false;
  }
  std::map<std::string, std::vector<size_t>> by_gpu;
  for (size_t r = 0; r < n; ++r) by_gpu[identities[r]].push_back(r);
  for (const auto& [gpu, ranks] : by_gpu)
    if (ranks.size() > 1) {
      why = std::to_string(ranks.size()) + " ranks share one GPU (ranks " + std::to_string(ranks[0]) + " and " +
            std::to_string(ranks[1]) + (ranks.size() > 2 ? ", ..." : "") + " on " + gpu +
            "), which NCCL refuses; give each rank its own GPU (as many GPUs per node as ranks) for NCCL";
      return false;
    }
  why = "each of the " + std::to_string(n) + " ranks has a GPU of its own";
  return true;
}

std::unique_ptr<Communicator> cuda_world_communicator(std::unique_ptr<Communicator> world) {
  int device = 0;
  const std::string forced = comm_choice_from_env();
  std::string mine = local_gpu_identity(&device);
  // Rank 0's MOM_COMM decides for all (a launcher may not pass the variable to every rank);
  // it travels in the record's first byte.
  std::string record(kIdentityBytes, '\0');
  record[0] = forced == "mpi" ? 'm' : forced == "nccl" ? 'n' : 'a';
  std::memcpy(record.data() + 1, mine.data(), std::min(mine.size(), kIdentityBytes - 2));
  std::string all(kIdentityBytes * static_cast<size_t>(world->size()), '\0');
  world->allgather_bytes(record.data(), all.data(), kIdentityBytes);
  std::vector<std::string> identities;
  for (int r = 0; r < world->size(); ++r) identities.emplace_back(all.c_str() + r * kIdentityBytes + 1);
  const char lead = all[0];
  const std::string agreed = lead == 'm' ? "mpi" : lead == 'n' ? "nccl" : "";
#ifdef MOM_HAVE_NCCL
  const bool have_nccl = true;
#else
  const bool have_nccl = false;
#endif
  std::string why;
  const bool nccl = choose_nccl(identities, agreed, have_nccl, why);
  if (world->rank() == 0 && world->size() > 1) {
    std::printf("mom: communicator: %s (%s)\n", nccl ? "NCCL" : "MPI with host staging", why.c_str());
    std::fflush(stdout);
  }
#ifdef MOM_HAVE_NCCL
  if (nccl) return std::make_unique<NcclCommunicator>(std::move(world), device);
#endif
  return std::make_unique<StagedCommunicator>(std::move(world));
}

}  // namespace mom::parallel
