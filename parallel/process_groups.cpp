// GroupLayout, ModuleSharding and the communicator splits (see the header for the layout).
#include "parallel/process_groups.h"

#include <string>

#include "core/error.h"

namespace mom::parallel {

GroupLayout::GroupLayout(int world_size_, int ep_size_, int rank_)
    : world_size(world_size_), ep_size(ep_size_), rank(rank_) {
  require(ep_size >= 1 && world_size >= 1 && world_size % ep_size == 0,
          "ep_size " + std::to_string(ep_size) + " must divide the world size " + std::to_string(world_size) +
              " (the number of ranks): choose an ep_size that divides it, or launch a multiple of ep_size ranks");
  if (rank < 0 || rank >= world_size) throw std::logic_error("GroupLayout: rank out of range");
}

std::vector<int> GroupLayout::ep_members() const {
  std::vector<int> out;
  for (int p = 0; p < ep_size; ++p) out.push_back(ep_group() * ep_size + p);
  return out;
}

std::vector<int> GroupLayout::dp_members() const {
  std::vector<int> out;
  for (int g = 0; g < dp_size(); ++g) out.push_back(g * ep_size + ep_rank());
  return out;
}

ProcessGroups make_process_groups(Communicator& world, int ep_size) {
  ProcessGroups g{GroupLayout(world.size(), ep_size, world.rank()), &world, nullptr, nullptr};
  // Keys are the world rank, so ranks inside each new group keep world order: the EP rank is
  // the position in the EP group, and the ep_dp rank is the EP group's index.
  g.ep = world.split(g.layout.ep_group(), world.rank());
  g.ep_dp = world.split(g.layout.ep_rank(), world.rank());
  return g;
}

ModuleSharding::ModuleSharding(int modules_, int ep_size_) : modules(modules_), ep_size(ep_size_) {
  require(ep_size >= 1 && modules >= ep_size && modules % ep_size == 0,
          "a pool of " + std::to_string(modules) + " modules cannot be split evenly over ep_size " +
              std::to_string(ep_size) + " ranks: the module count must be a positive multiple of ep_size");
}

}  // namespace mom::parallel
