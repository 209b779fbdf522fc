// Collectives of MpiCommunicator give the right numbers on every rank: sums, reduce-scatter
// pieces, allgather order, alltoallv with zero-count peers, broadcast, and sub-communicators.
#include <cstring>
#include <vector>

#include "mpi_test_support.h"

using namespace mom;

namespace {

void test_allreduce(Communicator& c) {
  const int W = c.size(), r = c.rank();
  std::vector<float> f = {float(r), 1.0f, float(r * r)};
  c.allreduce_sum(f.data(), f.size());
  float sq = 0;
  for (int i = 0; i < W; ++i) sq += float(i * i);
  MPI_CHECK(f[0] == float(W * (W - 1) / 2) && f[1] == float(W) && f[2] == sq);

  std::vector<double> d = {0.5 * r, -1.0};
  c.allreduce_sum(d.data(), d.size());
  MPI_CHECK(d[0] == 0.5 * W * (W - 1) / 2 && d[1] == -double(W));

  // Beyond float/double precision: int64 sums must be exact.
  std::vector<int64_t> n = {(int64_t(1) << 40) + r, int64_t(-r)};
  c.allreduce_sum(n.data(), n.size());
  MPI_CHECK(n[0] == W * (int64_t(1) << 40) + W * (W - 1) / 2 && n[1] == -int64_t(W * (W - 1) / 2));
}

void test_reduce_scatter(Communicator& c) {
  const int W = c.size(), r = c.rank();
  const size_t block = 3;
  std::vector<float> send(W * block), recv(block, -1);
  for (int p = 0; p < W; ++p)
    for (size_t i = 0; i < block; ++i) send[p * block + i] = float(100 * p + 10 * r + int(i));
  c.reduce_scatter_sum(send.data(), recv.data(), block);
  for (size_t i = 0; i < block; ++i) {
    float want = 0;
    for (int s = 0; s < W; ++s) want += float(100 * r + 10 * s + int(i));
    MPI_CHECK(recv[i] == want);
  }
}

void test_allgather(Communicator& c) {
  const int W = c.size(), r = c.rank();
  int32_t mine[2] = {r, 7 * r + 1};
  std::vector<int32_t> all(2 * W, -1);
  c.allgather(mine, all.data(), 2);
  for (int p = 0; p < W; ++p) MPI_CHECK(all[2 * p] == p && all[2 * p + 1] == 7 * p + 1);
}

// Rank r sends (r + p) % 3 bytes to peer p, each byte = 16·r + p, so some pairs send nothing.
void test_alltoallv(Communicator& c) {
  const int W = c.size(), r = c.rank();
  std::vector<int64_t> sc(W), sd(W), rc(W), rd(W);
  int64_t s_total = 0, r_total = 0;
  for (int p = 0; p < W; ++p) {
    sc[p] = (r + p) % 3, sd[p] = s_total, s_total += sc[p];
    rc[p] = (p + r) % 3, rd[p] = r_total, r_total += rc[p];
  }
  std::vector<unsigned char> send(s_total), recv(r_total + 1, 0xEE);
  for (int p = 0; p < W; ++p)
    for (int64_t i = 0; i < sc[p]; ++i) send[sd[p] + i] = static_cast<unsigned char>(16 * r + p);
  c.alltoallv_bytes(send.data(), sc.data(), sd.data(), recv.data(), rc.data(), rd.data());
  for (int p = 0; p < W; ++p)
    for (int64_t i = 0; i < rc[p]; ++i) MPI_CHECK(recv[rd[p] + i] == static_cast<unsigned char>(16 * p + r));
  MPI_CHECK(recv[r_total] == 0xEE);  // nothing written past the end
}

void test_broadcast(Communicator& c) {
  const int W = c.size(), r = c.rank();
  for (int root = 0; root < W; ++root) {
    double v[2] = {r == root ? 3.25 * root : 0.0, r == root ? -1.0 : 0.0};
    c.broadcast_bytes(v, sizeof v, root);
    MPI_CHECK(v[0] == 3.25 * root && v[1] == -1.0);
  }
}

// Even/odd split with reversed keys: the child's ranks follow the keys.
void test_split(Communicator& c) {
  const int W = c.size(), r = c.rank();
  auto sub = c.split(r % 2, W - r);
  int members = 0;
  for (int p = r % 2; p < W; p += 2) ++members;
  MPI_CHECK(sub->size() == members);
  int higher = 0;  // same color, larger world rank: they come first (smaller key)
  for (int p = r + 2; p < W; p += 2) ++higher;
  MPI_CHECK(sub->rank() == higher);
  MPI_CHECK(sub->timeout_s() == c.timeout_s());
  int64_t sum = r;
  sub->allreduce_sum(&sum, 1);
  int64_t want = 0;
  for (int p = r % 2; p < W; p += 2) want += p;
  MPI_CHECK(sum == want);
  std::vector<int32_t> order(sub->size());
  const int32_t me = r;
  sub->allgather(&me, order.data(), 1);
  for (int i = 0; i + 1 < sub->size(); ++i) MPI_CHECK(order[i] > order[i + 1]);
  sub->barrier();
}

void test_solo() {
  SoloCommunicator s;
  float f = 2.5f;
  s.allreduce_sum(&f, 1);
  float out = 0;
  s.reduce_scatter_sum(&f, &out, 1);
  int64_t n = 3, m = 0;
  s.allgather(&n, &m, 1);
  const int64_t cnt = 8, zero = 0;
  int64_t got = 0;
  s.alltoallv_bytes(&n, &cnt, &zero, &got, &cnt, &zero);
  MPI_CHECK(f == 2.5f && out == 2.5f && m == 3 && got == 3 && s.split(0, 0)->size() == 1);
}

}  // namespace

int main(int argc, char** argv) {
  return mpitest::run(argc, argv, "mpi_test_collectives", [](Communicator& world) {
    test_allreduce(world);
    test_reduce_scatter(world);
    test_allgather(world);
    test_alltoallv(world);
    test_broadcast(world);
    test_split(world);
    test_solo();
    world.barrier();
  });
}
