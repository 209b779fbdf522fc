// What of the GPU communicators can be checked without a GPU: communicator_for_device keeps the
// CPU world as it is and names the problem for CUDA without a device, the NCCL-or-staging rule,
// MOM_COMM's checking, and the staged decorator passing host buffers straight through. The
// collectives on device buffers are tests/mpi_test_nccl.cpp (GPU machines).
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "parallel/device_communicator.h"
#ifdef MOM_HAVE_CUDA
#include <cuda_runtime.h>

#include "parallel/cuda/select_communicator.h"
#include "parallel/cuda/staged_communicator.h"
#endif

using namespace mom;
using namespace mom::parallel;

namespace {

bool have_gpu() {
#ifdef MOM_HAVE_CUDA
  int n = 0;
  const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  cudaGetLastError();
  return ok;
#else
  return false;
#endif
}

// Sets an environment variable for one test and restores it after.
struct ScopedEnv {
  std::string name, old;
  bool had = false;
  ScopedEnv(const char* n, const char* value) : name(n) {
    if (const char* v = std::getenv(n)) had = true, old = v;
    if (value)
      setenv(n, value, 1);
    else
      unsetenv(n);
  }
  ~ScopedEnv() {
    if (had)
      setenv(name.c_str(), old.c_str(), 1);
    else
      unsetenv(name.c_str());
  }
};

}  // namespace

TEST(DeviceCommunicator, CpuKeepsTheWorldUnchanged) {
  auto solo = std::make_unique<SoloCommunicator>();
  solo->set_timeout_s(7);
  Communicator* raw = solo.get();
  auto world = communicator_for_device(std::move(solo), Device::CPU);
  EXPECT_EQ(world.get(), raw);
  EXPECT_EQ(world->timeout_s(), 7);
  EXPECT_EQ(world->device_memory(), nullptr);
}

TEST(DeviceCommunicator, MissingDeviceIsAUserError) {
  if (have_gpu()) GTEST_SKIP() << "a GPU is visible here";
  try {
    communicator_for_device(std::make_unique<SoloCommunicator>(), Device::CUDA);
    FAIL() << "no UserError";
  } catch (const UserError& e) {
    const std::string msg = e.what();
#ifdef MOM_HAVE_CUDA
    EXPECT_NE(msg.find("CUDA"), std::string::npos) << msg;  // CudaBackend's: no usable device
#else
    EXPECT_NE(msg.find("not available in this build"), std::string::npos) << msg;
    EXPECT_NE(msg.find("cpu"), std::string::npos) << msg;
#endif
  }
}

#ifdef MOM_HAVE_CUDA

TEST(DeviceCommunicator, BadMomCommIsAUserError) {
  ScopedEnv env("MOM_COMM", "gloo");
  try {
    communicator_for_device(std::make_unique<SoloCommunicator>(), Device::CUDA);
    FAIL() << "no UserError";
  } catch (const UserError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("MOM_COMM"), std::string::npos) << msg;
    EXPECT_NE(msg.find("gloo"), std::string::npos) << msg;
  }
}

TEST(DeviceCommunicator, SelectionWantsADevicePerRank) {
  const std::vector<std::string> own = {"node1 GPU-a", "node1 GPU-b", "node2 GPU-a", "node2 GPU-b"};
  const std::vector<std::string> shared = {"node1 GPU-a", "node1 GPU-a", "node1 GPU-b", "node1 GPU-c"};
  std::string why;
  EXPECT_TRUE(choose_nccl(own, "", true, why));
  EXPECT_NE(why.find("own"), std::string::npos) << why;
  EXPECT_FALSE(choose_nccl(shared, "", true, why));
  EXPECT_NE(why.find("share"), std::string::npos) << why;
  EXPECT_NE(why.find("ranks 0 and 1"), std::string::npos) << why;
  EXPECT_NE(why.find("node1 GPU-a"), std::string::npos) << why;
  EXPECT_FALSE(choose_nccl(own, "mpi", true, why));
  EXPECT_NE(why.find("MOM_COMM=mpi"), std::string::npos) << why;
  EXPECT_TRUE(choose_nccl(shared, "nccl", true, why));
  EXPECT_FALSE(choose_nccl(own, "", false, why));
  EXPECT_NE(why.find("no NCCL"), std::string::npos) << why;
  EXPECT_FALSE(choose_nccl({"node1 GPU-a"}, "", true, why));
}

