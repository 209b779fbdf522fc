// Conformance of the routing ops: Alternating Updates' predict and correct (static and per-token
// coefficients) and dispatch's gather_rows / combine_rows / combine_rows_backward, forward and
// backward (tests/conformance.h explains the targets and the tolerances).
//
// Shapes: K = 1, 2, 4 stream blocks (or slots per token); N = 0, 1, 2, 31, 33, 257 tokens (none,
// one, and counts that straddle warp and block boundaries); C = 64, 72, 768 (a warp multiple, a
// width that is not, GPT-2 small's). Every gradient is accumulated onto a nonzero buffer (the
// ops add), and every optional gradient is also left empty in a second call, whose results
// must match the full call's. Tolerances are 1e-5 in f32 relative to the result's largest
// entry: every sum here has at most K terms in T, or is a dot product over C accumulated in
// double (the CPU's altup and the CUDA kernels) or in T over ≤ 768 terms (the CPU's
// combine_rows_backward dweight, well inside 1e-5 for inputs in [-1, 1)). Copies, and the
// exactness properties the contract promises (p = I gives x, K = 1 with g = 1 gives y), are
// held to 0.
#include "tests/conformance.h"

namespace mom::test {
namespace {

MOM_CONFORMANCE_SUITE(RoutingConformance);

constexpr int64_t kTokens[] = {0, 1, 2, 31, 33, 257};
constexpr int64_t kWidths[] = {64, 72, 768};
constexpr int64_t kStreams[] = {1, 2, 4};

std::string at(int64_t K, int64_t N, int64_t C, bool per_token) {
  return " K=" + std::to_string(K) + " N=" + std::to_string(N) + " C=" + std::to_string(C) +
         (per_token ? " per-token" : " static");
}

TEST_P(RoutingConformance, AltupPredict) {
  for (int64_t K : kStreams)
    for (int64_t N : kTokens)
      for (int64_t C : kWidths)
        for (bool per_token : {false, true}) {
          tw().reset();
          const Shape ps = per_token ? Shape{N, K, K} : Shape{K, K};
          const Pair x = tw().random({K, N, C}), p = tw().random(ps), dout = tw().random({K, N, C});
          const Pair out = tw().constant({K, N, C}, 7.0);  // overwritten, not accumulated
          const Pair dx = tw().random({K, N, C}), dp = tw().random(ps);
          const Pair dx_only = tw().random({K, N, C}), dp_only = tw().random(ps);
          tw().set(dx_only, tw().host_ref(dx));
          tw().set(dp_only, tw().host_ref(dp));
          tw().both([&](Backend& be, bool d) {
            be.altup_predict_forward(out[d], x[d], p[d]);
            be.altup_predict_backward(dx[d], dp[d], dout[d], x[d], p[d]);
            be.altup_predict_backward(dx_only[d], Tensor{}, dout[d], x[d], p[d]);
            be.altup_predict_backward(Tensor{}, dp_only[d], dout[d], x[d], p[d]);
          });
          const std::string w = at(K, N, C, per_token);
          EXPECT_TRUE(tw().close(out, tw().tol(1e-5), "altup_predict_forward out" + w));
          EXPECT_TRUE(tw().close(dx, tw().tol(1e-5), "altup_predict_backward dx" + w));
          EXPECT_TRUE(tw().close(dp, tw().tol(1e-5), "altup_predict_backward dp" + w));
          EXPECT_TRUE(tw().close(dx_only, tw().tol(1e-5), "altup_predict_backward dx (dp empty)" + w));
          EXPECT_TRUE(tw().close(dp_only, tw().tol(1e-5), "altup_predict_backward dp (dx empty)" + w));
          EXPECT_EQ(tw().host_dev(dx_only), tw().host_dev(dx)) << "dx depends on whether dp is asked for" << w;
          EXPECT_EQ(tw().host_dev(dp_only), tw().host_dev(dp)) << "dp depends on whether dx is asked for" << w;
        }
}

// p = I (static and per token) returns x bit for bit.
TEST_P(RoutingConformance, AltupPredictIdentityIsExact) {
  for (int64_t K : kStreams)
    for (bool per_token : {false, true}) {
      tw().reset();
      const int64_t N = 33, C = 72;
      std::vector<double> eye;
      for (int64_t n = 0; n < (per_token ? N : 1); ++n)
        for (int64_t i = 0; i < K; ++i)
          for (int64_t j = 0; j < K; ++j) eye.push_back(i == j ? 1.0 : 0.0);
      const Pair p = tw().values(per_token ? Shape{N, K, K} : Shape{K, K}, eye);
      const Pair x = tw().random({K, N, C}), out = tw().zeros({K, N, C});
      tw().both([&](Backend& be, bool d) { be.altup_predict_forward(out[d], x[d], p[d]); });
      EXPECT_EQ(tw().host_dev(out), tw().host_dev(x)) << "p = I" << at(K, N, C, per_token);
    }
}

TEST_P(RoutingConformance, AltupCorrect) {
  for (int64_t K : kStreams)
    for (int64_t N : kTokens)
      for (int64_t C : kWidths)
        for (bool per_token : {false, true}) {
          tw().reset();
          const int active = static_cast<int>(K / 2);
          const Shape gs = per_token ? Shape{N, K} : Shape{K};
          const Pair pred = tw().random({K, N, C}), y = tw().random({N, C}), g = tw().random(gs);
          const Pair dout = tw().random({K, N, C});
          const Pair out = tw().constant({K, N, C}, 7.0);
          // In place: out is pred itself (the CPU writes the active block last to allow it).
          const Pair inplace = tw().random({K, N, C});
          tw().set(inplace, tw().host_ref(pred));
          const Pair dpred = tw().random({K, N, C}), dy = tw().random({N, C}), dg = tw().random(gs);
          const Pair dpred_only = tw().random({K, N, C}), dy_only = tw().random({N, C}), dg_only = tw().random(gs);
          tw().set(dpred_only, tw().host_ref(dpred));
          tw().set(dy_only, tw().host_ref(dy));
          tw().set(dg_only, tw().host_ref(dg));
          tw().both([&](Backend& be, bool d) {
            be.altup_correct_forward(out[d], pred[d], y[d], g[d], active);
            be.altup_correct_forward(inplace[d], inplace[d], y[d], g[d], active);
            be.altup_correct_backward(dpred[d], dy[d], dg[d], dout[d], pred[d], y[d], g[d], active);
            be.altup_correct_backward(dpred_only[d], Tensor{}, Tensor{}, dout[d], pred[d], y[d], g[d], active);
            be.altup_correct_backward(Tensor{}, dy_only[d], Tensor{}, dout[d], pred[d], y[d], g[d], active);
            be.altup_correct_backward(Tensor{}, Tensor{}, dg_only[d], dout[d], pred[d], y[d], g[d], active);
          });
          const std::string w = at(K, N, C, per_token);
          EXPECT_TRUE(tw().close(out, tw().tol(1e-5), "altup_correct_forward out" + w));
          EXPECT_EQ(tw().host_dev(inplace), tw().host_dev(out)) << "in-place correct differs" << w;
          EXPECT_TRUE(tw().close(dpred, tw().tol(1e-5), "altup_correct_backward dpred" + w));
          EXPECT_TRUE(tw().close(dy, tw().tol(1e-5), "altup_correct_backward dy" + w));
          EXPECT_TRUE(tw().close(dg, tw().tol(1e-5), "altup_correct_backward dg" + w));
          EXPECT_EQ(tw().host_dev(dpred_only), tw().host_dev(dpred)) << "dpred alone differs" << w;
          EXPECT_EQ(tw().host_dev(dy_only), tw().host_dev(dy)) << "dy alone differs" << w;
          EXPECT_EQ(tw().host_dev(dg_only), tw().host_dev(dg)) << "dg alone differs" << w;
        }
}

// K = 1 with g = 1 returns y bit for bit (static and per token).
TEST_P(RoutingConformance, AltupCorrectSingleBlockIsExact) {
  for (bool per_token : {false, true}) {
    tw().reset();
    const int64_t N = 31, C = 768;
    const Pair pred = tw().random({1, N, C}), y = tw().random({N, C});
    const Pair g = tw().constant(per_token ? Shape{N, 1} : Shape{1}, 1.0), out = tw().zeros({1, N, C});
    tw().both([&](Backend& be, bool d) { be.altup_correct_forward(out[d], pred[d], y[d], g[d], 0); });
    EXPECT_EQ(tw().host_dev(out), tw().host_dev(y)) << "K = 1, g = 1" << at(1, N, C, per_token);
  }
}

// The static coefficients' gradients are sums over tokens: the same inputs give the same bits.
TEST_P(RoutingConformance, AltupStaticGradientsAreDeterministic) {
  const int64_t K = 4, N = 1031, C = 72;
  const Pair x = tw().random({K, N, C}), p = tw().random({K, K}), dout = tw().random({K, N, C});
  const Pair pred = tw().random({K, N, C}), y = tw().random({N, C}), g = tw().random({K});
  const Pair dp1 = tw().zeros({K, K}), dp2 = tw().zeros({K, K}), dg1 = tw().zeros({K}), dg2 = tw().zeros({K});
  tw().both([&](Backend& be, bool d) {
    be.altup_predict_backward(Tensor{}, dp1[d], dout[d], x[d], p[d]);
    be.altup_predict_backward(Tensor{}, dp2[d], dout[d], x[d], p[d]);
    be.altup_correct_backward(Tensor{}, Tensor{}, dg1[d], dout[d], pred[d], y[d], g[d], 1);
    be.altup_correct_backward(Tensor{}, Tensor{}, dg2[d], dout[d], pred[d], y[d], g[d], 1);
  });
  EXPECT_TRUE(tw().close(dp1, tw().tol(1e-5), "altup_predict_backward dp"));
  EXPECT_TRUE(tw().close(dg1, tw().tol(1e-5), "altup_correct_backward dg"));
  EXPECT_EQ(tw().dev_bits(dp1), tw().dev_bits(dp2)) << "static dp gave other bits on the same input";
  EXPECT_EQ(tw().dev_bits(dg1), tw().dev_bits(dg2)) << "static dg gave other bits on the same input";
}

// A dispatch plan for N tokens with K slots each: every (t, k) is kept with probability 3/4
// and gets its own buf row (the buf rows in a shuffled order), else its slot is -1. `keep`
// overrides the count of kept slots (0: an empty module pool; 1: a one-row pool).
std::vector<int32_t> plan_slots(Rng& rng, int64_t N, int64_t K, int64_t keep, int64_t* M) {
  std::vector<int32_t> slot(static_cast<size_t>(N * K), -1);
  std::vector<size_t> kept;
  for (size_t q = 0; q < slot.size(); ++q)
    if (keep >= 0 ? static_cast<int64_t>(kept.size()) < keep && rng.below(2) == 0 : rng.below(4) != 0)
      kept.push_back(q);
  if (keep > static_cast<int64_t>(kept.size()) && !slot.empty())  // force the count when chance fell short
    for (size_t q = 0; q < slot.size() && static_cast<int64_t>(kept.size()) < keep; ++q)
      if (std::find(kept.begin(), kept.end(), q) == kept.end()) kept.push_back(q);
  std::vector<int32_t> rows(kept.size());
  for (size_t r = 0; r < rows.size(); ++r) rows[r] = static_cast<int32_t>(r);
  for (size_t r = rows.size(); r > 1; --r) std::swap(rows[r - 1], rows[rng.below(r)]);
  for (size_t r = 0; r < kept.size(); ++r) slot[kept[r]] = rows[r];
  *M = static_cast<int64_t>(kept.size());
  return slot;
}

TEST_P(RoutingConformance, GatherRows) {
  Rng rng(7);
  for (int64_t M : kTokens)
    for (int64_t D : kWidths) {
      tw().reset();
      const int64_t rows_in = 40;
      std::vector<int32_t> r(static_cast<size_t>(M));
      for (auto& v : r) v = static_cast<int32_t>(rng.below(rows_in));
      const Pair in = tw().random({rows_in, D}), rows = tw().ints({M}, r), out = tw().constant({M, D}, 7.0);
      tw().both([&](Backend& be, bool d) { be.gather_rows(out[d], in[d], rows[d]); });
      EXPECT_TRUE(tw().close(out, 0.0, "gather_rows M=" + std::to_string(M) + " D=" + std::to_string(D)));
    }
}

TEST_P(RoutingConformance, CombineRows) {
  Rng rng(11);
  for (int64_t K : kStreams)
    for (int64_t N : kTokens)
      for (int64_t D : kWidths)
        for (int64_t keep : {-1, 0, 1}) {  // chance, an empty pool, a one-row pool
          if (keep == 1 && N == 0) continue;
          tw().reset();
          int64_t M = 0;
          const std::vector<int32_t> s = plan_slots(rng, N, K, keep, &M);
          const Pair slot = tw().ints({N, K}, s), buf = tw().random({M, D}), weight = tw().random({N, K});
          const Pair out_w = tw().random({N, D}), out_1 = tw().random({N, D}), dout = tw().random({N, D});
          const Pair dbuf = tw().random({M, D}), dweight = tw().random({N, K});
          const Pair dbuf_1 = tw().random({M, D}), dbuf_only = tw().random({M, D});
          tw().set(dbuf_only, tw().host_ref(dbuf));
          tw().both([&](Backend& be, bool d) {
            be.combine_rows(out_w[d], buf[d], slot[d], weight[d]);
            be.combine_rows(out_1[d], buf[d], slot[d], Tensor{});
            be.combine_rows_backward(dbuf[d], dweight[d], dout[d], buf[d], slot[d], weight[d]);
            be.combine_rows_backward(dbuf_only[d], Tensor{}, dout[d], buf[d], slot[d], weight[d]);
            be.combine_rows_backward(dbuf_1[d], Tensor{}, dout[d], buf[d], slot[d], Tensor{});
          });
          const std::string w = " K=" + std::to_string(K) + " N=" + std::to_string(N) + " D=" + std::to_string(D) +
                                " pool rows=" + std::to_string(M);
          EXPECT_TRUE(tw().close(out_w, tw().tol(1e-5), "combine_rows weighted" + w));
          EXPECT_TRUE(tw().close(out_1, tw().tol(1e-5), "combine_rows unweighted" + w));
          EXPECT_TRUE(tw().close(dbuf, tw().tol(1e-5), "combine_rows_backward dbuf" + w));
          EXPECT_TRUE(tw().close(dweight, tw().tol(1e-5), "combine_rows_backward dweight" + w));
          EXPECT_TRUE(tw().close(dbuf_1, tw().tol(1e-5), "combine_rows_backward dbuf unweighted" + w));
          EXPECT_EQ(tw().host_dev(dbuf_only), tw().host_dev(dbuf)) << "dbuf depends on whether dweight is asked" << w;
        }
}

// gather_rows then combine_rows without weights (its backward) is the identity on the rows
// kept, and adds nothing for dropped slots: checked exactly on the tested side.
TEST_P(RoutingConformance, GatherThenCombineRoundTrip) {
  Rng rng(13);
  const int64_t N = 257, K = 2, D = 72;
  int64_t M = 0;
  const std::vector<int32_t> s = plan_slots(rng, N, K, -1, &M);
  std::vector<int32_t> r(static_cast<size_t>(M));
  for (int64_t q = 0; q < N * K; ++q)
    if (s[static_cast<size_t>(q)] >= 0) r[static_cast<size_t>(s[static_cast<size_t>(q)])] = static_cast<int32_t>(q);
  const Pair x = tw().random({N * K, D}), rows = tw().ints({M}, r), slot = tw().ints({N * K, 1}, s);
  const Pair buf = tw().zeros({M, D}), back = tw().zeros({N * K, D});
  tw().both([&](Backend& be, bool d) {
    be.gather_rows(buf[d], x[d], rows[d]);
    be.combine_rows(back[d], buf[d], slot[d], Tensor{});
  });
  const std::vector<double> xv = tw().host_dev(x), bv = tw().host_dev(back);
  for (int64_t q = 0; q < N * K; ++q)
    for (int64_t c = 0; c < D; ++c) {
      const size_t e = static_cast<size_t>(q * D + c);
      ASSERT_EQ(bv[e], s[static_cast<size_t>(q)] >= 0 ? xv[e] : 0.0) << "row " << q << " column " << c;
    }
}

}  // namespace
}  // namespace mom::test
