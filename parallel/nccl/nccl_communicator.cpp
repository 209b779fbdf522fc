// NcclCommunicator: non-blocking NCCL polled against the deadline (see the header for why).
#include "parallel/nccl/nccl_communicator.h"

#include <mpi.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <sstream>
#include <stdexcept>
#include <string>

#include "parallel/cuda/cuda_memory.h"
#include "parallel/mpi_communicator.h"

namespace mom::parallel {

namespace {

ncclConfig_t nonblocking_config() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  return config;
}

}  // namespace

NcclCommunicator::NcclCommunicator(std::unique_ptr<Communicator> host, int device)
    : host_(std::move(host)), device_(device) {
  if (!host_) throw std::logic_error("NcclCommunicator: no host communicator");
  timeout_s_ = host_->timeout_s();
  rank_ = host_->rank(), size_ = host_->size();
  check_cuda(cudaSetDevice(device_), "cudaSetDevice (NCCL communicator)");
  // Rank 0's id, or its failure to make one, so that no rank waits in the init for nothing.
  struct {
    ncclUniqueId id;
    int32_t ok;
    char reason[236];
  } msg{};
  if (rank_ == 0) {
    const ncclResult_t rc = ncclGetUniqueId(&msg.id);
    msg.ok = rc == ncclSuccess;
    if (!msg.ok) std::strncpy(msg.reason, ncclGetErrorString(rc), sizeof msg.reason - 1);
  }
  host_->broadcast_bytes(&msg, sizeof msg, 0);
  if (!msg.ok)
    throw std::runtime_error(std::string("NCCL init: rank 0 could not make the unique id (ncclGetUniqueId: ") +
                             msg.reason + ")");
  ncclConfig_t config = nonblocking_config();
  check(ncclCommInitRankConfig(&comm_, size_, msg.id, rank_, &config), "init (ncclCommInitRankConfig)", 0);
  wait("init (ncclCommInitRankConfig)", 0, false);
  try {
    make_stream();
  } catch (...) {
    abort_now();
    throw;
  }
}

NcclCommunicator::NcclCommunicator(Adopt, std::unique_ptr<Communicator> host, int device, ncclComm_t comm)
    : host_(std::move(host)), device_(device), comm_(comm) {
  timeout_s_ = host_->timeout_s();
  rank_ = host_->rank(), size_ = host_->size();
  try {
    make_stream();
  } catch (...) {
    abort_now();
    throw;
  }
}

NcclCommunicator::~NcclCommunicator() {
  cudaSetDevice(device_);
  // While an exception unwinds (a timed-out host collective, an error on this rank only) the peers
  // may never reach their own destructors, so Finalize would wait out the whole timeout before the
  // caller's abort_job: abort instead.
  if (comm_ && !broken_ && std::uncaught_exceptions() == 0) {
    // Finalize waits for the peers (the communicator must be globally quiescent); bounded, then
    // the abort frees what is left.
    ncclResult_t state = ncclCommFinalize(comm_);
    if (state == ncclInProgress)
      poll_until(timeout_s_,
                 [&] { return ncclCommGetAsyncError(comm_, &state) != ncclSuccess || state != ncclInProgress; });
    if (state == ncclSuccess)
      ncclCommDestroy(comm_);
    else
      ncclCommAbort(comm_);
    comm_ = nullptr;
  } else if (comm_) {
    ncclCommAbort(comm_);
    comm_ = nullptr;
  }
  if (stream_) cudaStreamDestroy(stream_);
}

void NcclCommunicator::make_stream() {
  check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags (NCCL)");
}

Communicator& NcclCommunicator::host_comm() {
  if (host_->timeout_s() != timeout_s_) host_->set_timeout_s(timeout_s_);
  return *host_;
}

DeviceMemory* NcclCommunicator::device_memory() { return &CudaDeviceMemory::instance(); }

bool NcclCommunicator::on_device(const void* a, const void* b, const char* op) const {
  const bool da = is_device_memory(a), db = is_device_memory(b);
  if ((da && b && !db) || (db && a && !da))
    throw std::logic_error(std::string("NCCL ") + op +
                           ": one buffer is device memory and the other host memory; pass both of one kind");
  return da || db;
}

