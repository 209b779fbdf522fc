// TokenExchange: count exchange, row trips and the source-major <-> module-major reordering
// (see the header for the order guarantees).
#include "parallel/token_exchange.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>

namespace mom::parallel {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

std::vector<int64_t> exclusive_prefix(const std::vector<int64_t>& v) {
  std::vector<int64_t> out(v.size(), 0);
  for (size_t i = 1; i < v.size(); ++i) out[i] = out[i - 1] + v[i - 1];
  return out;
}

// Copies the rows between the source-major receive order ([source][local module]) and the
// module-major order the modules compute on ([local module][source]), one block per pair; with
// `device`, the blocks are device memory copied by it.
void reorder(const ExchangeLayout& L, const char* from, char* to, size_t row_bytes, bool source_to_module,
             DeviceMemory* device) {
  std::vector<int64_t> module_cursor(L.offsets.begin(), L.offsets.end() - 1);
  int64_t source_pos = 0;
  for (int s = 0; s < L.ep_size; ++s) {
    for (int l = 0; l < L.local_modules; ++l) {
      const int64_t n = L.recv_counts[static_cast<size_t>(s) * L.local_modules + l];
      if (n) {
        const int64_t src = source_to_module ? source_pos : module_cursor[l];
        const int64_t dst = source_to_module ? module_cursor[l] : source_pos;
        if (device)
          device->copy(to + dst * row_bytes, from + src * row_bytes, static_cast<size_t>(n) * row_bytes);
        else
          std::memcpy(to + dst * row_bytes, from + src * row_bytes, static_cast<size_t>(n) * row_bytes);
      }
      source_pos += n;
      module_cursor[l] += n;
    }
  }
  if (device) device->wait();
}

}  // namespace

TokenExchange::TokenExchange(Communicator& ep, const ModuleSharding& sharding)
    : ep_(ep), sharding_(sharding), device_(ep.device_memory()) {
  if (sharding_.ep_size != ep_.size())
    throw std::logic_error("TokenExchange: the sharding's ep_size differs from the EP communicator's size");
}

TokenExchange::~TokenExchange() {
  if (device_staging_) device_->release(device_staging_);
}

bool TokenExchange::on_device(const void* a, const void* b) const {
  return device_ && (device_->is_device(a) || device_->is_device(b));
}

char* TokenExchange::staging(size_t bytes, bool device) {
  if (!device) {
    staging_.resize(bytes);
    return staging_.data();
  }
  if (!device_staging_ || device_staging_bytes_ < bytes) {
    if (device_staging_) device_->release(device_staging_);
    device_staging_ = nullptr;
    const size_t grown = std::max(bytes, device_staging_bytes_ + device_staging_bytes_ / 2);
    device_staging_ = device_->allocate(grown);
    device_staging_bytes_ = grown;
  }
  return static_cast<char*>(device_staging_);
}

void TokenExchange::alltoallv(const void* send, const std::vector<int64_t>& send_counts,
                              const std::vector<int64_t>& send_displs, void* recv,
                              const std::vector<int64_t>& recv_counts, const std::vector<int64_t>& recv_displs) {
  ep_.alltoallv_bytes(send, send_counts.data(), send_displs.data(), recv, recv_counts.data(), recv_displs.data());
  const int me = ep_.rank();
  for (int p = 0; p < ep_.size(); ++p) {
    if (p == me) continue;
    stats_.bytes_sent += send_counts[p];
    stats_.bytes_received += recv_counts[p];
  }
  ++stats_.trips;
}

ExchangeLayout TokenExchange::exchange_counts(const router::DispatchPlan& plan) {
  if (plan.modules != sharding_.modules)
    throw std::logic_error("TokenExchange: the plan's module count differs from the sharded pool's");
  const auto t0 = clock_type::now();
  const int E = ep_.size(), per = sharding_.per_rank();
  ExchangeLayout L;
  L.ep_size = E, L.local_modules = per, L.M = plan.M();
  L.send_first.resize(E), L.send_rows.resize(E);
  // Row counts per (peer, peer's local module), in the peer's module order.
  std::vector<int64_t> send_counts(static_cast<size_t>(E) * per);
  for (int p = 0; p < E; ++p) {
    L.send_first[p] = plan.offsets[sharding_.first(p)];
    L.send_rows[p] = plan.offsets[sharding_.end(p)] - L.send_first[p];
    for (int l = 0; l < per; ++l) send_counts[static_cast<size_t>(p) * per + l] = plan.count(sharding_.global_id(p, l));
  }
  L.recv_counts.resize(send_counts.size());
  const std::vector<int64_t> count_bytes(E, static_cast<int64_t>(per * sizeof(int64_t)));
  std::vector<int64_t> count_displs(E);
  for (int p = 0; p < E; ++p) count_displs[p] = static_cast<int64_t>(p) * per * sizeof(int64_t);
  alltoallv(send_counts.data(), count_bytes, count_displs, L.recv_counts.data(), count_bytes, count_displs);

  L.recv_rows.assign(E, 0);
  L.offsets.assign(per + 1, 0);
  for (int s = 0; s < E; ++s)
    for (int l = 0; l < per; ++l) {
      const int64_t n = L.recv_counts[static_cast<size_t>(s) * per + l];
      L.recv_rows[s] += n;
      L.offsets[l + 1] += n;
    }
  for (int l = 0; l < per; ++l) L.offsets[l + 1] += L.offsets[l];
  L.R = L.offsets[per];
  stats_.seconds += seconds_since(t0);
  return L;
}

void TokenExchange::to_owners(const ExchangeLayout& L, const void* plan_rows, size_t row_bytes, void* local_rows) {
  const auto t0 = clock_type::now();
  const int64_t rb = static_cast<int64_t>(row_bytes);
  std::vector<int64_t> sc(L.ep_size), sd(L.ep_size), rc(L.ep_size);
  for (int p = 0; p < L.ep_size; ++p)
    sc[p] = L.send_rows[p] * rb, sd[p] = L.send_first[p] * rb, rc[p] = L.recv_rows[p] * rb;
  const std::vector<int64_t> rd = exclusive_prefix(rc);
  const bool device = on_device(plan_rows, local_rows);
  char* stage = staging(static_cast<size_t>(L.R) * row_bytes, device);
  alltoallv(plan_rows, sc, sd, stage, rc, rd);
  reorder(L, stage, static_cast<char*>(local_rows), row_bytes, true, device ? device_ : nullptr);
  stats_.seconds += seconds_since(t0);
}

void TokenExchange::to_sources(const ExchangeLayout& L, const void* local_rows, size_t row_bytes, void* plan_rows) {
  const auto t0 = clock_type::now();
  const int64_t rb = static_cast<int64_t>(row_bytes);
  const bool device = on_device(local_rows, plan_rows);
  char* stage = staging(static_cast<size_t>(L.R) * row_bytes, device);
  reorder(L, static_cast<const char*>(local_rows), stage, row_bytes, false, device ? device_ : nullptr);
  std::vector<int64_t> sc(L.ep_size), rc(L.ep_size), rd(L.ep_size);
  for (int p = 0; p < L.ep_size; ++p)
    sc[p] = L.recv_rows[p] * rb, rc[p] = L.send_rows[p] * rb, rd[p] = L.send_first[p] * rb;
  const std::vector<int64_t> sd = exclusive_prefix(sc);
  alltoallv(stage, sc, sd, plan_rows, rc, rd);
  stats_.seconds += seconds_since(t0);
}

}  // namespace mom::parallel
