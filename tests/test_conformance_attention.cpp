// Conformance of the attention ops (tests/conformance.h explains the targets and the
// tolerances): standard and shaped attention, forward and backward, and their KV-cached
// decoding forms, over the sequence lengths and head sizes that break tiled or warp-per-row
// kernels (T = 1, 2, 31, 33, 257, 1024; head sizes 64, 36, 9, one head of 768).
//
// Backward consumes probs, so every backward runs after its own forward on each side (Twin::both
// runs the pair of ops on the reference, then on the tested backend). The gradients are
// pre-filled with random values so that a backend that overwrites instead of accumulating
// fails. The cached forms are checked against the reference's cached form and, on the
// tested side, against the training forward of the same sequences (the same rows must come
// out), with several sequences of different lengths sharing each step, prefill chunks
// (several rows of one sequence in one step) and single-row steps.
//
// Tolerances: 1e-5 of the result's largest magnitude in f32 (1e-10 in f64), for everything,
// including the scores' gradient left in probs by backward, except shaped attention's scalar
// gradients dα, dβ, dγ: each is a sum over B·T²/2 entries of dA = dout·vᵀ (rounded to f32
// before the sum), and the terms largely cancel (dγ at T = 1024 is about a tenth of its
// terms' size), so the error relative to the result is larger: the CPU's f32 reaches 6e-6 of
// it. They get 3e-5.
#include <algorithm>
#include <cstring>

#include "tests/conformance.h"