void NcclCommunicator::check_usable(const char* op) const {
  if (broken_ || !comm_)
    throw std::logic_error(std::string("NCCL ") + op +
                           ": this communicator was aborted after a collective failed or timed out; abort the job "
                           "(abort_job)");
}

void NcclCommunicator::abort_now() {
  broken_ = true;
  if (comm_) ncclCommAbort(comm_);
  comm_ = nullptr;
}

void NcclCommunicator::fail(const char* op, size_t bytes, const std::string& reason, bool timeout, ncclComm_t other) {
  std::ostringstream msg;
  msg << "NCCL " << op << (timeout ? " timed out" : " failed") << " on rank " << rank_ << " of " << size_
      << " (world rank " << mpi_world_rank() << ", " << bytes << " bytes)";
  if (timeout)
    msg << " after " << timeout_s_
        << " s: a peer rank did not join (crashed, hung, or took another code path). The NCCL communicator was "
           "aborted; the job must be aborted; raise MOM_COMM_TIMEOUT_S if the peers are only slow.";
  else
    msg << ": " << reason << ". The NCCL communicator was aborted; the job must be aborted.";
  if (other) ncclCommAbort(other);
  abort_now();
  if (timeout) throw CommTimeout(msg.str());
  throw std::runtime_error(msg.str());
}

void NcclCommunicator::check(ncclResult_t rc, const char* op, size_t bytes) {
  if (rc == ncclSuccess || rc == ncclInProgress) return;
  const char* last = comm_ ? ncclGetLastError(comm_) : ncclGetLastError(nullptr);
  fail(op, bytes, std::string(ncclGetErrorString(rc)) + (last && *last ? std::string(" (") + last + ")" : ""), false);
}

void NcclCommunicator::wait(const char* op, size_t bytes, bool stream_work, ncclComm_t other) {
  // The state of one communicator: true while its last call is still in progress.
  auto pending = [&](ncclComm_t c) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t rc = ncclCommGetAsyncError(c, &state);
    if (rc != ncclSuccess)
      fail(op, bytes, std::string("ncclCommGetAsyncError: ") + ncclGetErrorString(rc), false, other);
    if (state == ncclInProgress) return true;
    if (state != ncclSuccess) {
      const char* last = ncclGetLastError(c);
      fail(op, bytes,
           std::string(ncclGetErrorString(state)) + (last && *last ? std::string(" (") + last + ")" : "") +
               " (a peer may have died)",
           false, other);
    }
    return false;
  };
  const bool done = poll_until(timeout_s_, [&] {
    bool busy = pending(comm_);
    if (other) busy = pending(other) || busy;
    if (busy) return false;
    if (!stream_work) return true;
    const cudaError_t q = cudaStreamQuery(stream_);
    if (q != cudaSuccess && q != cudaErrorNotReady)
      fail(op, bytes, std::string("CUDA: ") + cudaGetErrorString(q), false, other);
    return q == cudaSuccess;
  });
  if (!done) fail(op, bytes, "", true, other);
}

template <class Enqueue>
void NcclCommunicator::run(const char* op, size_t bytes, Enqueue enqueue) {
  check_usable(op);
  check_cuda(cudaSetDevice(device_), "cudaSetDevice (NCCL communicator)");
  check(enqueue(), op, bytes);
  wait(op, bytes, true);
}

void NcclCommunicator::allreduce_sum(float* data, size_t count) {
  const char* op = "allreduce_sum(float)";
  if (!on_device(data, nullptr, op)) return host_comm().allreduce_sum(data, count);
  run(op, count * sizeof(float),
      [&] { return ncclAllReduce(data, data, count, ncclFloat32, ncclSum, comm_, stream_); });
}

void NcclCommunicator::allreduce_sum(double* data, size_t count) {
  const char* op = "allreduce_sum(double)";
  if (!on_device(data, nullptr, op)) return host_comm().allreduce_sum(data, count);
  run(op, count * sizeof(double),
      [&] { return ncclAllReduce(data, data, count, ncclFloat64, ncclSum, comm_, stream_); });
}

void NcclCommunicator::allreduce_sum(int64_t* data, size_t count) {
  const char* op = "allreduce_sum(int64)";
  if (!on_device(data, nullptr, op)) return host_comm().allreduce_sum(data, count);
  run(op, count * sizeof(int64_t),
      [&] { return ncclAllReduce(data, data, count, ncclInt64, ncclSum, comm_, stream_); });
}

