// make_plan: from a Selection to the grouped row list each module computes, with optional
// capacity; routing_stats: the per-decision metrics.
//
// Why a counting sort: the grouping must be stable in (token, choice) order so that the plan
// (and everything computed from it) is the same bits on every run; two passes over the N·K
// assignments (count, then place with one cursor per module) give that in O(N·K) without a
// comparison sort. Capacity decides first which assignments are kept, then the same placement
// runs over the kept ones only, so a dropped assignment simply has no row.
#include "router/dispatch_plan.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "core/error.h"

namespace mom::router {

namespace {

// ceil(factor·N·K / modules). The factor is a decimal from a config (1.1, 1.25) and rarely exact
// in binary, so a product that lands within rounding of an integer counts as that integer:
// 1.1·10/1 must give 11, not 12.
int64_t capacity_for(double factor, int64_t assignments, int modules) {
  const double x = factor * static_cast<double>(assignments) / modules;
  const double nearest = std::round(x);
  if (std::abs(x - nearest) <= 1e-9 * std::max(1.0, x)) return static_cast<int64_t>(nearest);
  return static_cast<int64_t>(std::ceil(x));
}

}  // namespace

DispatchPlan make_plan(const Selection& sel, int modules, const CapacityConfig& cap) {
  if (modules < 0 || modules > sel.classes) throw std::logic_error("make_plan: modules exceed the router's classes");
  DispatchPlan plan;
  plan.modules = modules, plan.N = sel.N, plan.K = sel.K;
  const int64_t A = static_cast<int64_t>(sel.N) * sel.K;  // assignments, in (token, k) order
  // keep[a]: assignment a goes to a real module and survives capacity.
  std::vector<char> keep(static_cast<size_t>(A), 0);
  for (int64_t a = 0; a < A; ++a) keep[a] = sel.choice[a] < modules;

  if (cap.factor > 0 && modules > 0) {
    plan.capacity = capacity_for(cap.factor, A, modules);
    if (cap.policy == DropPolicy::Position) {
      // First come, first served in (token, k) order.
      std::vector<int64_t> taken(modules, 0);
      for (int64_t a = 0; a < A; ++a)
        if (keep[a] && taken[sel.choice[a]]++ >= plan.capacity) keep[a] = 0;
    } else {
      // Each module keeps its `capacity` most probable assignments. The candidate list is built
      // in (token, k) order and sorted stably, so equal probabilities keep that order.
      std::vector<std::vector<int64_t>> by_module(modules);
      for (int64_t a = 0; a < A; ++a)
        if (keep[a]) by_module[sel.choice[a]].push_back(a);
      auto prob = [&](int64_t a) { return sel.probs[(a / sel.K) * sel.classes + sel.choice[a]]; };
      for (auto& list : by_module) {
        if (static_cast<int64_t>(list.size()) <= plan.capacity) continue;
        std::stable_sort(list.begin(), list.end(), [&](int64_t x, int64_t y) { return prob(x) > prob(y); });
        for (size_t i = static_cast<size_t>(plan.capacity); i < list.size(); ++i) keep[list[i]] = 0;
      }
    }
    for (int64_t a = 0; a < A; ++a)
      if (sel.choice[a] < modules && !keep[a]) ++plan.dropped;
  }

  // Counting sort of the kept assignments by module, stable in (token, k) order.
  plan.offsets.assign(modules + 1, 0);
  for (int64_t a = 0; a < A; ++a)
    if (keep[a]) ++plan.offsets[sel.choice[a] + 1];
  for (int j = 0; j < modules; ++j) plan.offsets[j + 1] += plan.offsets[j];
  plan.rows.assign(static_cast<size_t>(plan.offsets[modules]), 0);
  plan.slot.assign(static_cast<size_t>(A), -1);
  std::vector<int64_t> cursor(plan.offsets.begin(), plan.offsets.end() - 1);
  for (int64_t a = 0; a < A; ++a) {
    if (!keep[a]) continue;
    const int64_t row = cursor[sel.choice[a]]++;
    plan.rows[row] = static_cast<int32_t>(a / sel.K);
    plan.slot[a] = static_cast<int32_t>(row);
  }
  return plan;
}

RoutingStats routing_stats(const Selection& sel, const DispatchPlan& plan, int modules) {
  RoutingStats st;
  st.load.assign(sel.classes, 0);
  const int64_t A = static_cast<int64_t>(sel.N) * sel.K;
  int64_t skipped = 0;
  for (int64_t a = 0; a < A; ++a) {
    const int c = sel.choice[a];
    if (c >= modules) {
      ++st.load[c], ++skipped;
    } else if (plan.slot[a] >= 0) {
      ++st.load[c];  // a dropped assignment did no work: it is not load
    }
  }
  st.skip_rate = A ? static_cast<double>(skipped) / static_cast<double>(A) : 0.0;
  double entropy = 0;
  for (int t = 0; t < sel.N; ++t) {
    double h = 0;
    for (int i = 0; i < sel.classes; ++i) {
      const double p = sel.probs[static_cast<size_t>(t) * sel.classes + i];
      if (p > 0) h -= p * std::log(p);
    }
    entropy += h;
  }
  st.entropy = sel.N ? entropy / sel.N : 0.0;
  st.dropped = plan.dropped;
  return st;
}

DropPolicy parse_drop_policy(const std::string& name) {
  if (name == "position") return DropPolicy::Position;
  if (name == "probability") return DropPolicy::LowestProbability;
  throw UserError("unknown capacity drop policy '" + name + "' (allowed: position, probability)");
}

}  // namespace mom::router
