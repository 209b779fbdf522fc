// TokenExchange: count exchange, row trips and the source-major <-> module-major reordering
// (see the header for the order guarantees).
#include "parallel/token_exchange.h"

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
// module-major order the modules compute on ([local module][source]), one block per pair.
void reorder(const ExchangeLayout& L, const float* from, float* to, int width, bool source_to_module) {
  const size_t row_bytes = static_cast<size_t>(width) * sizeof(float);
  std::vector<int64_t> module_cursor(L.offsets.begin(), L.offsets.end() - 1);
  int64_t source_pos = 0;
  for (int s = 0; s < L.ep_size; ++s) {
    for (int l = 0; l < L.local_modules; ++l) {
      const int64_t n = L.recv_counts[static_cast<size_t>(s) * L.local_modules + l];
      if (n) {
        const int64_t src = source_to_module ? source_pos : module_cursor[l];
        const int64_t dst = source_to_module ? module_cursor[l] : source_pos;
        std::memcpy(to + dst * width, from + src * width, static_cast<size_t>(n) * row_bytes);
      }
      source_pos += n;
      module_cursor[l] += n;
    }
  }
}

}  // namespace

TokenExchange::TokenExchange(Communicator& ep, const ModuleSharding& sharding) : ep_(ep), sharding_(sharding) {
  if (sharding_.ep_size != ep_.size())
    throw std::logic_error("TokenExchange: the sharding's ep_size differs from the EP communicator's size");
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

ExchangeLayout TokenExchange::dispatch(const router::DispatchPlan& plan, const float* x, int width,
                                       std::vector<float>& local_rows) {
  if (plan.modules != sharding_.modules)
    throw std::logic_error("TokenExchange::dispatch: the plan's module count differs from the sharded pool's");
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

  // Gather the tokens into plan order: then each peer's rows are one contiguous slice.
  std::vector<float> plan_rows(static_cast<size_t>(L.M) * width);
  for (int64_t i = 0; i < L.M; ++i)
    std::memcpy(&plan_rows[static_cast<size_t>(i) * width], x + static_cast<int64_t>(plan.rows[i]) * width,
                static_cast<size_t>(width) * sizeof(float));
  stats_.seconds += seconds_since(t0);
  to_owners(L, plan_rows.data(), width, local_rows);
  return L;
}

void TokenExchange::to_owners(const ExchangeLayout& L, const float* plan_rows, int width,
                              std::vector<float>& local_rows) {
  const auto t0 = clock_type::now();
  const int64_t row_bytes = static_cast<int64_t>(width) * sizeof(float);
  std::vector<int64_t> sc(L.ep_size), sd(L.ep_size), rc(L.ep_size);
  for (int p = 0; p < L.ep_size; ++p)
    sc[p] = L.send_rows[p] * row_bytes, sd[p] = L.send_first[p] * row_bytes, rc[p] = L.recv_rows[p] * row_bytes;
  const std::vector<int64_t> rd = exclusive_prefix(rc);
  std::vector<float> staging(static_cast<size_t>(L.R) * width);
  alltoallv(plan_rows, sc, sd, staging.data(), rc, rd);
  local_rows.resize(static_cast<size_t>(L.R) * width);
  reorder(L, staging.data(), local_rows.data(), width, true);
  stats_.seconds += seconds_since(t0);
}

void TokenExchange::to_sources(const ExchangeLayout& L, const float* local_rows, int width,
                               std::vector<float>& plan_rows) {
  const auto t0 = clock_type::now();
  const int64_t row_bytes = static_cast<int64_t>(width) * sizeof(float);
  std::vector<float> staging(static_cast<size_t>(L.R) * width);
  reorder(L, local_rows, staging.data(), width, false);
  std::vector<int64_t> sc(L.ep_size), rc(L.ep_size), rd(L.ep_size);
  for (int p = 0; p < L.ep_size; ++p)
    sc[p] = L.recv_rows[p] * row_bytes, rc[p] = L.send_rows[p] * row_bytes, rd[p] = L.send_first[p] * row_bytes;
  const std::vector<int64_t> sd = exclusive_prefix(sc);
  plan_rows.resize(static_cast<size_t>(L.M) * width);
  alltoallv(staging.data(), sc, sd, plan_rows.data(), rc, rd);
  stats_.seconds += seconds_since(t0);
}

void TokenExchange::combine(const ExchangeLayout& L, const float* local_out, int width, std::vector<float>& plan_out) {
  to_sources(L, local_out, width, plan_out);
}

void TokenExchange::combine_backward(const ExchangeLayout& L, const float* dplan_out, int width,
                                     std::vector<float>& dlocal_out) {
  to_owners(L, dplan_out, width, dlocal_out);
}

void TokenExchange::dispatch_backward(const ExchangeLayout& L, const float* dlocal_rows, int width,
                                      std::vector<float>& dplan_rows) {
  to_sources(L, dlocal_rows, width, dplan_rows);
}

}  // namespace mom::parallel