void NcclCommunicator::reduce_scatter_sum(const float* send, float* recv, size_t block) {
  const char* op = "reduce_scatter_sum";
  if (!on_device(send, recv, op)) return host_comm().reduce_scatter_sum(send, recv, block);
  run(op, static_cast<size_t>(size_) * block * sizeof(float),
      [&] { return ncclReduceScatter(send, recv, block, ncclFloat32, ncclSum, comm_, stream_); });
}

void NcclCommunicator::allgather_bytes(const void* send, void* recv, size_t bytes) {
  const char* op = "allgather";
  if (!on_device(send, recv, op)) return host_comm().allgather_bytes(send, recv, bytes);
  run(op, static_cast<size_t>(size_) * bytes,
      [&] { return ncclAllGather(send, recv, bytes, ncclUint8, comm_, stream_); });
}

void NcclCommunicator::alltoallv_bytes(const void* send, const int64_t* send_counts, const int64_t* send_displs,
                                       void* recv, const int64_t* recv_counts, const int64_t* recv_displs) {
  const char* op = "alltoallv";
  if (!on_device(send, recv, op))
    return host_comm().alltoallv_bytes(send, send_counts, send_displs, recv, recv_counts, recv_displs);
  size_t bytes = 0;
  for (int p = 0; p < size_; ++p) {
    if (send_counts[p] < 0 || recv_counts[p] < 0 || send_displs[p] < 0 || recv_displs[p] < 0)
      throw std::length_error("NCCL alltoallv: negative count or displacement");
    bytes += static_cast<size_t>(send_counts[p]);
  }
  const char* s = static_cast<const char*>(send);
  char* r = static_cast<char*>(recv);
  run(op, bytes, [&] {
    ncclResult_t rc = ncclGroupStart();
    if (rc != ncclSuccess) return rc;
    ncclResult_t first = ncclSuccess;
    auto keep = [&](ncclResult_t x) {
      if (x != ncclSuccess && x != ncclInProgress && first == ncclSuccess) first = x;
    };
    for (int p = 0; p < size_; ++p) {
      if (send_counts[p] > 0)
        keep(ncclSend(s + send_displs[p], static_cast<size_t>(send_counts[p]), ncclUint8, p, comm_, stream_));
      if (recv_counts[p] > 0)
        keep(ncclRecv(r + recv_displs[p], static_cast<size_t>(recv_counts[p]), ncclUint8, p, comm_, stream_));
    }
    rc = ncclGroupEnd();  // ncclInProgress in non-blocking mode: wait() polls
    return first != ncclSuccess ? first : rc;
  });
}

void NcclCommunicator::broadcast_bytes(void* data, size_t bytes, int root) {
  const char* op = "broadcast";
  if (root < 0 || root >= size_) throw std::logic_error("NCCL broadcast: root out of range");
  if (!on_device(data, nullptr, op)) return host_comm().broadcast_bytes(data, bytes, root);
  run(op, bytes, [&] { return ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_); });
}

void NcclCommunicator::barrier() { host_comm().barrier(); }

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key) {
  const char* op = "split (ncclCommSplit)";
  if (color < 0) throw std::logic_error("NCCL split: color must be >= 0");
  check_usable(op);
  auto host_child = host_comm().split(color, key);  // a timed barrier first: every rank is here
  check_cuda(cudaSetDevice(device_), "cudaSetDevice (NCCL communicator)");
  ncclConfig_t config = nonblocking_config();
  ncclComm_t child = nullptr;
  const ncclResult_t rc = ncclCommSplit(comm_, color, key, &child, &config);
  if (rc != ncclSuccess && rc != ncclInProgress) {
    if (child) ncclCommAbort(child);
    check(rc, op, 0);
  }
  wait(op, 0, false, child);
  int child_rank = -1;
  if (ncclCommUserRank(child, &child_rank) != ncclSuccess || child_rank != host_child->rank()) {
    ncclCommAbort(child);
    throw std::logic_error("NCCL split: the NCCL child's rank differs from the host communicator's");
  }
  std::unique_ptr<NcclCommunicator> out(new NcclCommunicator(Adopt{}, std::move(host_child), device_, child));
  out->set_timeout_s(timeout_s_);
  return out;
}

}  // namespace mom::parallel
