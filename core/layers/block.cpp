#include "core/layers/block.h"

namespace mom {

void KvCache::allocate(Backend& be, int sequences, int n_ctx, int C, DType dtype) {
  const Shape s{sequences, n_ctx, C};
  ArenaPlan plan;
  plan.add(s, dtype);
  plan.add(s, dtype);
  arena.reset();
  arena = std::make_unique<Arena>(be, plan.bytes());
  k = arena->alloc(s, dtype);
  v = arena->alloc(s, dtype);
}

}  // namespace mom
