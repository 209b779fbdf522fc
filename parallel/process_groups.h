// Process groups for expert/module parallelism, and how a module pool is spread over them.
//
// Layout: the W ranks form W/E expert-parallel (EP) groups of E consecutive ranks
// ({0..E-1}, {E..2E-1}, ...). Inside an EP group each rank holds 1/E of every module pool, and
// tokens travel to the rank owning their module (parallel/token_exchange.h). Ranks at the same
// position in their EP groups (stride E: {p, p+E, p+2E, ...}) hold the same modules, so a pool
// parameter's gradient is reduced over that "expert-data-parallel" group; dense parameters
// (attention, embeddings, routers) are replicated on every rank and reduced over the world.
//
// Why consecutive ranks per EP group: launchers place consecutive ranks on the same node, so
// the all-to-all (the heaviest traffic) stays on the fast intra-node links, and the gradient
// reduction (once per step) crosses nodes.
#pragma once
#include <memory>
#include <vector>

#include "parallel/communicator.h"

namespace mom::parallel {

// Pure arithmetic of the layout; no communication. Throws UserError naming ep_size and the
// world size unless 1 <= ep_size and world_size % ep_size == 0.
struct GroupLayout {
  int world_size = 1, ep_size = 1, rank = 0;
  GroupLayout(int world_size, int ep_size, int rank);
  int dp_size() const { return world_size / ep_size; }  // number of EP groups
  int ep_group() const { return rank / ep_size; }       // which EP group holds this rank
  int ep_rank() const { return rank % ep_size; }        // position inside it
  std::vector<int> ep_members() const;  // world ranks of this rank's EP group, ascending
  std::vector<int> dp_members() const;  // world ranks of this rank's expert-data-parallel group
};

// The communicators of one rank, split from the world communicator (collective over it).
struct ProcessGroups {
  GroupLayout layout;
  Communicator* world = nullptr;        // dense parameters: reduced here (not owned)
  std::unique_ptr<Communicator> ep;     // token all-to-all; rank order = ep_rank
  std::unique_ptr<Communicator> ep_dp;  // pool parameters of this position: reduced here
};
ProcessGroups make_process_groups(Communicator& world, int ep_size);

// A pool of `modules` modules spread over `ep_size` ranks in contiguous blocks: rank p owns
// global modules [p·M/E, (p+1)·M/E). Even blocks only (modules % ep_size == 0, else UserError):
// an uneven split would leave one rank the slowest in every step, and pool sizes are chosen
// by the user, who can pick a multiple.
struct ModuleSharding {
  int modules = 0, ep_size = 1;
  ModuleSharding(int modules, int ep_size);
  int per_rank() const { return modules / ep_size; }
  int owner(int module) const { return module / per_rank(); }              // EP rank holding it
  int local_index(int module) const { return module % per_rank(); }        // its index there
  int first(int ep_rank) const { return ep_rank * per_rank(); }            // first global id
  int end(int ep_rank) const { return (ep_rank + 1) * per_rank(); }        // one past the last
  int global_id(int ep_rank, int local) const { return first(ep_rank) + local; }
};

}  // namespace mom::parallel
