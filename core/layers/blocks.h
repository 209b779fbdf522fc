// The model's middle from its config: one Block per layer, in stack order, each wrapped by
// AltUp when model.altup is on.
//
// Why here and not in Gpt2: this is the one place that knows every block kind (a new kind is
// one more case), so the model itself walks blocks without knowing what they are.
#pragma once
#include <memory>
#include <vector>

#include "core/gpt2.h"

namespace mom {

ModelDims model_dims(const Gpt2Config& cfg);
// `ep`: the expert-parallel group the routed stages shard their pools over (nullptr: none).
std::vector<std::unique_ptr<Block>> build_blocks(const Gpt2Config& cfg, Communicator* ep);

}  // namespace mom
