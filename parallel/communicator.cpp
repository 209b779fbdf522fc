// The timeout default and SoloCommunicator: one rank, so each collective copies its own part.
#include "parallel/communicator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "core/error.h"

namespace mom {

bool poll_until(double timeout_s, const std::function<bool()>& done) {
  using clock = std::chrono::steady_clock;
  const auto deadline =
      clock::now() + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(timeout_s));
  auto pause = std::chrono::microseconds(0);
  for (int polls = 0;; ++polls) {
    if (done()) return true;
    if (clock::now() >= deadline) return false;
    if (polls < 1000) continue;
    pause = std::min(std::chrono::microseconds(200), pause + std::chrono::microseconds(10));
    std::this_thread::sleep_for(pause);
  }
}

double default_comm_timeout_s() {
  const char* v = std::getenv("MOM_COMM_TIMEOUT_S");
  if (!v || !*v) return 300.0;
  char* end = nullptr;
  const double s = std::strtod(v, &end);
  require(end && *end == '\0' && std::isfinite(s) && s > 0,
          std::string("MOM_COMM_TIMEOUT_S must be a positive number of seconds, got '") + v + "'");
  return s;
}

void Communicator::set_timeout_s(double seconds) {
  require(std::isfinite(seconds) && seconds > 0, "communicator timeout must be a positive number of seconds");
  timeout_s_ = seconds;
}

void Communicator::gather_bytes(const void* send, void* recv, size_t bytes, int root) {
  const int n = size(), me = rank();
  std::vector<int64_t> send_counts(n, 0), send_displs(n, 0), recv_counts(n, 0), recv_displs(n, 0);
  send_counts[root] = static_cast<int64_t>(bytes);
  if (me == root)
    for (int p = 0; p < n; ++p)
      recv_counts[p] = static_cast<int64_t>(bytes), recv_displs[p] = p * static_cast<int64_t>(bytes);
  alltoallv_bytes(send, send_counts.data(), send_displs.data(), recv, recv_counts.data(), recv_displs.data());
}

void SoloCommunicator::reduce_scatter_sum(const float* send, float* recv, size_t block) {
  if (block && send != recv) std::memmove(recv, send, block * sizeof(float));
}

void SoloCommunicator::allgather_bytes(const void* send, void* recv, size_t bytes) {
  if (bytes && send != recv) std::memmove(recv, send, bytes);
}

void SoloCommunicator::alltoallv_bytes(const void* send, const int64_t* send_counts, const int64_t* send_displs,
                                       void* recv, const int64_t* recv_counts, const int64_t* recv_displs) {
  if (send_counts[0] != recv_counts[0]) throw std::logic_error("alltoallv: send and receive counts differ on one rank");
  if (send_counts[0])
    std::memmove(static_cast<char*>(recv) + recv_displs[0], static_cast<const char*>(send) + send_displs[0],
                 static_cast<size_t>(send_counts[0]));
}

void SoloCommunicator::broadcast_bytes(void*, size_t, int root) {
  if (root != 0) throw std::logic_error("broadcast: root out of range for a single-rank communicator");
}

std::unique_ptr<Communicator> SoloCommunicator::split(int color, int) {
  if (color < 0) throw std::logic_error("split: color must be >= 0");
  auto child = std::make_unique<SoloCommunicator>();
  child->set_timeout_s(timeout_s_);
  return child;
}

}  // namespace mom
