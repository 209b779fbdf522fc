// TokenExchange: the all-to-all step of expert/module parallelism.
//
// Each rank of an expert-parallel (EP) group routes its own N tokens with a DispatchPlan over
// the GLOBAL module ids of a pool that ModuleSharding spreads over the group. The plan lists
// rows grouped by module, and a rank's modules are one contiguous id range, so the rows bound
// for each peer are already one contiguous slice of the plan-order rows ("plan order", [M]
// rows, the caller gathers them with the backend): nothing is packed on the sending side.
//
// A routing is exchanged in three calls over the EP communicator:
//   exchange_counts(plan)  the per-(peer, module) row counts -> ExchangeLayout (one small trip)
//   to_owners(L, ...)      plan-order rows [M] -> the rows of this rank's modules [R]
//   to_sources(L, ...)     owners' rows [R] -> back to plan order [M] on their sources
// A forward pass sends module inputs with to_owners and returns outputs with to_sources; the
// backward pass sends output gradients with to_owners and returns input gradients with
// to_sources, reusing the layout. Rows are opaque bytes of any width (x rows of C floats,
// QKV rows of 3C). The caller's combine over plan.slot and its scatter-add into dx run in
// plan order as in a single process, so results do not depend on the EP size.
//
// On the owner, local module l's rows form one contiguous block [offsets[l], offsets[l+1]) in a
// fixed order: source EP rank ascending, then the source's plan order. That makes the module's
// GEMM input, and so every result, deterministic. Modules without rows and ranks that receive
// nothing are ordinary (empty blocks, zero counts).
//
// Buffers are host memory (the CPU backend's tensors), or device memory when the EP
// communicator takes device buffers (Communicator::device_memory(), parallel/device_communicator.h):
// the rows then travel device to device and the reordering runs on the device, through a device
// staging buffer.
#pragma once
#include <cstdint>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/process_groups.h"
#include "router/dispatch_plan.h"

namespace mom::parallel {

struct ExchangeLayout {
  int ep_size = 1, local_modules = 0;
  int64_t M = 0;                               // this rank's dispatched rows (plan.M())
  int64_t R = 0;                               // rows this rank's modules compute
  std::vector<int64_t> send_first, send_rows;  // [E] plan-order slice sent to each peer
  std::vector<int64_t> recv_counts;            // [E, local_modules] rows from source s for module l
  std::vector<int64_t> recv_rows;              // [E] rows from each source
  std::vector<int64_t> offsets;                // [local_modules + 1] module l owns [offsets[l], offsets[l+1])
};

// Traffic and time of the trips so far, for metrics.
struct ExchangeStats {
  int64_t bytes_sent = 0;      // to other ranks (a rank's rows for itself are copied, not sent)
  int64_t bytes_received = 0;  // from other ranks
  int64_t trips = 0;           // alltoallv calls, count exchanges included
  double seconds = 0;          // wall time inside the trips, local copies included
};

class TokenExchange {
 public:
  // `ep` is the EP communicator (its rank = EP rank); sharding.ep_size must equal ep.size().
  TokenExchange(Communicator& ep, const ModuleSharding& sharding);
  ~TokenExchange();
  TokenExchange(const TokenExchange&) = delete;
  TokenExchange& operator=(const TokenExchange&) = delete;

  // Trades the row counts of `plan` (over the pool's global ids) with the peers.
  ExchangeLayout exchange_counts(const router::DispatchPlan& plan);
  // plan_rows [L.M rows of row_bytes] -> local_rows [L.R rows], grouped by local module.
  void to_owners(const ExchangeLayout& L, const void* plan_rows, size_t row_bytes, void* local_rows);
  // local_rows [L.R rows] -> plan_rows [L.M rows] at the plan's row positions.
  void to_sources(const ExchangeLayout& L, const void* local_rows, size_t row_bytes, void* plan_rows);

  const ExchangeStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 private:
  void alltoallv(const void* send, const std::vector<int64_t>& send_counts, const std::vector<int64_t>& send_displs,
                 void* recv, const std::vector<int64_t>& recv_counts, const std::vector<int64_t>& recv_displs);

  Communicator& ep_;
  ModuleSharding sharding_;
  ExchangeStats stats_;
  // The source-major receive order, reused across trips: in host memory for host rows, in
  // device memory (from the communicator's DeviceMemory) for device rows.
  char* staging(size_t bytes, bool device);
  bool on_device(const void* a, const void* b) const;

  std::vector<char> staging_;
  DeviceMemory* device_ = nullptr;
  void* device_staging_ = nullptr;
  size_t device_staging_bytes_ = 0;
};

}  // namespace mom::parallel
