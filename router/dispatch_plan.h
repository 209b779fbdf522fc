// DispatchPlan: which rows each module computes, and where each (token, choice) finds its
// result. Built on the host from a Selection, then copied to the device as index tensors.
//
// Rows are grouped by module in a stable order (token, then choice), so every module sees a
// contiguous block and runs one GEMM per projection; combine walks each token's choices in
// order k = 0..K-1, so sums have a fixed order (no atomics). A module with no rows has an
// empty block: a normal case, not a special one.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "router/gating.h"

namespace mom::router {

enum class DropPolicy { Position, LowestProbability };

struct CapacityConfig {
  double factor = 0;  // 0: dropless; else each module takes at most ceil(factor·N·K / modules)
  DropPolicy policy = DropPolicy::Position;  // which assignments a full module drops
};

struct DispatchPlan {
  int modules = 0, N = 0, K = 0;
  std::vector<int32_t> rows;     // [M] token of each dispatched row, grouped by module
  std::vector<int64_t> offsets;  // [modules + 1] module j owns rows [offsets[j], offsets[j+1])
  std::vector<int32_t> slot;     // [N, K] dispatched row of (token, choice); -1 for SKIP or dropped
  int64_t dropped = 0;           // assignments dropped by capacity
  int64_t capacity = 0;          // per-module capacity (0: dropless)
  int64_t M() const { return static_cast<int64_t>(rows.size()); }
  int64_t count(int j) const { return offsets[j + 1] - offsets[j]; }
};

DispatchPlan make_plan(const Selection& sel, int modules, const CapacityConfig& cap);
RoutingStats routing_stats(const Selection& sel, const DispatchPlan& plan, int modules);
DropPolicy parse_drop_policy(const std::string& name);  // "position" | "probability"

}  // namespace mom::router