TEST(DeviceCommunicator, StagedPassesHostBuffersThrough) {
  StagedCommunicator c(std::make_unique<SoloCommunicator>());
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.size(), 1);
  EXPECT_NE(c.device_memory(), nullptr);
  std::vector<float> f = {1.5f, -2.0f};
  c.allreduce_sum(f.data(), f.size());
  EXPECT_EQ(f, (std::vector<float>{1.5f, -2.0f}));
  double d = 3;
  c.allreduce_sum(&d, 1);
  EXPECT_EQ(d, 3);
  int64_t i = 4;
  c.allreduce_sum(&i, 1);
  EXPECT_EQ(i, 4);
  std::vector<float> rs(2, 0.0f);
  c.reduce_scatter_sum(f.data(), rs.data(), 2);
  EXPECT_EQ(rs, f);
  const char text[] = "abc";
  char got[4] = {};
  c.allgather_bytes(text, got, 4);
  EXPECT_STREQ(got, "abc");
  const std::vector<char> send = {'x', 'y', 'z', 'w'};
  std::vector<char> recv = {'-', '-', '-', '-', '-'};
  const int64_t sc = 3, sd = 1, rc = 3, rd = 2;
  c.alltoallv_bytes(send.data(), &sc, &sd, recv.data(), &rc, &rd);
  EXPECT_EQ(recv, (std::vector<char>{'-', '-', 'y', 'z', 'w'}));
  char b[2] = {'q', 'r'};
  c.broadcast_bytes(b, 2, 0);
  EXPECT_EQ(b[1], 'r');
  EXPECT_THROW(c.broadcast_bytes(b, 2, 1), std::logic_error);  // the wrapped communicator's check
  c.barrier();
  c.set_timeout_s(5);
  auto child = c.split(0, 0);
  EXPECT_NE(dynamic_cast<StagedCommunicator*>(child.get()), nullptr);
  EXPECT_EQ(child->timeout_s(), 5);
  // The wrapped communicator follows the decorator's timeout when it is used.
  auto& staged_child = dynamic_cast<StagedCommunicator&>(*child);
  staged_child.barrier();
  EXPECT_EQ(staged_child.inner().timeout_s(), 5);
}

TEST(DeviceCommunicator, CudaSoloWorldIsStaged) {
  if (!have_gpu()) GTEST_SKIP() << "no GPU here";
  ScopedEnv env("MOM_COMM", nullptr);
  auto world = communicator_for_device(std::make_unique<SoloCommunicator>(), Device::CUDA);
  auto* staged = dynamic_cast<StagedCommunicator*>(world.get());
  ASSERT_NE(staged, nullptr);
  // Device buffers on one rank: allreduce is the identity, allgather a copy.
  float* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, 2 * sizeof(float)), cudaSuccess);
  const float v[2] = {1.25f, -3.0f};
  cudaMemcpy(p, v, sizeof v, cudaMemcpyHostToDevice);
  world->allreduce_sum(p, 2);
  float* q = nullptr;
  ASSERT_EQ(cudaMalloc(&q, 2 * sizeof(float)), cudaSuccess);
  world->allgather_bytes(p, q, sizeof v);
  float out[2] = {};
  cudaMemcpy(out, q, sizeof out, cudaMemcpyDeviceToHost);
  EXPECT_EQ(out[0], 1.25f);
  EXPECT_EQ(out[1], -3.0f);
  cudaFree(p);
  cudaFree(q);
}

#endif  // MOM_HAVE_CUDA
