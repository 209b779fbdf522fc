// Conformance of the memory, elementwise and reduction ops and of the GEMM every other op is
// built on (tests/conformance.h explains the targets and the tolerances).
#include "tests/conformance.h"

namespace mom::test {
namespace {

MOM_CONFORMANCE_SUITE(ElementwiseConformance);

TEST_P(ElementwiseConformance, AddAccumulateScale) {
  for (int64_t n : {1, 31, 33, 4097, 100003}) {
    tw().reset();
    const Pair a = tw().random({n}), b = tw().random({n}), out = tw().zeros({n}), dst = tw().random({n});
    tw().both([&](Backend& be, bool d) {
      be.add(out[d], a[d], b[d]);
      be.accumulate(dst[d], a[d]);
      be.scale(dst[d], -0.37);
    });
    EXPECT_TRUE(tw().close(out, tw().tol(1e-6), "add out"));
    EXPECT_TRUE(tw().close(dst, tw().tol(1e-6), "accumulate+scale dst"));
  }
}

TEST_P(ElementwiseConformance, CopiesAndZero) {
  const Pair a = tw().random({257, 72}), b = tw().zeros({257, 72});
  tw().both([&](Backend& be, bool d) {
    be.copy(b[d], a[d]);
    be.zero(a[d].rows(3, 40));
  });
  EXPECT_TRUE(tw().close(b, 0.0, "copy"));
  EXPECT_TRUE(tw().close(a, 0.0, "zero of rows 3..40"));
}

TEST_P(ElementwiseConformance, SumSquaresIsDeterministic) {
  for (int64_t n : {1, 1000, 8193, 1 << 20}) {
    tw().reset();
    const Pair a = tw().random({n});
    const double ref = tw().ref().sum_squares(a.ref);
    const double got = tw().dev().sum_squares(a.dev);
    EXPECT_NEAR(got, ref, tw().tol(1e-6) * ref) << "n = " << n;
    EXPECT_EQ(got, tw().dev().sum_squares(a.dev)) << "sum_squares gave other bits on the same input, n = " << n;
  }
  EXPECT_EQ(tw().dev().sum_squares(tw().zeros({0}).dev), 0.0);
}

// matmul_forward without a bias and with one, over row counts that break tiled kernels,
// including zero rows (an empty module) and one.
TEST_P(ElementwiseConformance, MatmulShapes) {
  for (int64_t N : {0, 1, 2, 31, 33, 257}) {
    for (auto [IC, OC] : {std::pair<int64_t, int64_t>{64, 72}, {72, 64}, {768, 96}}) {
      tw().reset();
      const Pair inp = tw().random({N, IC}), w = tw().random({OC, IC}, -0.1, 0.1), b = tw().random({OC});
      const Pair out = tw().zeros({N, OC}), out_b = tw().zeros({N, OC});
      tw().both([&](Backend& be, bool d) {
        be.matmul_forward(out[d], inp[d], w[d], Tensor{});
        be.matmul_forward(out_b[d], inp[d], w[d], b[d]);
      });
      const std::string at = " N=" + std::to_string(N) + " IC=" + std::to_string(IC);
      EXPECT_TRUE(tw().close(out, tw().tol(1e-5), "matmul_forward" + at));
      EXPECT_TRUE(tw().close(out_b, tw().tol(1e-5), "matmul_forward with bias" + at));
    }
  }
}

}  // namespace
}  // namespace mom::test