namespace mom::test {
namespace {

MOM_CONFORMANCE_SUITE(AttentionConformance);

struct Case {
  int64_t B, T, C;
  int nh;
};

std::string describe(const Case& c) {
  return " B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " C=" + std::to_string(c.C) +
         " nh=" + std::to_string(c.nh);
}

// Head sizes 64, 36, 9, 768 and 8; T from 1 to 1024 (1024 with small B and C: the CPU's
// reference runs in f64 and must stay quick).
const std::vector<Case> kCases = {
    {2, 1, 64, 1},  {2, 2, 64, 4},     {3, 31, 72, 8},  {2, 33, 72, 2},   {1, 33, 768, 1},
    {1, 31, 64, 8}, {2, 257, 768, 12}, {1, 257, 72, 8}, {1, 1024, 64, 1}, {1, 1024, 72, 8},
};

TEST_P(AttentionConformance, ForwardBackward) {
  for (const Case& c : kCases) {
    tw().reset();
    const std::string at = describe(c);
    const Pair qkv = tw().random({c.B, c.T, 3 * c.C}, -1.5, 1.5);
    const Pair out = tw().zeros({c.B, c.T, c.C}), probs = tw().zeros({c.B, c.nh, c.T, c.T});
    tw().both([&](Backend& be, bool d) { be.attention_forward(out[d], probs[d], qkv[d], c.nh); });
    EXPECT_TRUE(tw().close(out, tw().tol(1e-5), "attention_forward out" + at));
    EXPECT_TRUE(tw().close(probs, tw().tol(1e-5), "attention_forward probs" + at));

    // Backward after a fresh forward on each side (the forward's results were checked).
    const Pair dout = tw().random({c.B, c.T, c.C}), dqkv = tw().random({c.B, c.T, 3 * c.C});
    tw().both([&](Backend& be, bool d) {
      be.attention_forward(out[d], probs[d], qkv[d], c.nh);
      be.attention_backward(dqkv[d], dout[d], qkv[d], probs[d], c.nh);
    });
    EXPECT_TRUE(tw().close(dqkv, tw().tol(1e-5), "attention_backward dqkv" + at));
    EXPECT_TRUE(tw().close(probs, tw().tol(1e-5), "attention_backward's scores gradient in probs" + at));
  }
}

// Per-head α, β, γ away from 1 (and from each other), so that every term and every scalar
// gradient is seen.
struct Gains {
  Pair alpha, beta, gamma;
};
Gains random_gains(Twin& tw, int nh) {
  return {tw.random({nh}, 0.3, 1.7), tw.random({nh}, 0.3, 1.7), tw.random({nh}, 0.3, 1.7)};
}

// One cached step on both sides: shaped attention (x = qk, v its values) or standard (x =
// qkv; v unused).
void cached_step(Twin& tw, bool shaped, const Pair& out, const Pair& x, const Pair& v, const Pair& kc, const Pair& vc,
                 const Pair& slot, const Pair& pos, const Gains& g, int nh) {
  tw.both([&](Backend& be, bool d) {
    if (shaped)
      be.shaped_attention_forward_cached(out[d], x[d], v[d], kc[d], vc[d], slot[d], pos[d], g.alpha[d], g.beta[d],
                                         g.gamma[d], nh);
    else
      be.attention_forward_cached(out[d], x[d], kc[d], vc[d], slot[d], pos[d], nh);
  });
}

TEST_P(AttentionConformance, ShapedForwardBackward) {
  for (const Case& c : kCases) {
    tw().reset();
    const std::string at = describe(c);
    const Pair qk = tw().random({c.B, c.T, 2 * c.C}, -1.5, 1.5), v = tw().random({c.B, c.T, c.C});
    const Gains g = random_gains(tw(), c.nh);
    const Pair out = tw().zeros({c.B, c.T, c.C}), probs = tw().zeros({c.B, c.nh, c.T, c.T});
    tw().both([&](Backend& be, bool d) {
      be.shaped_attention_forward(out[d], probs[d], qk[d], v[d], g.alpha[d], g.beta[d], g.gamma[d], c.nh);
    });
    EXPECT_TRUE(tw().close(out, tw().tol(1e-5), "shaped_attention_forward out" + at));
    EXPECT_TRUE(tw().close(probs, tw().tol(1e-5), "shaped_attention_forward probs" + at));

    const Pair dout = tw().random({c.B, c.T, c.C}), dqk = tw().random({c.B, c.T, 2 * c.C}),
               dv = tw().random({c.B, c.T, c.C});
    const Pair da = tw().random({c.nh}), db = tw().random({c.nh}), dg = tw().random({c.nh});
    tw().both([&](Backend& be, bool d) {
      be.shaped_attention_forward(out[d], probs[d], qk[d], v[d], g.alpha[d], g.beta[d], g.gamma[d], c.nh);
      be.shaped_attention_backward(dqk[d], dv[d], da[d], db[d], dg[d], dout[d], qk[d], v[d], probs[d], g.alpha[d],
                                   g.beta[d], g.gamma[d], c.nh);
    });
    EXPECT_TRUE(tw().close(dqk, tw().tol(1e-5), "shaped_attention_backward dqk" + at));
    EXPECT_TRUE(tw().close(dv, tw().tol(1e-5), "shaped_attention_backward dv" + at));
    EXPECT_TRUE(tw().close(da, tw().tol(3e-5), "shaped_attention_backward dalpha" + at));
    EXPECT_TRUE(tw().close(db, tw().tol(3e-5), "shaped_attention_backward dbeta" + at));
    EXPECT_TRUE(tw().close(dg, tw().tol(3e-5), "shaped_attention_backward dgamma" + at));
    EXPECT_TRUE(tw().close(probs, tw().tol(1e-5), "shaped_attention_backward's scores gradient in probs" + at));
  }
}

// The scalar gradients may be empty (a frozen gain): the rest is unchanged.
TEST_P(AttentionConformance, ShapedBackwardWithoutScalarGradients) {
  const Case c{2, 33, 72, 8};
  const Pair qk = tw().random({c.B, c.T, 2 * c.C}, -1.5, 1.5), v = tw().random({c.B, c.T, c.C});
  const Gains g = random_gains(tw(), c.nh);
  const Pair out = tw().zeros({c.B, c.T, c.C}), probs = tw().zeros({c.B, c.nh, c.T, c.T});
  const Pair dout = tw().random({c.B, c.T, c.C}), dqk = tw().random({c.B, c.T, 2 * c.C}),
             dv = tw().random({c.B, c.T, c.C});
  tw().both([&](Backend& be, bool d) {
    be.shaped_attention_forward(out[d], probs[d], qk[d], v[d], g.alpha[d], g.beta[d], g.gamma[d], c.nh);
    be.shaped_attention_backward(dqk[d], dv[d], Tensor{}, Tensor{}, Tensor{}, dout[d], qk[d], v[d], probs[d],
                                 g.alpha[d], g.beta[d], g.gamma[d], c.nh);
  });
  EXPECT_TRUE(tw().close(dqk, tw().tol(1e-5), "shaped_attention_backward dqk"));
  EXPECT_TRUE(tw().close(dv, tw().tol(1e-5), "shaped_attention_backward dv"));
}

// MODELS.md §4: with q = 0 and α = β = γ = 1 the shaped sub-block returns v bit for bit.
TEST_P(AttentionConformance, ShapedIsIdentityAtInit) {
  for (const Case& c : {Case{2, 1, 64, 1}, Case{2, 33, 72, 8}, Case{1, 257, 768, 12}}) {
    tw().reset();
    std::vector<double> qk(static_cast<size_t>(c.B * c.T * 2 * c.C), 0.0);
    const std::vector<double> k = tw().host_ref(tw().random({c.B * c.T * c.C}));
    for (int64_t r = 0; r < c.B * c.T; ++r)
      for (int64_t j = 0; j < c.C; ++j) qk[r * 2 * c.C + c.C + j] = k[r * c.C + j];
    const Pair q0k = tw().values({c.B, c.T, 2 * c.C}, qk), v = tw().random({c.B, c.T, c.C});
    const Pair one = tw().constant({c.nh}, 1.0);
    const Pair out = tw().zeros({c.B, c.T, c.C}), probs = tw().zeros({c.B, c.nh, c.T, c.T});
    tw().both([&](Backend& be, bool d) {
      be.shaped_attention_forward(out[d], probs[d], q0k[d], v[d], one[d], one[d], one[d], c.nh);
    });
    EXPECT_EQ(tw().host_dev(out), tw().host_dev(v)) << "out is not v exactly" << describe(c);
  }
}

TEST_P(AttentionConformance, IsDeterministic) {
  const Case c{2, 257, 768, 12};
  const Pair qkv = tw().random({c.B, c.T, 3 * c.C}, -1.5, 1.5), dout = tw().random({c.B, c.T, c.C});
  const Pair qk = tw().random({c.B, c.T, 2 * c.C}, -1.5, 1.5), v = tw().random({c.B, c.T, c.C});
  const Gains g = random_gains(tw(), c.nh);
  const Pair out = tw().zeros({c.B, c.T, c.C}), probs = tw().zeros({c.B, c.nh, c.T, c.T});
  const Pair dqkv = tw().zeros({c.B, c.T, 3 * c.C}), dqk = tw().zeros({c.B, c.T, 2 * c.C}),
             dv = tw().zeros({c.B, c.T, c.C}), da = tw().zeros({c.nh}), db = tw().zeros({c.nh}),
             dg = tw().zeros({c.nh});
  std::vector<std::vector<unsigned char>> first;
  for (int run = 0; run < 2; ++run) {
    Backend& be = tw().dev();
    for (const Pair* p : {&dqkv, &dqk, &dv, &da, &db, &dg}) be.zero(p->dev);
    be.attention_forward(out.dev, probs.dev, qkv.dev, c.nh);
    std::vector<std::vector<unsigned char>> bits = {tw().dev_bits(out), tw().dev_bits(probs)};
    be.attention_backward(dqkv.dev, dout.dev, qkv.dev, probs.dev, c.nh);
    bits.push_back(tw().dev_bits(dqkv));
    be.shaped_attention_forward(out.dev, probs.dev, qk.dev, v.dev, g.alpha.dev, g.beta.dev, g.gamma.dev, c.nh);
    bits.push_back(tw().dev_bits(out));
    be.shaped_attention_backward(dqk.dev, dv.dev, da.dev, db.dev, dg.dev, dout.dev, qk.dev, v.dev, probs.dev,
                                 g.alpha.dev, g.beta.dev, g.gamma.dev, c.nh);
    for (const Pair* p : {&dqk, &dv, &da, &db, &dg}) bits.push_back(tw().dev_bits(*p));
    if (run == 0) {
      first = bits;
    } else {
      for (size_t i = 0; i < bits.size(); ++i) EXPECT_TRUE(bits[i] == first[i]) << "result " << i << " changed bits";
    }
  }
}

TEST_P(AttentionConformance, ZeroRowsAreNoOps) {
  const int nh = 2;
  const int64_t C = 64, T = 5;
  const Pair qkv = tw().zeros({0, T, 3 * C}), out = tw().zeros({0, T, C}), probs = tw().zeros({0, nh, T, T});
  const Pair qk = tw().zeros({0, T, 2 * C}), v = tw().zeros({0, T, C});
  const Gains g = random_gains(tw(), nh);
  const Pair da = tw().random({nh}), db = tw().random({nh}), dg = tw().random({nh});
  const Pair kc = tw().random({2, 8, C}), vc = tw().random({2, 8, C});
  const Pair rows3 = tw().zeros({0, 3 * C}), rows2 = tw().zeros({0, 2 * C}), rows1 = tw().zeros({0, C});
  const Pair none = tw().ints({0}, {});
  tw().both([&](Backend& be, bool d) {
    be.attention_forward(out[d], probs[d], qkv[d], nh);
    be.attention_backward(qkv[d], out[d], qkv[d], probs[d], nh);
    be.shaped_attention_forward(out[d], probs[d], qk[d], v[d], g.alpha[d], g.beta[d], g.gamma[d], nh);
    be.shaped_attention_backward(qk[d], v[d], da[d], db[d], dg[d], out[d], qk[d], v[d], probs[d], g.alpha[d], g.beta[d],
                                 g.gamma[d], nh);
    be.attention_forward_cached(rows1[d], rows3[d], kc[d], vc[d], none[d], none[d], nh);
    be.shaped_attention_forward_cached(rows1[d], rows2[d], rows1[d], kc[d], vc[d], none[d], none[d], g.alpha[d],
                                       g.beta[d], g.gamma[d], nh);
  });
  // With no rows the scalar gradients get nothing added and the caches are untouched.
  EXPECT_TRUE(tw().close(da, tw().tol(1e-6), "dalpha"));
  EXPECT_TRUE(tw().close(kc, 0.0, "kcache"));
  EXPECT_TRUE(tw().close(vc, 0.0, "vcache"));
}

// ---- cached forms

// Decodes sequences of the given lengths together: sequence s lives in cache slot S−1−s; step
// 0 prefills about half of each, later steps take 1, 1 + L/64 or 1 + 2·L/64 rows of each
// unfinished sequence, in alternating order. Every step's out is checked against the
// reference's cached op and, on the tested side, against the training forward's rows.
void check_cached(Twin& tw, int64_t C, int nh, const std::vector<int64_t>& lengths, bool shaped) {
  tw.reset();
  const int64_t S = static_cast<int64_t>(lengths.size());
  const int64_t n_ctx = *std::max_element(lengths.begin(), lengths.end()) + 3;
  const int64_t W = shaped ? 2 * C : 3 * C;  // width of qkv / qk
  const std::string at = std::string(shaped ? " shaped" : "") + " C=" + std::to_string(C) + " nh=" + std::to_string(nh);
  const Gains g = random_gains(tw, nh);
  std::vector<std::vector<double>> xh(S), vh(S), train(S);
  for (int64_t s = 0; s < S; ++s) {
    const int64_t L = lengths[s];
    const Pair x = tw.random({1, L, W}, -1.5, 1.5), v = tw.random({1, L, C});
    const Pair out = tw.zeros({1, L, C}), probs = tw.zeros({1, nh, L, L});
    tw.both([&](Backend& be, bool d) {
      if (shaped)
        be.shaped_attention_forward(out[d], probs[d], x[d], v[d], g.alpha[d], g.beta[d], g.gamma[d], nh);
      else
        be.attention_forward(out[d], probs[d], x[d], nh);
    });
    xh[s] = tw.host_ref(x), vh[s] = tw.host_ref(v), train[s] = tw.host_dev(out);
  }
  const Pair kc = tw.zeros({S, n_ctx, C}), vc = tw.zeros({S, n_ctx, C});
  std::vector<int64_t> done(static_cast<size_t>(S), 0);
  for (int step = 0;; ++step) {
    std::vector<std::pair<int64_t, int64_t>> rows;  // (sequence, position)
    for (int64_t k = 0; k < S; ++k) {
      const int64_t s = step % 2 ? S - 1 - k : k, L = lengths[s];
      const int64_t chunk = step == 0 ? (L + 1) / 2 : 1 + (step % 3) * (L / 64);
      const int64_t n = std::min(chunk, L - done[s]);
      for (int64_t p = done[s]; p < done[s] + n; ++p) rows.emplace_back(s, p);
      done[s] += n;
    }
    if (rows.empty()) break;
    const int64_t M = static_cast<int64_t>(rows.size());
    std::vector<double> x(static_cast<size_t>(M * W)), v(static_cast<size_t>(M * C)), want(static_cast<size_t>(M * C));
    std::vector<int32_t> slot(static_cast<size_t>(M)), pos(static_cast<size_t>(M));
    for (int64_t m = 0; m < M; ++m) {
      const auto [s, p] = rows[m];
      std::copy_n(xh[s].begin() + p * W, W, x.begin() + m * W);
      std::copy_n(vh[s].begin() + p * C, C, v.begin() + m * C);
      std::copy_n(train[s].begin() + p * C, C, want.begin() + m * C);
      slot[m] = static_cast<int32_t>(S - 1 - s), pos[m] = static_cast<int32_t>(p);
    }
    const Pair xm = tw.values({M, W}, x), sl = tw.ints({M}, slot), ps = tw.ints({M}, pos), out = tw.zeros({M, C});
    const Pair vm = shaped ? tw.values({M, C}, v) : Twin::none();
    cached_step(tw, shaped, out, xm, vm, kc, vc, sl, ps, g, nh);
    const std::string where = at + " step " + std::to_string(step) + " (" + std::to_string(M) + " rows)";
    EXPECT_TRUE(tw.close(out, tw.tol(1e-5), "cached out" + where));
    EXPECT_TRUE(close_to(tw.host_dev(out), want, tw.tol(1e-5), "cached out against the training forward" + where));
  }
}

TEST_P(AttentionConformance, CachedMatchesTraining) {
  for (bool shaped : {false, true}) {
    check_cached(tw(), 64, 1, {1, 2, 31, 33}, shaped);
    check_cached(tw(), 72, 8, {33, 1, 257}, shaped);
    check_cached(tw(), 72, 2, {31, 2}, shaped);
    check_cached(tw(), 768, 12, {33, 5}, shaped);
    check_cached(tw(), 64, 2, {1024, 3}, shaped);
  }
}

// Long caches: the cached kernels keep a row's scores in shared memory, opt in above 48 KiB
// (n_ctx 20000 in f32: 80 KB) and fall back to global scratch beyond what a block may have
// (n_ctx 70000: 280 KB, over the H200's 227 KB). Caches filled with random keys and values;
// two rows of one sequence, the last at n_ctx − 1, attend over them.
TEST_P(AttentionConformance, CachedLongContexts) {
  tw().reserve(size_t{80} << 20);
  const int64_t C = 64;
  const int nh = 2;
  for (int64_t n_ctx : {20000, 70000}) {
    for (bool shaped : {false, true}) {
      tw().reset();
      const int64_t W = shaped ? 2 * C : 3 * C;
      const Gains g = random_gains(tw(), nh);
      const Pair kc = tw().random({1, n_ctx, C}), vc = tw().random({1, n_ctx, C});
      const Pair x = tw().random({2, W}, -0.2, 0.2), v = tw().random({2, C});
      const Pair sl = tw().ints({2}, {0, 0}),
                 ps = tw().ints({2}, {static_cast<int32_t>(n_ctx / 2), static_cast<int32_t>(n_ctx - 1)});
      const Pair out = tw().zeros({2, C});
      cached_step(tw(), shaped, out, x, v, kc, vc, sl, ps, g, nh);
      EXPECT_TRUE(tw().close(out, tw().tol(1e-5),
                             std::string(shaped ? "shaped " : "") + "cached out, n_ctx " + std::to_string(n_ctx)));
    }
  }
}

// A row's bits do not depend on the other rows of its step: decode one row per sequence
// together, then again alone and in reverse order (rewriting a cache row with the same k and
// v changes nothing).
TEST_P(AttentionConformance, CachedRowsAreBatchInvariant) {
  const int64_t C = 72, S = 3;
  const int nh = 8;
  const std::vector<int32_t> len = {33, 9, 20};
  const int64_t n_ctx = 40;
  const Gains g = random_gains(tw(), nh);
  const Pair kc = tw().zeros({S, n_ctx, C}), vc = tw().zeros({S, n_ctx, C});
  for (bool shaped : {false, true}) {
    const int64_t W = shaped ? 2 * C : 3 * C;
    auto step = [&](const std::vector<int32_t>& slot, const std::vector<int32_t>& pos, const Pair& x, const Pair& v) {
      const int64_t M = static_cast<int64_t>(slot.size());
      const Pair sl = tw().ints({M}, slot), ps = tw().ints({M}, pos), out = tw().zeros({M, C});
      cached_step(tw(), shaped, out, x, v, kc, vc, sl, ps, g, nh);
      return out;
    };
    // Prefill every sequence's first len[s] rows in one step.
    std::vector<int32_t> slot, pos;
    for (int32_t s = 0; s < S; ++s)
      for (int32_t p = 0; p < len[s]; ++p) slot.push_back(s), pos.push_back(p);
    const int64_t M = static_cast<int64_t>(slot.size());
    step(slot, pos, tw().random({M, W}), tw().random({M, C}));
    // One new row each, together.
    const Pair x = tw().random({S, W}), v = tw().random({S, C});
    const Pair together = step({0, 1, 2}, len, x, v);
    for (int64_t s = 0; s < S; ++s) {
      auto row = [&](const Pair& p, int64_t i) { return Pair{p.ref.rows(i, i + 1), p.dev.rows(i, i + 1)}; };
      const Pair alone = step({static_cast<int32_t>(s)}, {len[s]}, row(x, s), row(v, s));
      EXPECT_TRUE(tw().dev_bits(alone) == tw().dev_bits(row(together, s)))
          << "row " << s << " alone gave other bits" << (shaped ? " (shaped)" : "");
    }
    const Pair xr = tw().values({S, W}, [&] {
      std::vector<double> h = tw().host_ref(x), r(h.size());
      for (int64_t s = 0; s < S; ++s) std::copy_n(h.begin() + s * W, W, r.begin() + (S - 1 - s) * W);
      return r;
    }());
    const Pair vr = tw().values({S, C}, [&] {
      std::vector<double> h = tw().host_ref(v), r(h.size());
      for (int64_t s = 0; s < S; ++s) std::copy_n(h.begin() + s * C, C, r.begin() + (S - 1 - s) * C);
      return r;
    }());
    const Pair reversed = step({2, 1, 0}, {len[2], len[1], len[0]}, xr, vr);
    const std::vector<unsigned char> a = tw().dev_bits(together), b = tw().dev_bits(reversed);
    const size_t row_bytes = a.size() / S;
    for (int64_t s = 0; s < S; ++s)
      EXPECT_TRUE(
          std::equal(a.begin() + s * row_bytes, a.begin() + (s + 1) * row_bytes, b.begin() + (S - 1 - s) * row_bytes))
          << "row " << s << " in reverse order gave other bits" << (shaped ? " (shaped)" : "");
  }
}

}  // namespace
}  // namespace mom::test
