// Conformance of the linear layer's backward and batch-invariant forward, the fused tied
// head with cross-entropy, AdamW and the embeddings (tests/conformance.h explains the
// targets and the tolerances; matmul_forward's plain shapes are in
// test_conformance_elementwise.cpp).
//
// Shapes are the ones that break tiled or chunked kernels: row counts 0, 1, 2, 31, 33 and
// 257 around warp and tile sizes, widths 64 / 72 / 768 (72 is no multiple of 16 or 32), GPT-2's
// vocabulary 50257 (odd: no row of the logits is aligned), and scratch smaller than the rows
// so that the head runs in several chunks.
#include <string>
#include <vector>

#include "tests/conformance.h"

namespace mom::test {
namespace {

MOM_CONFORMANCE_SUITE(MatmulConformance);

Pair rows_of(const Pair& p, int64_t begin, int64_t end) { return {p.ref.rows(begin, end), p.dev.rows(begin, end)}; }

// A second pair holding the same values (determinism checks run one op twice).
Pair same_values(Twin& tw, const Pair& p) { return tw.values(p.shape(), tw.host_ref(p)); }

// dinp += dout·W, dweight += doutᵀ·inp, dbias += Σ dout, into gradients that already hold
// values (the += contract), all together and with some of them empty.
TEST_P(MatmulConformance, Backward) {
  for (int64_t N : {0, 1, 2, 31, 33, 257}) {
    for (auto [IC, OC] : {std::pair<int64_t, int64_t>{64, 72}, {72, 64}, {768, 96}}) {
      tw().reset();
      const Pair inp = tw().random({N, IC}), w = tw().random({OC, IC}, -0.1, 0.1), dout = tw().random({N, OC});
      const Pair dinp = tw().random({N, IC}), dw = tw().random({OC, IC}), db = tw().random({OC});
      const Pair dinp_only = same_values(tw(), dinp), dw_only = same_values(tw(), dw), db_only = same_values(tw(), db);
      const Pair dw_again = same_values(tw(), dw), db_again = same_values(tw(), db);
      tw().both([&](Backend& be, bool d) {
        be.matmul_backward(dinp[d], dw[d], db[d], dout[d], inp[d], w[d]);
        be.matmul_backward(dinp_only[d], Tensor{}, Tensor{}, dout[d], inp[d], w[d]);
        be.matmul_backward(Tensor{}, dw_only[d], Tensor{}, dout[d], inp[d], w[d]);
        be.matmul_backward(Tensor{}, Tensor{}, db_only[d], dout[d], inp[d], w[d]);
        be.matmul_backward(Tensor{}, dw_again[d], db_again[d], dout[d], inp[d], w[d]);
      });
      const std::string at = " N=" + std::to_string(N) + " IC=" + std::to_string(IC) + " OC=" + std::to_string(OC);
      EXPECT_TRUE(tw().close(dinp, tw().tol(1e-5), "matmul_backward dinp" + at));
      EXPECT_TRUE(tw().close(dw, tw().tol(1e-5), "matmul_backward dweight" + at));
      EXPECT_TRUE(tw().close(db, tw().tol(1e-5), "matmul_backward dbias" + at));
      EXPECT_TRUE(tw().close(dinp_only, tw().tol(1e-5), "matmul_backward dinp alone" + at));
      EXPECT_TRUE(tw().close(dw_only, tw().tol(1e-5), "matmul_backward dweight alone" + at));
      EXPECT_TRUE(tw().close(db_only, tw().tol(1e-5), "matmul_backward dbias alone" + at));
      EXPECT_EQ(tw().dev_bits(dw), tw().dev_bits(dw_again)) << "dweight not deterministic" << at;
      EXPECT_EQ(tw().dev_bits(db), tw().dev_bits(db_again)) << "dbias not deterministic" << at;
      EXPECT_EQ(tw().dev_bits(dinp), tw().dev_bits(dinp_only)) << "dinp not deterministic" << at;
    }
  }
}

// In batch-invariant mode a row's output has the same bits whether it is computed alone or
// among 1, 2, 31, 33 or 257 rows (decoding's batches), and stays within tolerance of the
// reference. The last shape is the tied head's: OC = 50257.
TEST_P(MatmulConformance, BatchInvariantRows) {
  tw().reserve(size_t{128} << 20);
  BatchInvariant on_ref(tw().ref()), on_dev(tw().dev());
  struct Case {
    int64_t IC, OC, max_rows;
  };
  for (const Case k : {Case{64, 72, 257}, Case{72, 64, 257}, Case{768, 96, 257}, Case{64, 50257, 33}}) {
    for (const bool with_bias : {false, true}) {
      tw().reset();
      const Pair x = tw().random({k.max_rows, k.IC}), w = tw().random({k.OC, k.IC}, -0.1, 0.1);
      const Pair b = with_bias ? tw().random({k.OC}) : Twin::none();
      const Pair full = tw().zeros({k.max_rows, k.OC});
      tw().both([&](Backend& be, bool d) { be.matmul_forward(full[d], x[d], w[d], b[d]); });
      const std::string at =
          " IC=" + std::to_string(k.IC) + " OC=" + std::to_string(k.OC) + (with_bias ? " with bias" : " without bias");
      EXPECT_TRUE(tw().close(full, tw().tol(1e-5), "batch-invariant matmul_forward" + at));
      for (const int64_t N : {1, 2, 31, 33, 257}) {
        if (N > k.max_rows) continue;
        const Pair part = tw().zeros({N, k.OC});
        tw().both([&](Backend& be, bool d) { be.matmul_forward(part[d], rows_of(x, 0, N)[d], w[d], b[d]); });
        EXPECT_TRUE(
            tw().close(part, tw().tol(1e-5), "batch-invariant matmul_forward of " + std::to_string(N) + " rows" + at));
        EXPECT_EQ(tw().dev_bits(part), tw().dev_bits(rows_of(full, 0, N)))
            << "rows 0.." << N - 1 << " among " << N << " rows differ from the same rows among " << k.max_rows << at;
        for (const int64_t r : {int64_t{0}, N / 2, N - 1}) {
          const Pair alone = tw().zeros({1, k.OC});
          tw().dev().matmul_forward(alone.dev, x.dev.rows(r, r + 1), w.dev, b.dev);
          EXPECT_EQ(tw().dev_bits(alone), tw().dev_bits(rows_of(full, r, r + 1)))
              << "row " << r << " computed alone differs from the same row among " << k.max_rows << at;
        }
      }
    }
  }
}

// The fused head: losses alone and with gradients, at GPT-2's vocabulary and at small ones,
// with scratch for fewer rows than there are (several chunks, down to one row each) and for
// more. dx starts non-zero (+=); targets include 0, V−1 and repeats.
TEST_P(MatmulConformance, XentHead) {
  tw().reserve(size_t{128} << 20);
  struct Case {
    int64_t N, C, V, scratch_rows;
  };
  for (const Case k : {Case{37, 64, 50257, 8}, Case{5, 72, 50257, 64}, Case{33, 72, 101, 1}, Case{257, 64, 97, 40},
                       Case{31, 768, 1000, 31}, Case{0, 64, 50257, 4}}) {
    tw().reset();
    const std::string at = " N=" + std::to_string(k.N) + " C=" + std::to_string(k.C) + " V=" + std::to_string(k.V) +
                           " scratch rows=" + std::to_string(k.scratch_rows);
    const Pair x = tw().random({k.N, k.C}), wte = tw().random({k.V, k.C}, -0.5, 0.5);
    std::vector<int32_t> t(static_cast<size_t>(k.N));
    for (int64_t n = 0; n < k.N; ++n) t[static_cast<size_t>(n)] = static_cast<int32_t>((n * 7919 + 13) % k.V);
    if (k.N >= 4) t[0] = 0, t[1] = static_cast<int32_t>(k.V - 1), t[3] = t[2];
    const Pair targets = tw().ints({k.N}, t);
    const Pair scratch = tw().zeros({k.scratch_rows, k.V});
    const Pair losses = tw().zeros({k.N}), losses_g = tw().zeros({k.N}), losses_again = tw().zeros({k.N});
    const Pair dx = tw().random({k.N, k.C}, -0.01, 0.01), dwte = tw().zeros({k.V, k.C});
    const double g = k.N ? 1.0 / static_cast<double>(k.N) : 1.0;
    tw().both([&](Backend& be, bool d) {
      be.xent_head(losses[d], Tensor{}, Tensor{}, x[d], wte[d], targets[d], 0.0, scratch[d]);
      be.xent_head(losses_g[d], dx[d], dwte[d], x[d], wte[d], targets[d], g, scratch[d]);
      be.xent_head(losses_again[d], Tensor{}, Tensor{}, x[d], wte[d], targets[d], 0.0, scratch[d]);
    });
    EXPECT_TRUE(tw().close(losses, tw().tol(1e-5), "xent_head losses" + at));
    EXPECT_TRUE(tw().close(losses_g, tw().tol(1e-5), "xent_head losses with gradients" + at));
    EXPECT_TRUE(tw().close(dx, tw().tol(1e-5), "xent_head dx" + at));
    EXPECT_TRUE(tw().close(dwte, tw().tol(1e-5), "xent_head dwte" + at));
    EXPECT_EQ(tw().dev_bits(losses), tw().dev_bits(losses_again)) << "losses not deterministic" << at;
    EXPECT_EQ(tw().dev_bits(losses), tw().dev_bits(losses_g)) << "losses differ with gradients on" << at;
  }
}

// Several AdamW steps with fresh gradients each: parameters small and lr large enough that the
// update, not the parameter, dominates what is compared.
TEST_P(MatmulConformance, AdamW) {
  for (int64_t n : {1, 1000, 4097}) {
    tw().reset();
    const Pair p = tw().random({n}, -0.01, 0.01), m = tw().zeros({n}), v = tw().zeros({n});
    for (int64_t step = 1; step <= 5; ++step) {
      const Pair grad = tw().random({n}, -0.1, 0.1);
      tw().both([&](Backend& be, bool d) { be.adamw(p[d], grad[d], m[d], v[d], 1e-2, 0.9, 0.95, 1e-8, 0.1, step); });
      const std::string at = " n=" + std::to_string(n) + " step " + std::to_string(step);
      EXPECT_TRUE(tw().close(p, tw().tol(1e-5), "adamw param" + at));
      EXPECT_TRUE(tw().close(m, tw().tol(1e-5), "adamw m" + at));
      EXPECT_TRUE(tw().close(v, tw().tol(1e-5), "adamw v" + at));
    }
  }
  const Pair empty = tw().zeros({0});
  tw().both(
      [&](Backend& be, bool d) { be.adamw(empty[d], empty[d], empty[d], empty[d], 1e-2, 0.9, 0.95, 1e-8, 0.1, 1); });
}

// Forward gathers and backward sums with heavily repeated tokens (17 distinct ids, plus 0 and
// V−1), sequence lengths around warp and block sizes, and a position offset (decoding's pos0).
TEST_P(MatmulConformance, Embedding) {
  const int64_t V = 1000;
  for (const int T : {1, 2, 31, 33, 257, 1024}) {
    for (const int64_t C : {64, 72, 768}) {
      tw().reset();
      const int64_t B = T >= 1024 ? 2 : 3, N = B * T;
      const int pos0 = T % 2 ? 3 : 0;
      std::vector<int32_t> tok(static_cast<size_t>(N));
      for (int64_t n = 0; n < N; ++n) tok[static_cast<size_t>(n)] = static_cast<int32_t>((n * n + 5 * n) % 17);
      tok[0] = static_cast<int32_t>(V - 1);
      if (N > 2) tok[static_cast<size_t>(N - 1)] = 0;
      const Pair tokens = tw().ints({N}, tok);
      const Pair wte = tw().random({V, C}), wpe = tw().random({T + pos0, C});
      const Pair out = tw().zeros({N, C}), dout = tw().random({N, C});
      const Pair dwte = tw().random({V, C}, -0.1, 0.1), dwpe = tw().random({T + pos0, C}, -0.1, 0.1);
      tw().both([&](Backend& be, bool d) {
        be.embedding_forward(out[d], tokens[d], wte[d], wpe[d], T, pos0);
        be.embedding_backward(dwte[d], dwpe[d], dout[d], tokens[d], T, pos0);
      });
      const std::string at = " T=" + std::to_string(T) + " C=" + std::to_string(C) + " pos0=" + std::to_string(pos0);
      EXPECT_TRUE(tw().close(out, tw().tol(1e-6), "embedding_forward" + at));
      EXPECT_TRUE(tw().close(dwte, tw().tol(1e-5), "embedding_backward dwte" + at));
      EXPECT_TRUE(tw().close(dwpe, tw().tol(1e-5), "embedding_backward dwpe" + at));
    }
  }
}

// No rows: nothing is written and nothing fails; a token outside the vocabulary is refused.
TEST_P(MatmulConformance, EmbeddingEdgeCases) {
  const int64_t V = 50, C = 72;
  const Pair wte = tw().random({V, C}), wpe = tw().random({4, C});
  const Pair tokens = tw().ints({0}, {}), out = tw().zeros({0, C}), dout = tw().zeros({0, C});
  const Pair dwte = tw().random({V, C}), dwpe = tw().random({4, C});
  const Pair dwte0 = same_values(tw(), dwte), dwpe0 = same_values(tw(), dwpe);
  tw().both([&](Backend& be, bool d) {
    be.embedding_forward(out[d], tokens[d], wte[d], wpe[d], 4, 0);
    be.embedding_backward(dwte[d], dwpe[d], dout[d], tokens[d], 4, 0);
  });
  EXPECT_EQ(tw().dev_bits(dwte), tw().dev_bits(dwte0)) << "embedding_backward with no rows changed dwte";
  EXPECT_EQ(tw().dev_bits(dwpe), tw().dev_bits(dwpe0)) << "embedding_backward with no rows changed dwpe";

  const Pair bad = tw().ints({3}, {1, static_cast<int32_t>(V), 2}), out3 = tw().zeros({3, C});
  EXPECT_THROW(tw().dev().embedding_forward(out3.dev, bad.dev, wte.dev, wpe.dev, 3, 0), UserError);
  // The backend is usable after the refusal.
  const Pair good = tw().ints({3}, {1, 0, 2});
  tw().both([&](Backend& be, bool d) { be.embedding_forward(out3[d], good[d], wte[d], wpe[d], 3, 0); });
  EXPECT_TRUE(tw().close(out3, tw().tol(1e-6), "embedding_forward after a refused call"));
}

}  // namespace
}  // namespace mom::test
