#include "core/layers/block.h"

#include <stdexcept>

namespace mom {

void Block::decode(const Tensor&, int, const DecodeScratch&) {
  throw std::logic_error("block " + name() + " has no KV-cached decoding");
}

}  // namespace mom
