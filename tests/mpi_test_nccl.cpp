// The GPU communicators (parallel/device_communicator.h) on device buffers equal MPI on host
// buffers, and a peer that stops answering gives CommTimeout, never a hang.
//
// Needs a GPU: without one (or in a build without CUDA) every rank exits 77, a skip, saying how
// to run it (on a GPU machine: jobs/device/check.sh, or mpirun -np 2 build/tests/mpi_test_nccl).
// Which communicator is tested follows from the machine, as in a job: with at least as many GPUs
// as ranks on the node, NCCL (and then the host-staging fallback too, made directly); with fewer
// (one GPU shared by 2 or 4 ranks, which NCCL refuses), the staged fallback.
//
// For each: allreduce (float, double, int64), reduce_scatter, allgather, alltoallv (uneven counts,
// zeros included), broadcast, host buffers through the same communicator, a split, and the token
// exchange (parallel/token_exchange.h) of a routing, all compared bit for bit with MpiCommunicator
// on the same data in host memory (values are small integers, so sums are exact in any order).
// Last, with 2 or more ranks, on a 2 s sub-communicator, rank 0 sleeps while the others enter an
// allreduce: they must throw CommTimeout naming the op, their rank and the limit within a few
// seconds, and refuse later use. The job then ends through abort_job (the timed-out collective
// may still be pending).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "mpi_test_support.h"
#include "parallel/device_communicator.h"
#include "parallel/process_groups.h"
#include "parallel/token_exchange.h"
#include "router/dispatch_plan.h"
#ifdef MOM_HAVE_CUDA
#include <cuda_runtime.h>

#include "parallel/cuda/select_communicator.h"
#include "parallel/cuda/staged_communicator.h"
#include "parallel/launch_env.h"
#endif
#ifdef MOM_HAVE_NCCL
#include "parallel/nccl/nccl_communicator.h"
#endif

using namespace mom;

