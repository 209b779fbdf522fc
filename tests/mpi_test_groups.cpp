// Process groups, module sharding and launch-environment detection.
//
// The layout arithmetic is checked for W = 4 with E = 1, 2, 4 on every rank (it needs no
// communication); the communicators from make_process_groups are checked on the real world
// for each E that divides it. The launch environment is checked twice: against the real
// mpirun (its OMPI_* variables must agree with MPI), and with Slurm's and bad variables set
// by hand (the OMPI_* ones removed for that part; nothing after it reads them).
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
#include "mpi_test_support.h"
#include "parallel/launch_env.h"
#include "parallel/process_groups.h"

using namespace mom;
using namespace mom::parallel;

namespace {

template <class F>
bool throws_user_error_naming(F f, const std::vector<std::string>& words) {
  try {
    f();
  } catch (const UserError& e) {
    const std::string msg = e.what();
    for (const auto& w : words)
      if (msg.find(w) == std::string::npos) return false;
    return true;
  }
  return false;
}

void test_layout_w4() {
  using V = std::vector<int>;
  // E = 1: each rank is its own EP group; pools are reduced over the world.
  GroupLayout a(4, 1, 2);
  MPI_CHECK(a.dp_size() == 4 && a.ep_group() == 2 && a.ep_rank() == 0);
  MPI_CHECK(a.ep_members() == V({2}) && a.dp_members() == V({0, 1, 2, 3}));
  // E = 2: EP groups {0,1} {2,3}; position groups {0,2} {1,3}.
  GroupLayout b(4, 2, 3);
  MPI_CHECK(b.dp_size() == 2 && b.ep_group() == 1 && b.ep_rank() == 1);
  MPI_CHECK(b.ep_members() == V({2, 3}) && b.dp_members() == V({1, 3}));
  GroupLayout b0(4, 2, 0);
  MPI_CHECK(b0.ep_members() == V({0, 1}) && b0.dp_members() == V({0, 2}));
  // E = 4: one EP group; each pool shard lives on one rank only.
  GroupLayout c(4, 4, 1);
  MPI_CHECK(c.dp_size() == 1 && c.ep_rank() == 1 && c.ep_members() == V({0, 1, 2, 3}) && c.dp_members() == V({1}));
  MPI_CHECK(throws_user_error_naming([] { GroupLayout(4, 3, 0); }, {"ep_size 3", "world size 4"}));
  MPI_CHECK(throws_user_error_naming([] { GroupLayout(4, 0, 0); }, {"ep_size 0"}));
}

void test_sharding() {
  ModuleSharding s(8, 4);
  MPI_CHECK(s.per_rank() == 2);
  for (int j = 0; j < 8; ++j) {
    MPI_CHECK(s.owner(j) == j / 2 && s.local_index(j) == j % 2);
    MPI_CHECK(s.global_id(s.owner(j), s.local_index(j)) == j);
    MPI_CHECK(s.first(s.owner(j)) <= j && j < s.end(s.owner(j)));
  }
  MPI_CHECK(s.first(3) == 6 && s.end(3) == 8);
  ModuleSharding one(5, 1);
  MPI_CHECK(one.per_rank() == 5 && one.owner(4) == 0 && one.end(0) == 5);
  MPI_CHECK(throws_user_error_naming([] { ModuleSharding(6, 4); }, {"6 modules", "ep_size 4"}));
  MPI_CHECK(throws_user_error_naming([] { ModuleSharding(2, 4); }, {"ep_size 4"}));
}

void test_groups_on_world(Communicator& world) {
  const int W = world.size(), r = world.rank();
  for (int E = 1; E <= W; ++E) {
    if (W % E) continue;
    ProcessGroups g = make_process_groups(world, E);
    MPI_CHECK(g.ep->size() == E && g.ep->rank() == r % E);
    MPI_CHECK(g.ep_dp->size() == W / E && g.ep_dp->rank() == r / E);
    // The members seen through the communicators are the ones the layout names.
    std::vector<int32_t> ep_members(E), dp_members(W / E);
    const int32_t me = r;
    g.ep->allgather(&me, ep_members.data(), 1);
    g.ep_dp->allgather(&me, dp_members.data(), 1);
    MPI_CHECK(std::vector<int>(ep_members.begin(), ep_members.end()) == g.layout.ep_members());
    MPI_CHECK(std::vector<int>(dp_members.begin(), dp_members.end()) == g.layout.dp_members());
  }
  MPI_CHECK(throws_user_error_naming([&] { make_process_groups(world, W + 1); }, {"ep_size", "world size"}));
}

void set(const char* k, const char* v) { setenv(k, v, 1); }

void test_launch_env(Communicator& world) {
  LaunchEnv e = detect_launch_env();
  MPI_CHECK(e.launcher == "openmpi" && e.rank == world.rank() && e.world_size == world.size());
  MPI_CHECK(e.local_size == world.size() && e.local_rank == world.rank());  // one node

  for (const char* k : {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                        "OMPI_COMM_WORLD_LOCAL_SIZE"})
    unsetenv(k);
  for (const char* k : {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_TASKS_PER_NODE",
                        "SLURM_NTASKS_PER_NODE", "SLURM_NODEID"})
    unsetenv(k);
  e = detect_launch_env();
  MPI_CHECK(e.launcher == "none" && e.rank == 0 && e.world_size == 1 && e.local_rank == 0 && e.local_size == 1);

  // 11 tasks on nodes holding 4, 4, 3; this is the second task of the third node.
  set("SLURM_PROCID", "9"), set("SLURM_NTASKS", "11"), set("SLURM_LOCALID", "1");
  set("SLURM_TASKS_PER_NODE", "4(x2),3"), set("SLURM_NODEID", "2");
  e = detect_launch_env();
  MPI_CHECK(e.launcher == "slurm" && e.rank == 9 && e.world_size == 11 && e.local_rank == 1 && e.local_size == 3);
  set("SLURM_NODEID", "0");
  MPI_CHECK(detect_launch_env().local_size == 4);
  unsetenv("SLURM_TASKS_PER_NODE"), set("SLURM_NTASKS_PER_NODE", "4");
  MPI_CHECK(detect_launch_env().local_size == 4);
  unsetenv("SLURM_NTASKS_PER_NODE");
  MPI_CHECK(throws_user_error_naming([] { detect_launch_env(); }, {"SLURM_TASKS_PER_NODE"}));
  set("SLURM_TASKS_PER_NODE", "4(x2),3");
  set("SLURM_PROCID", "x9");
  MPI_CHECK(throws_user_error_naming([] { detect_launch_env(); }, {"SLURM_PROCID", "x9"}));
  set("SLURM_PROCID", "11");
  MPI_CHECK(throws_user_error_naming([] { detect_launch_env(); }, {"rank 11", "world size 11"}));
  set("SLURM_PROCID", "3"), set("SLURM_NODEID", "5");
  MPI_CHECK(throws_user_error_naming([] { detect_launch_env(); }, {"SLURM_NODEID 5"}));

  // OpenMPI's variables win over Slurm's (mpirun inside an allocation).
  set("OMPI_COMM_WORLD_RANK", "1"), set("OMPI_COMM_WORLD_SIZE", "2");
  set("OMPI_COMM_WORLD_LOCAL_RANK", "1"), set("OMPI_COMM_WORLD_LOCAL_SIZE", "2");
  e = detect_launch_env();
  MPI_CHECK(e.launcher == "openmpi" && e.rank == 1 && e.world_size == 2 && e.local_size == 2);
  set("OMPI_COMM_WORLD_LOCAL_RANK", "2");
  MPI_CHECK(throws_user_error_naming([] { detect_launch_env(); }, {"OMPI_COMM_WORLD", "local rank 2"}));
}

}  // namespace

int main(int argc, char** argv) {
  return mpitest::run(argc, argv, "mpi_test_groups", [](Communicator& world) {
    test_layout_w4();
    test_sharding();
    test_groups_on_world(world);
    test_launch_env(world);
  });
}
