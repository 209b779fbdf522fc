// TokenExchange: the all-to-all step of expert/module parallelism, on host float rows.
//
// Each rank of an expert-parallel (EP) group routes its own N tokens with a DispatchPlan over
// the GLOBAL module ids of a pool that ModuleSharding spreads over the group. The plan lists
// rows grouped by module, and a rank's modules are one contiguous id range, so the rows bound
// for each peer are already one contiguous slice of the plan ("plan order"): nothing is
// packed on the sending side.
//
// The four trips, each one alltoallv over the EP communicator:
//   forward   dispatch()          x[N, W] -> rows of this rank's modules      [R, W]
//             combine()           module outputs [R, W] -> plan order          [M, W]
//   backward  combine_backward()  d(plan-order outputs) [M, W] -> owners       [R, W]
//             dispatch_backward() d(module inputs) [R, W] -> plan order        [M, W]
// combine() and dispatch_backward() are the same trip (owners -> sources), as are
// combine_backward() and dispatch() after its gather. After combine() the source applies the
// usual fixed-order combine over plan.slot; after dispatch_backward() it scatter-adds plan row i
// into dx[plan.rows[i]] in plan order. Neither is done here, so the sums keep the same order as
// in a single process and the result does not depend on the EP size.
//
// On the owner, local module l's rows form one contiguous block [offsets[l], offsets[l+1]) in a
// fixed order: source EP rank ascending, then the source's plan order. That makes the module's
// GEMM input, and so every result, deterministic. Modules without rows and ranks that receive
// nothing are ordinary (empty blocks, zero counts).
//
// dispatch() first exchanges the per-peer, per-module row counts (one small alltoallv) and
// returns them as an ExchangeLayout; the caller keeps it for the other three trips of the same
// routing (one per layer and step).
#pragma once
#include <cstdint>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/process_groups.h"
#include "router/dispatch_plan.h"

namespace mom::parallel {

struct ExchangeLayout {
  int ep_size = 1, local_modules = 0;
  int64_t M = 0;  // this rank's dispatched rows (plan.M())
  int64_t R = 0;  // rows this rank's modules compute
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

  // x [plan.N, width]; plan over the pool's global ids (plan.modules == sharding.modules).
  // local_rows becomes [layout.R, width], grouped by local module.
  ExchangeLayout dispatch(const router::DispatchPlan& plan, const float* x, int width, std::vector<float>& local_rows);
  // local_out [layout.R, width] -> plan_out [layout.M, width] at the plan's row positions.
  void combine(const ExchangeLayout& layout, const float* local_out, int width, std::vector<float>& plan_out);
  // dplan_out [layout.M, width] -> dlocal_out [layout.R, width] (gradient of combine).
  void combine_backward(const ExchangeLayout& layout, const float* dplan_out, int width,
                        std::vector<float>& dlocal_out);
  // dlocal_rows [layout.R, width] -> dplan_rows [layout.M, width] (gradient of dispatch, before
  // the caller's scatter-add into dx).
  void dispatch_backward(const ExchangeLayout& layout, const float* dlocal_rows, int width,
                         std::vector<float>& dplan_rows);

  const ExchangeStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 private:
  // Plan-order rows [M, width] -> owners' module-major rows [R, width].
  void to_owners(const ExchangeLayout& layout, const float* plan_rows, int width, std::vector<float>& local_rows);
  // Owners' module-major rows [R, width] -> plan order [M, width].
  void to_sources(const ExchangeLayout& layout, const float* local_rows, int width, std::vector<float>& plan_rows);
  void alltoallv(const void* send, const std::vector<int64_t>& send_counts, const std::vector<int64_t>& send_displs,
                 void* recv, const std::vector<int64_t>& recv_counts, const std::vector<int64_t>& recv_displs);

  Communicator& ep_;
  ModuleSharding sharding_;
  ExchangeStats stats_;
};

}  // namespace mom::parallel
