// Communicator: the collective operations the trainer needs, behind one interface.
//
// The trainer calls these at the points where ranks must agree (gradient all-reduce, metric
// reduction); a single process uses SoloCommunicator, where each collective is the identity.
// The MPI (CPU) and NCCL (GPU) implementations arrive with the parallelism issue and plug in
// here without changes above this interface.
#pragma once
#include <cstddef>
#include <memory>

namespace mom {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In-place sum over all ranks of `count` doubles (host memory).
  virtual void allreduce_sum(double* data, size_t count) = 0;
  // In-place sum over all ranks of `count` floats (host memory).
  virtual void allreduce_sum(float* data, size_t count) = 0;
  virtual void barrier() = 0;
};

// One process: every collective is the identity.
class SoloCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void allreduce_sum(double*, size_t) override {}
  void allreduce_sum(float*, size_t) override {}
  void barrier() override {}
};

}  // namespace mom
