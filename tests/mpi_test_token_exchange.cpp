// TokenExchange across ranks equals the single-process computation, bit for bit.
//
// Every rank's input (routing and rows) is generated from (seed, world rank), so any rank can
// regenerate any other's and know exactly which rows its modules must receive, in which order.
// For each EP size E dividing the world and each scenario, the test runs the count exchange
// and the four row trips of a forward and backward pass:
//   to_owners (inputs)   -> the received blocks equal the sources' rows, source rank then plan order
//   module compute       -> a per-module affine map, applied by the owner
//   to_sources (outputs) -> the plan-order outputs and the weighted fixed-order combine equal the
//                           single-process result (gather per module, apply, scatter back)
//   to_owners, to_sources (gradients) -> the gradient rows travel the same way and come back
//                           to their plan positions.
// Scenarios: random routing with one module never chosen and SKIP choices; a routing that
// avoids every module of the last EP rank (it receives nothing) with one rank holding no tokens;
// and a capacity that drops assignments.
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "mpi_test_support.h"
#include "parallel/process_groups.h"
#include "parallel/token_exchange.h"

using namespace mom;
using namespace mom::parallel;

namespace {

constexpr int D = 5, K = 2;

struct Input {
  router::Selection sel;
  router::DispatchPlan plan;
  std::vector<float> x;      // [N, D]
  std::vector<float> dplan;  // [M, D] upstream gradient of the plan-order outputs
};

// Which modules a scenario may route to.
bool allowed(int scenario, int module, const ModuleSharding& s) {
  if (scenario == 0) return module != 1;
  if (scenario == 1) return s.ep_size == 1 || s.owner(module) != s.ep_size - 1;
  return true;
}

Input make_input(int scenario, int world_rank, const ModuleSharding& s) {
  std::mt19937 rng(1000u * static_cast<unsigned>(scenario) + static_cast<unsigned>(world_rank));
  Input in;
  const int M = s.modules;
  int N = static_cast<int>(rng() % 13);
  if (scenario == 1 && world_rank == 0) N = 0;
  std::vector<int> choices;
  for (int j = 0; j < M; ++j)
    if (allowed(scenario, j, s)) choices.push_back(j);
  choices.push_back(M);  // SKIP: no module computes it
  in.sel.N = N, in.sel.K = K, in.sel.classes = M + 1;
  in.sel.probs.assign(static_cast<size_t>(N) * (M + 1), 0.0);
  for (int a = 0; a < N * K; ++a) {
    in.sel.choice.push_back(choices[rng() % choices.size()]);
    in.sel.weight.push_back(static_cast<double>(rng() % 1000) / 997.0);
  }
  router::CapacityConfig cap;
  if (scenario == 2) cap.factor = 0.75;
  in.plan = router::make_plan(in.sel, M, cap);
  for (int i = 0; i < N * D; ++i) in.x.push_back(static_cast<float>(static_cast<int>(rng() % 20001) - 10000) / 977.0f);
  for (int64_t i = 0; i < in.plan.M() * D; ++i)
    in.dplan.push_back(static_cast<float>(static_cast<int>(rng() % 2001) - 1000) / 331.0f);
  return in;
}

// Module j's computation: an elementwise affine map, the same function wherever it runs.
void apply_module(int j, const float* in, float* out) {
  for (int d = 0; d < D; ++d) out[d] = in[d] * (1.0f + 0.125f * j - 0.0625f * d) + (0.5f * j - 0.25f * d);
}

// The usual fixed-order combine: y[t] = sum over k of weight·out[slot[t,k]], k ascending.
std::vector<float> weighted_combine(const Input& in, const std::vector<float>& plan_out) {
  std::vector<float> y(static_cast<size_t>(in.sel.N) * D, 0.0f);
  for (int t = 0; t < in.sel.N; ++t)
    for (int k = 0; k < K; ++k) {
      const int32_t row = in.plan.slot[t * K + k];
      if (row < 0) continue;
      const float w = static_cast<float>(in.sel.weight[t * K + k]);
      for (int d = 0; d < D; ++d) y[t * D + d] += w * plan_out[static_cast<size_t>(row) * D + d];
    }
  return y;
}

int module_of_plan_row(const router::DispatchPlan& plan, int64_t i) {
  int j = 0;
  while (plan.offsets[j + 1] <= i) ++j;
  return j;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

void run_case(Communicator& world, int E, int scenario) {
  const std::string label = "E=" + std::to_string(E) + " scenario " + std::to_string(scenario);
  ProcessGroups g = make_process_groups(world, E);
  const ModuleSharding sharding(3 * E, E);
  const int q = g.ep->rank(), base = g.layout.ep_group() * E;
  std::vector<Input> group;  // every rank of this EP group, regenerated here
  for (int s = 0; s < E; ++s) group.push_back(make_input(scenario, base + s, sharding));
  const Input& mine = group[q];

  TokenExchange ex(*g.ep, sharding);
  const size_t row_bytes = D * sizeof(float);
  const ExchangeLayout L = ex.exchange_counts(mine.plan);
  MPI_CHECK_MSG(L.M == mine.plan.M(), label);
  // The caller gathers its token rows into plan order (the backend's gather_rows).
  std::vector<float> plan_in(static_cast<size_t>(L.M) * D);
  for (int64_t i = 0; i < L.M; ++i)
    std::memcpy(&plan_in[i * D], &mine.x[static_cast<size_t>(mine.plan.rows[i]) * D], row_bytes);
  std::vector<float> local_rows(static_cast<size_t>(L.R) * D);
  ex.to_owners(L, plan_in.data(), row_bytes, local_rows.data());

  // What each local module must hold: per source EP rank, that source's rows for it in plan
  // order; taken from `rows_of(source, plan row)`.
  auto expected_blocks = [&](auto rows_of) {
    std::vector<float> want;
    for (int l = 0; l < sharding.per_rank(); ++l) {
      const int j = sharding.global_id(q, l);
      MPI_CHECK_MSG(L.offsets[l] * D == static_cast<int64_t>(want.size()), label);
      for (int s = 0; s < E; ++s)
        for (int64_t i = group[s].plan.offsets[j]; i < group[s].plan.offsets[j + 1]; ++i) {
          const float* row = rows_of(s, i);
          want.insert(want.end(), row, row + D);
        }
    }
    return want;
  };
  MPI_CHECK_MSG(same_bits(local_rows, expected_blocks([&](int s, int64_t i) {
                  return &group[s].x[static_cast<size_t>(group[s].plan.rows[i]) * D];
                })),
                label + ": dispatched blocks");
  if (scenario == 1 && E > 1 && q == E - 1) MPI_CHECK_MSG(L.R == 0, label + ": last EP rank receives nothing");

  // The owner computes its modules on their blocks.
  std::vector<float> local_out(local_rows.size());
  for (int l = 0; l < sharding.per_rank(); ++l)
    for (int64_t r = L.offsets[l]; r < L.offsets[l + 1]; ++r)
      apply_module(sharding.global_id(q, l), &local_rows[r * D], &local_out[r * D]);
  std::vector<float> plan_out(static_cast<size_t>(L.M) * D);
  ex.to_sources(L, local_out.data(), row_bytes, plan_out.data());

  // Single process: gather the rows per module, apply, scatter back.
  std::vector<float> ref(static_cast<size_t>(mine.plan.M()) * D);
  for (int64_t i = 0; i < mine.plan.M(); ++i)
    apply_module(module_of_plan_row(mine.plan, i), &mine.x[static_cast<size_t>(mine.plan.rows[i]) * D], &ref[i * D]);
  MPI_CHECK_MSG(same_bits(plan_out, ref), label + ": combined rows");
  MPI_CHECK_MSG(same_bits(weighted_combine(mine, plan_out), weighted_combine(mine, ref)), label + ": combine");

  // Backward: the gradient of the outputs goes to the owners in the same order as the inputs
  // did, and the gradient of the module inputs (here 2·it) comes back to the plan positions.
  std::vector<float> dlocal(static_cast<size_t>(L.R) * D);
  ex.to_owners(L, mine.dplan.data(), row_bytes, dlocal.data());
  MPI_CHECK_MSG(same_bits(dlocal, expected_blocks([&](int s, int64_t i) { return &group[s].dplan[i * D]; })),
                label + ": backward to_owners blocks");
  for (float& v : dlocal) v *= 2.0f;
  std::vector<float> dplan_rows(static_cast<size_t>(L.M) * D);
  ex.to_sources(L, dlocal.data(), row_bytes, dplan_rows.data());
  std::vector<float> want = mine.dplan;
  for (float& v : want) v *= 2.0f;
  MPI_CHECK_MSG(same_bits(dplan_rows, want), label + ": backward to_sources rows");

  // Metrics: five trips (counts + four row trips); what leaves one rank arrives at another.
  const ExchangeStats& st = ex.stats();
  MPI_CHECK_MSG(st.trips == 5 && st.seconds >= 0, label);
  int64_t traffic[2] = {st.bytes_sent, st.bytes_received};
  g.ep->allreduce_sum(traffic, 2);
  MPI_CHECK_MSG(traffic[0] == traffic[1], label + ": bytes sent == bytes received");
  if (E == 1) MPI_CHECK_MSG(st.bytes_sent == 0, label + ": one rank sends nothing");
}

}  // namespace

int main(int argc, char** argv) {
  return mpitest::run(argc, argv, "mpi_test_token_exchange", [](Communicator& world) {
    for (int E = 1; E <= world.size(); ++E) {
      if (world.size() % E) continue;
      for (int scenario = 0; scenario < 3; ++scenario) run_case(world, E, scenario);
    }
  });
}
