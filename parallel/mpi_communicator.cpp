// MpiCommunicator: non-blocking MPI collectives with a deadline (see the header for why).
#include "parallel/mpi_communicator.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace mom {

namespace {

// MPI takes int counts and displacements.
int to_int(int64_t n, const char* op) {
  if (n < 0 || n > INT_MAX)
    throw std::length_error(std::string("MPI ") + op + ": count " + std::to_string(n) +
                            " does not fit in an int; split the exchange");
  return static_cast<int>(n);
}

}  // namespace

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return;
  int provided = 0;
  if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
    throw std::runtime_error("MPI_Init_thread failed");
  owns_ = true;
  // World errors are reported to the caller as exceptions, not by aborting inside MPI.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}

MpiRuntime::~MpiRuntime() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owns_ && !finalized) MPI_Finalize();
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
  check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "Comm_set_errhandler");
  check(MPI_Comm_rank(comm_, &rank_), "Comm_rank");
  check(MPI_Comm_size(comm_, &size_), "Comm_size");
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::world() {
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, false);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  // A broken communicator still has a pending collective; freeing it would only defer, and the
  // job is about to be aborted anyway.
  if (owned_ && !broken_ && !finalized) MPI_Comm_free(&comm_);
}

void MpiCommunicator::check(int rc, const char* op) const {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  std::ostringstream msg;
  msg << "MPI " << op << " failed on rank " << rank_ << " of " << size_ << " (world rank " << mpi_world_rank()
      << "): " << std::string(text, static_cast<size_t>(len));
  throw std::runtime_error(msg.str());
}

void MpiCommunicator::check_usable(const char* op) const {
  if (broken_)
    throw std::logic_error(std::string("MPI ") + op +
                           ": this communicator had a collective time out; abort the job (abort_job)");
}

void MpiCommunicator::wait(MPI_Request& req, const char* op) {
  const bool done = poll_until(timeout_s_, [&] {
    int finished = 0;
    check(MPI_Test(&req, &finished, MPI_STATUS_IGNORE), op);
    return finished != 0;
  });
  if (done) return;
  broken_ = true;
  std::ostringstream msg;
  msg << "MPI " << op << " timed out on rank " << rank_ << " of " << size_ << " (world rank " << mpi_world_rank()
      << ") after " << timeout_s_
      << " s: a peer rank did not join (crashed, hung, or took another code path). The job must be aborted; "
         "raise MOM_COMM_TIMEOUT_S if the peers are only slow.";
  throw CommTimeout(msg.str());
}

void MpiCommunicator::allreduce(void* data, size_t count, MPI_Datatype type, const char* op) {
  check_usable(op);
  MPI_Request req;
  check(MPI_Iallreduce(MPI_IN_PLACE, data, to_int(static_cast<int64_t>(count), op), type, MPI_SUM, comm_, &req), op);
  wait(req, op);
}

void MpiCommunicator::allreduce_sum(float* data, size_t count) {
  allreduce(data, count, MPI_FLOAT, "allreduce_sum(float)");
}
void MpiCommunicator::allreduce_sum(double* data, size_t count) {
  allreduce(data, count, MPI_DOUBLE, "allreduce_sum(double)");
}
void MpiCommunicator::allreduce_sum(int64_t* data, size_t count) {
  allreduce(data, count, MPI_INT64_T, "allreduce_sum(int64)");
}

void MpiCommunicator::reduce_scatter_sum(const float* send, float* recv, size_t block) {
  const char* op = "reduce_scatter_sum";
  check_usable(op);
  MPI_Request req;
  check(MPI_Ireduce_scatter_block(send, recv, to_int(static_cast<int64_t>(block), op), MPI_FLOAT, MPI_SUM, comm_, &req),
        op);
  wait(req, op);
}

void MpiCommunicator::allgather_bytes(const void* send, void* recv, size_t bytes) {
  const char* op = "allgather";
  check_usable(op);
  const int n = to_int(static_cast<int64_t>(bytes), op);
  to_int(static_cast<int64_t>(bytes) * size_, op);  // the receive buffer's extent must fit too
  MPI_Request req;
  check(MPI_Iallgather(send, n, MPI_BYTE, recv, n, MPI_BYTE, comm_, &req), op);
  wait(req, op);
}

void MpiCommunicator::alltoallv_bytes(const void* send, const int64_t* send_counts, const int64_t* send_displs,
                                      void* recv, const int64_t* recv_counts, const int64_t* recv_displs) {
  const char* op = "alltoallv";
  check_usable(op);
  std::vector<int> sc(size_), sd(size_), rc(size_), rd(size_);
  for (int p = 0; p < size_; ++p) {
    sc[p] = to_int(send_counts[p], op), sd[p] = to_int(send_displs[p], op);
    rc[p] = to_int(recv_counts[p], op), rd[p] = to_int(recv_displs[p], op);
  }
  MPI_Request req;
  check(MPI_Ialltoallv(send, sc.data(), sd.data(), MPI_BYTE, recv, rc.data(), rd.data(), MPI_BYTE, comm_, &req), op);
  wait(req, op);
}

void MpiCommunicator::broadcast_bytes(void* data, size_t bytes, int root) {
  const char* op = "broadcast";
  check_usable(op);
  if (root < 0 || root >= size_) throw std::logic_error("MPI broadcast: root out of range");
  MPI_Request req;
  check(MPI_Ibcast(data, to_int(static_cast<int64_t>(bytes), op), MPI_BYTE, root, comm_, &req), op);
  wait(req, op);
}

void MpiCommunicator::barrier() {
  const char* op = "barrier";
  check_usable(op);
  MPI_Request req;
  check(MPI_Ibarrier(comm_, &req), op);
  wait(req, op);
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  if (color < 0) throw std::logic_error("MPI split: color must be >= 0");
  barrier();
  MPI_Comm child;
  check(MPI_Comm_split(comm_, color, key, &child), "Comm_split");
  auto out = std::make_unique<MpiCommunicator>(child, true);
  out->set_timeout_s(timeout_s_);
  return out;
}

int mpi_world_rank() {
  int initialized = 0, finalized = 0, r = -1;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

void abort_job(int code, const std::string& message) {
  const int r = mpi_world_rank();
  std::fprintf(stderr, "mom: rank %d: %s\n", r, message.c_str());
  std::fflush(stderr);
  if (r >= 0) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

}  // namespace mom