namespace {

#ifdef MOM_HAVE_CUDA

// Device memory holding a copy of a host vector.
struct DeviceBuffer {
  void* p = nullptr;
  size_t bytes = 0;
  // Both synchronise: cudaMemset is asynchronous, and a cudaMemcpy from pageable memory may return
  // before its DMA lands, while the communicators work on non-blocking streams that the default
  // stream does not order (the trainer's contract: device buffers are complete before the call).
  explicit DeviceBuffer(size_t n) : bytes(n) {
    if (cudaMalloc(&p, n ? n : 1) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
    cudaMemset(p, 0, n ? n : 1);
    cudaDeviceSynchronize();
  }
  template <class T>
  explicit DeviceBuffer(const std::vector<T>& v) : DeviceBuffer(v.size() * sizeof(T)) {
    if (bytes) cudaMemcpy(p, v.data(), bytes, cudaMemcpyHostToDevice);
    cudaDeviceSynchronize();
  }
  ~DeviceBuffer() { cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(p);
  }
  template <class T>
  std::vector<T> get() const {
    std::vector<T> v(bytes / sizeof(T));
    if (bytes) cudaMemcpy(v.data(), p, bytes, cudaMemcpyDeviceToHost);
    return v;
  }
};

template <class T>
bool same(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

template <class T>
std::vector<T> values(size_t n, int rank, int salt) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<T>(static_cast<int>((i * 7 + rank * 13 + salt) % 41) - 20);
  return v;
}

template <class T>
void check_allreduce(Communicator& dev, Communicator& ref, const std::string& label) {
  const size_t n = 1000;
  std::vector<T> want = values<T>(n, ref.rank(), 3);
  DeviceBuffer d(want);
  ref.allreduce_sum(want.data(), n);
  dev.allreduce_sum(d.as<T>(), n);
  MPI_CHECK_MSG(same(d.get<T>(), want), label + ": allreduce " + std::to_string(sizeof(T)));
}

// Bytes rank s sends rank d in the alltoallv: uneven, some zero.
int64_t pair_bytes(int s, int d) { return ((s * 5 + d * 3) % 4 == 0) ? 0 : 1 + (s * 31 + d * 17) % 97; }

void check_collectives(Communicator& dev, Communicator& ref, const std::string& label) {
  const int n = ref.size(), me = ref.rank();
  check_allreduce<float>(dev, ref, label);
  check_allreduce<double>(dev, ref, label);
  check_allreduce<int64_t>(dev, ref, label);
  {  // reduce_scatter
    const size_t block = 257;
    const std::vector<float> send = values<float>(block * n, me, 5);
    std::vector<float> want(block);
    ref.reduce_scatter_sum(send.data(), want.data(), block);
    DeviceBuffer ds(send), dr(block * sizeof(float));
    dev.reduce_scatter_sum(ds.as<float>(), dr.as<float>(), block);
    MPI_CHECK_MSG(same(dr.get<float>(), want), label + ": reduce_scatter");
  }
  {  // allgather
    const std::vector<char> send = values<char>(333, me, 7);
    std::vector<char> want(send.size() * n);
    ref.allgather_bytes(send.data(), want.data(), send.size());
    DeviceBuffer ds(send), dr(want.size());
    dev.allgather_bytes(ds.p, dr.p, send.size());
    MPI_CHECK_MSG(same(dr.get<char>(), want), label + ": allgather");
  }
  {  // alltoallv
    std::vector<int64_t> sc(n), sd(n), rc(n), rd(n);
    int64_t st = 0, rt = 0;
    for (int p = 0; p < n; ++p) {
      sc[p] = pair_bytes(me, p), sd[p] = st, st += sc[p] + 3;  // gaps between slices
      rc[p] = pair_bytes(p, me), rd[p] = rt, rt += rc[p];
    }
    const std::vector<char> send = values<char>(static_cast<size_t>(st), me, 11);
    std::vector<char> want(static_cast<size_t>(rt), 0);
    ref.alltoallv_bytes(send.data(), sc.data(), sd.data(), want.data(), rc.data(), rd.data());
    DeviceBuffer ds(send), dr(want.size());
    dev.alltoallv_bytes(ds.p, sc.data(), sd.data(), dr.p, rc.data(), rd.data());
    MPI_CHECK_MSG(same(dr.get<char>(), want), label + ": alltoallv");
  }
  {  // broadcast from the last rank
    std::vector<char> want = values<char>(4099, me, 13);
    DeviceBuffer d(want);
    ref.broadcast_bytes(want.data(), want.size(), n - 1);
    dev.broadcast_bytes(d.p, want.size(), n - 1);
    MPI_CHECK_MSG(same(d.get<char>(), want), label + ": broadcast");
  }
  {  // host buffers through the device communicator go to MPI
    double x = me + 1.0;
    dev.allreduce_sum(&x, 1);
    MPI_CHECK_MSG(x == n * (n + 1) / 2.0, label + ": host allreduce");
    std::string text = me == 0 ? "from rank 0" : "...........";
    dev.broadcast_bytes(text.data(), text.size(), 0);
    MPI_CHECK_MSG(text == "from rank 0", label + ": host broadcast");
    dev.barrier();
  }
}

// Token exchange: the EP group is the whole communicator; each rank routes its own tokens.
constexpr int D = 5, K = 2;

struct Routed {
  router::Selection sel;
  router::DispatchPlan plan;
  std::vector<float> rows;  // [M, D] plan-order rows
};

Routed make_routed(int rank, int modules) {
  std::mt19937 rng(77u + static_cast<unsigned>(rank));
  Routed in;
  const int N = rank == 1 ? 0 : 3 + static_cast<int>(rng() % 11);  // rank 1 routes nothing
  in.sel.N = N, in.sel.K = K, in.sel.classes = modules + 1;
  in.sel.probs.assign(static_cast<size_t>(N) * (modules + 1), 0.0);
  for (int a = 0; a < N * K; ++a) {
    int c = static_cast<int>(rng() % (modules + 1));
    if (c == 1) c = modules;  // module 1 is never chosen
    in.sel.choice.push_back(c);
    in.sel.weight.push_back(0.5);
  }
  in.plan = router::make_plan(in.sel, modules, router::CapacityConfig{});
  for (int64_t i = 0; i < in.plan.M() * D; ++i) in.rows.push_back(static_cast<float>(rank * 1000 + i));
  return in;
}

void check_token_exchange(Communicator& dev, Communicator& ref, const std::string& label) {
  const int E = ref.size();
  const parallel::ModuleSharding sharding(3 * E, E);
  const Routed in = make_routed(ref.rank(), sharding.modules);
  const size_t row_bytes = D * sizeof(float);
  parallel::TokenExchange host_ex(ref, sharding), dev_ex(dev, sharding);
  const parallel::ExchangeLayout L = host_ex.exchange_counts(in.plan);
  const parallel::ExchangeLayout Ld = dev_ex.exchange_counts(in.plan);
  MPI_CHECK_MSG(L.R == Ld.R && L.recv_counts == Ld.recv_counts && L.offsets == Ld.offsets, label + ": layout");
  std::vector<float> local(static_cast<size_t>(L.R) * D);
  host_ex.to_owners(L, in.rows.data(), row_bytes, local.data());
  DeviceBuffer d_plan(in.rows), d_local(local.size() * sizeof(float));
  dev_ex.to_owners(Ld, d_plan.p, row_bytes, d_local.p);
  MPI_CHECK_MSG(same(d_local.get<float>(), local), label + ": to_owners");
  // The owners' outputs: each row scaled, on the host, and back to the sources.
  for (float& v : local) v = 2 * v + 1;
  std::vector<float> back(in.rows.size(), 0.0f);
  host_ex.to_sources(L, local.data(), row_bytes, back.data());
  DeviceBuffer d_out(local), d_back(back.size() * sizeof(float));
  dev_ex.to_sources(Ld, d_out.p, row_bytes, d_back.p);
  MPI_CHECK_MSG(same(d_back.get<float>(), back), label + ": to_sources");
  std::vector<float> expect(in.rows);
  for (float& v : expect) v = 2 * v + 1;
  MPI_CHECK_MSG(same(back, expect), label + ": round trip");
}

void check_all(Communicator& dev, MpiCommunicator& world, const std::string& label) {
  auto ref = world.split(0, world.rank());
  check_collectives(dev, *ref, label);
  check_token_exchange(dev, *ref, label);
  // A split: two groups, ranked in reverse.
  const int color = world.rank() % 2, key = -world.rank();
  auto dev_child = dev.split(color, key);
  auto ref_child = ref->split(color, key);
  MPI_CHECK_MSG(dev_child->rank() == ref_child->rank() && dev_child->size() == ref_child->size(), label + ": split");
  MPI_CHECK_MSG(dev_child->timeout_s() == dev.timeout_s(), label + ": split keeps the timeout");
  check_collectives(*dev_child, *ref_child, label + " (split)");
}

// Rank 0 sleeps past the 2 s limit; the others must time out in an allreduce on device memory.
void check_timeout(Communicator& dev, const std::string& label) {
  if (dev.size() == 1) {  // no peer to wait for
    std::printf("%s: the timeout check needs 2 or more ranks; skipped on 1\n", label.c_str());
    return;
  }
  auto sub = dev.split(0, dev.rank());
  sub->set_timeout_s(2.0);
  const int r = sub->rank();
  if (r == 0) {
    std::this_thread::sleep_for(std::chrono::seconds(5));
    return;
  }
  DeviceBuffer d(std::vector<float>(64, 1.0f));
  const auto t0 = std::chrono::steady_clock::now();
  bool timed_out = false;
  try {
    sub->allreduce_sum(d.as<float>(), 64);
  } catch (const CommTimeout& e) {
    timed_out = true;
    const std::string msg = e.what();
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s: rank %d observed after %.2f s: %s\n", label.c_str(), r, waited, msg.c_str());
    MPI_CHECK_MSG(waited >= 2.0 && waited < 10.0, std::to_string(waited));
    MPI_CHECK_MSG(msg.find("allreduce_sum(float)") != std::string::npos, msg);
    MPI_CHECK_MSG(msg.find("rank " + std::to_string(r)) != std::string::npos, msg);
    MPI_CHECK_MSG(msg.find("after 2 s") != std::string::npos, msg);
    MPI_CHECK_MSG(msg.find("MOM_COMM_TIMEOUT_S") != std::string::npos, msg);
  }
  MPI_CHECK_MSG(timed_out, label + ": no CommTimeout");
  bool refused = false;
  try {
    sub->allreduce_sum(d.as<float>(), 64);
  } catch (const std::logic_error&) {
    refused = true;
  }
  MPI_CHECK_MSG(refused, label + ": a timed-out communicator must refuse further use");
}

#endif  // MOM_HAVE_CUDA

}  // namespace

int main(int argc, char** argv) {
  MpiRuntime mpi(&argc, &argv);
  auto world = MpiCommunicator::world();
  world->set_timeout_s(60);
  const int r = world->rank();
  auto skip = [&](const std::string& why) {
    if (r == 0)
      std::printf(
          "mpi_test_nccl: SKIPPED: %s. It needs a GPU: run it on a GPU machine with jobs/device/check.sh, "
          "or mpirun -np 2 build/tests/mpi_test_nccl in a CUDA build there.\n",
          why.c_str());
    return 77;
  };
#ifndef MOM_HAVE_CUDA
  return skip("this build has no CUDA backend (nvcc was not found, or -DMOM_CUDA=OFF)");
#else
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus == 0) {
    cudaGetLastError();
    return skip("no CUDA device is visible here");
  }
  int64_t failures_total = 0;
  try {
    const int local = parallel::detect_launch_env().local_size;
    auto dev = parallel::communicator_for_device(MpiCommunicator::world(), Device::CUDA);
    dev->set_timeout_s(60);
#ifdef MOM_HAVE_NCCL
    const bool is_nccl = dynamic_cast<parallel::NcclCommunicator*>(dev.get()) != nullptr;
#else
    const bool is_nccl = false;
#endif
    // MOM_COMM=nccl forces NCCL, also for one rank (how one GPU tests the NCCL communicator).
    const char* env_comm = std::getenv("MOM_COMM");
    const std::string forced = env_comm && std::string(env_comm) != "auto" ? env_comm : "";
    const bool want_nccl =
        forced == "nccl" || (gpus >= local && world->size() > 1 && forced.empty() && !std::getenv("MOM_CUDA_DEVICE"));
#ifdef MOM_HAVE_NCCL
    MPI_CHECK_MSG(is_nccl == want_nccl, std::string("expected ") + (want_nccl ? "NCCL" : "host staging") + " with " +
                                            std::to_string(gpus) + " GPUs for " + std::to_string(local) +
                                            " local ranks");
#else
    (void)want_nccl;
    MPI_CHECK(!is_nccl);
#endif
    if (r == 0)
      std::printf("mpi_test_nccl: %d ranks, %d GPUs: %s\n", world->size(), gpus,
                  is_nccl ? "NCCL" : "MPI with host staging");
    const std::string label = is_nccl ? "nccl" : "staged";
    check_all(*dev, *world, label);
    if (is_nccl) {  // the fallback too, made directly
      parallel::StagedCommunicator staged(MpiCommunicator::world());
      staged.set_timeout_s(60);
      check_all(staged, *world, "staged");
    }
    check_timeout(*dev, label);
  } catch (const std::exception& e) {
    abort_job(3, std::string("mpi_test_nccl: unexpected exception: ") + e.what());
  }
  failures_total = mpitest::failures();
  world->allreduce_sum(&failures_total, 1);
  if (r == 0) {
    std::printf("mpi_test_nccl on %d ranks: %s (%lld failed checks)\n", world->size(), failures_total ? "FAIL" : "PASS",
                static_cast<long long>(failures_total));
    std::fflush(stdout);
    // A timed-out collective may still be pending on the peers: end the job as a failed job would.
    abort_job(failures_total ? 1 : 0, "mpi_test_nccl: ending the job after the expected timeout");
  }
  std::this_thread::sleep_for(std::chrono::seconds(600));
  return 1;
#endif
}
