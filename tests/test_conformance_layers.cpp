// Conformance of the layer ops (LayerNorm, RMSNorm, GELU, ReLU, the GRU cell, the scalar gains,
// tanh and clamp): forward and backward against the CPU backend in f64 (tests/conformance.h
// explains the targets and the tolerances).
//
// Why these shapes: row counts 0 (an empty module), 1, 2, 31 and 33 (around a warp), 257 (past
// a 256-row block of the column sums) and 1024; widths 64, 72 (not a multiple of 32 lanes
// times a power of two) and 768 (GPT-2's). Every backward accumulates onto nonzero buffers, so
// an op that overwrites instead of adding fails. f32 tolerances are 1e-5 of the result's scale
// (the f32 reductions here are over at most 1024 terms); the ops without arithmetic beyond one
// rounding (ReLU, clamp) are held to 1e-6 or exactness.
#include <cmath>
#include <limits>

#include "tests/conformance.h"

namespace mom::test {
namespace {

MOM_CONFORMANCE_SUITE(LayersConformance);

const std::vector<int64_t> kRows = {0, 1, 2, 31, 33, 257, 1024};
const std::vector<int64_t> kCols = {64, 72, 768};

std::string at(int64_t N, int64_t C) { return " N=" + std::to_string(N) + " C=" + std::to_string(C); }

TEST_P(LayersConformance, LayerNormForwardBackward) {
  for (int64_t N : kRows)
    for (int64_t C : kCols) {
      tw().reset();
      // A nonzero mean, so that a one-pass E[x²] − m² variance would show.
      const Pair inp = tw().random({N, C}, -1.0, 3.0), w = tw().random({C}, 0.5, 1.5), b = tw().random({C});
      const Pair out = tw().zeros({N, C}), mean = tw().zeros({N}), rstd = tw().zeros({N});
      const Pair dout = tw().random({N, C}), dinp = tw().random({N, C}), dw = tw().random({C}), db = tw().random({C});
      tw().both([&](Backend& be, bool d) {
        be.layernorm_forward(out[d], mean[d], rstd[d], inp[d], w[d], b[d], 1e-5);
        be.layernorm_backward(dinp[d], dw[d], db[d], dout[d], inp[d], w[d], mean[d], rstd[d]);
      });
      EXPECT_TRUE(tw().close(out, tw().tol(1e-5), "layernorm_forward out" + at(N, C)));
      EXPECT_TRUE(tw().close(mean, tw().tol(1e-5), "layernorm_forward mean" + at(N, C)));
      EXPECT_TRUE(tw().close(rstd, tw().tol(1e-5), "layernorm_forward rstd" + at(N, C)));
      EXPECT_TRUE(tw().close(dinp, tw().tol(1e-5), "layernorm_backward dinp" + at(N, C)));
      EXPECT_TRUE(tw().close(dw, tw().tol(1e-5), "layernorm_backward dweight" + at(N, C)));
      EXPECT_TRUE(tw().close(db, tw().tol(1e-5), "layernorm_backward dbias" + at(N, C)));
    }
}

// dinp, dweight and dbias each optional. The CPU backend takes all three (its layers always
// pass them), so this runs on the CUDA targets only: the reference computes every gradient,
// the tested side only the ones given, and those must match.
TEST_P(LayersConformance, LayerNormOptionalGradients) {
  struct Given {
    bool dinp, dw, db;
  };
  for (int64_t N : {1, 33, 257})
    for (Given g : {Given{true, false, false}, Given{false, true, true}, Given{false, true, false},
                    Given{false, false, true}, Given{true, true, false}}) {
      tw().reset();
      const int64_t C = 72;
      const Pair inp = tw().random({N, C}), w = tw().random({C}, 0.5, 1.5), b = tw().random({C});
      const Pair out = tw().zeros({N, C}), mean = tw().zeros({N}), rstd = tw().zeros({N});
      const Pair dout = tw().random({N, C}), dinp = tw().random({N, C}), dw = tw().random({C}), db = tw().random({C});
      tw().both([&](Backend& be, bool d) {
        be.layernorm_forward(out[d], mean[d], rstd[d], inp[d], w[d], b[d], 1e-5);
        be.layernorm_backward(!d || g.dinp ? dinp[d] : Tensor{}, !d || g.dw ? dw[d] : Tensor{},
                              !d || g.db ? db[d] : Tensor{}, dout[d], inp[d], w[d], mean[d], rstd[d]);
      });
      const std::string which = " given dinp=" + std::to_string(g.dinp) + " dweight=" + std::to_string(g.dw) +
                                " dbias=" + std::to_string(g.db) + at(N, C);
      if (g.dinp) {
        EXPECT_TRUE(tw().close(dinp, tw().tol(1e-5), "layernorm_backward dinp" + which));
      }
      if (g.dw) {
        EXPECT_TRUE(tw().close(dw, tw().tol(1e-5), "layernorm_backward dweight" + which));
      }
      if (g.db) {
        EXPECT_TRUE(tw().close(db, tw().tol(1e-5), "layernorm_backward dbias" + which));
      }
    }
}

TEST_P(LayersConformance, RmsNormForwardBackward) {
  const double eps = 1e-5;
  for (int64_t N : kRows)
    for (int64_t C : kCols) {
      tw().reset();
      const Pair inp = tw().random({N, C}, -2.0, 2.0);
      if (N >= 2) {  // row 1 all zeros: ρ = 0, the backward's 0/0 term is dropped
        std::vector<double> x = tw().host_ref(inp);
        std::fill(x.begin() + C, x.begin() + 2 * C, 0.0);
        tw().set(inp, x);
      }
      const Pair w = tw().random({C}, 0.5, 1.5), out = tw().zeros({N, C}), rms = tw().zeros({N});
      const Pair dout = tw().random({N, C}), dinp = tw().random({N, C}), dw = tw().random({C});
      tw().both([&](Backend& be, bool d) {
        be.rmsnorm_forward(out[d], rms[d], inp[d], w[d], eps);
        be.rmsnorm_backward(dinp[d], dw[d], dout[d], inp[d], w[d], rms[d], eps);
      });
      EXPECT_TRUE(tw().close(out, tw().tol(1e-5), "rmsnorm_forward out" + at(N, C)));
      EXPECT_TRUE(tw().close(rms, tw().tol(1e-5), "rmsnorm_forward rms" + at(N, C)));
      EXPECT_TRUE(tw().close(dinp, tw().tol(1e-5), "rmsnorm_backward dinp" + at(N, C)));
      EXPECT_TRUE(tw().close(dw, tw().tol(1e-5), "rmsnorm_backward dweight" + at(N, C)));
    }
}

TEST_P(LayersConformance, RmsNormOptionalGradients) {
  for (int64_t N : {1, 33, 257})
    for (bool want_dinp : {true, false}) {
      tw().reset();
      const int64_t C = 72;
      const Pair inp = tw().random({N, C}), w = tw().random({C}, 0.5, 1.5), out = tw().zeros({N, C}),
                 rms = tw().zeros({N});
      const Pair dout = tw().random({N, C}), dinp = tw().random({N, C}), dw = tw().random({C});
      tw().both([&](Backend& be, bool d) {
        be.rmsnorm_forward(out[d], rms[d], inp[d], w[d], 1e-6);
        be.rmsnorm_backward(want_dinp ? dinp[d] : Tensor{}, want_dinp ? Tensor{} : dw[d], dout[d], inp[d], w[d], rms[d],
                            1e-6);
      });
      if (want_dinp) {
        EXPECT_TRUE(tw().close(dinp, tw().tol(1e-5), "rmsnorm_backward dinp alone" + at(N, C)));
      } else {
        EXPECT_TRUE(tw().close(dw, tw().tol(1e-5), "rmsnorm_backward dweight alone" + at(N, C)));
      }
    }
}

TEST_P(LayersConformance, GeluForwardBackward) {
  for (int64_t N : kRows)
    for (int64_t C : kCols) {
      tw().reset();
      const Pair inp = tw().random({N, C}, -5.0, 5.0), out = tw().zeros({N, C});
      const Pair dout = tw().random({N, C}), dinp = tw().random({N, C});
      tw().both([&](Backend& be, bool d) {
        be.gelu_forward(out[d], inp[d]);
        be.gelu_backward(dinp[d], inp[d], dout[d]);
      });
      EXPECT_TRUE(tw().close(out, tw().tol(1e-5), "gelu_forward" + at(N, C)));
      EXPECT_TRUE(tw().close(dinp, tw().tol(1e-5), "gelu_backward" + at(N, C)));
    }
}

TEST_P(LayersConformance, ReluForwardBackward) {
  for (int64_t N : kRows)
    for (int64_t C : {64, 72}) {
      tw().reset();
      const Pair inp = tw().random({N, C});
      if (N > 0) {  // exact zeros: ReLU passes no gradient at 0
        std::vector<double> x = tw().host_ref(inp);
        for (size_t i = 0; i < x.size(); i += 7) x[i] = 0.0;
        tw().set(inp, x);
      }
      const Pair out = tw().random({N, C}), dout = tw().random({N, C}), dinp = tw().random({N, C});
      tw().both([&](Backend& be, bool d) {
        be.relu_forward(out[d], inp[d]);
        be.relu_backward(dinp[d], inp[d], dout[d]);
      });
      EXPECT_TRUE(tw().close(out, 0.0, "relu_forward" + at(N, C)));  // no arithmetic: exact
      EXPECT_TRUE(tw().close(dinp, tw().tol(1e-6), "relu_backward" + at(N, C)));
    }
}

TEST_P(LayersConformance, GruCellForwardBackward) {
  for (int64_t N : kRows)
    for (int64_t r : {64, 72}) {
      tw().reset();
      const Pair gx = tw().random({N, 3 * r}, -2.0, 2.0), gh = tw().random({N, 3 * r}, -2.0, 2.0),
                 s = tw().random({N, r});
      const Pair s_new = tw().zeros({N, r}), gates = tw().zeros({N, 3 * r});
      const Pair ds_new = tw().random({N, r}), dgx = tw().random({N, 3 * r}), dgh = tw().random({N, 3 * r}),
                 ds = tw().random({N, r});
      tw().both([&](Backend& be, bool d) {
        be.gru_cell_forward(s_new[d], gates[d], gx[d], gh[d], s[d]);
        be.gru_cell_backward(dgx[d], dgh[d], ds[d], ds_new[d], gates[d], gh[d], s[d]);
      });
      const std::string w = " N=" + std::to_string(N) + " r=" + std::to_string(r);
      EXPECT_TRUE(tw().close(s_new, tw().tol(1e-5), "gru_cell_forward s_new" + w));
      EXPECT_TRUE(tw().close(gates, tw().tol(1e-5), "gru_cell_forward gates" + w));
      EXPECT_TRUE(tw().close(dgx, tw().tol(1e-5), "gru_cell_backward dgx" + w));
      EXPECT_TRUE(tw().close(dgh, tw().tol(1e-5), "gru_cell_backward dgh" + w));
      EXPECT_TRUE(tw().close(ds, tw().tol(1e-5), "gru_cell_backward ds" + w));
    }
}

TEST_P(LayersConformance, ScaledAccumulate) {
  for (int64_t N : kRows)
    for (int64_t C : kCols) {
      tw().reset();
      const Pair x = tw().random({N, C}), out = tw().random({N, C}), gain = tw().values({1}, {0.7});
      const Pair dout = tw().random({N, C}), dx = tw().random({N, C}), dgain = tw().values({1}, {0.3});
      tw().both([&](Backend& be, bool d) {
        be.scaled_accumulate(out[d], x[d], gain[d]);
        be.scaled_accumulate_backward(dx[d], dgain[d], dout[d], x[d], gain[d]);
      });
      EXPECT_TRUE(tw().close(out, tw().tol(1e-6), "scaled_accumulate" + at(N, C)));
      EXPECT_TRUE(tw().close(dx, tw().tol(1e-6), "scaled_accumulate_backward dx" + at(N, C)));
      EXPECT_TRUE(tw().close(dgain, tw().tol(1e-6), "scaled_accumulate_backward dgain" + at(N, C)));
    }
}

TEST_P(LayersConformance, ScaledAccumulateOptionalGradients) {
  for (int64_t N : {1, 257})
    for (bool want_dx : {true, false}) {
      tw().reset();
      const int64_t C = 72;
      const Pair x = tw().random({N, C}), gain = tw().values({1}, {-1.3});
      const Pair dout = tw().random({N, C}), dx = tw().random({N, C}), dgain = tw().values({1}, {0.3});
      tw().both([&](Backend& be, bool d) {
        be.scaled_accumulate_backward(want_dx ? dx[d] : Tensor{}, want_dx ? Tensor{} : dgain[d], dout[d], x[d],
                                      gain[d]);
      });
      if (want_dx) {
        EXPECT_TRUE(tw().close(dx, tw().tol(1e-6), "scaled_accumulate_backward dx alone" + at(N, C)));
      } else {
        EXPECT_TRUE(tw().close(dgain, tw().tol(1e-6), "scaled_accumulate_backward dgain alone" + at(N, C)));
      }
    }
}

TEST_P(LayersConformance, TanhForwardBackward) {
  for (int64_t N : kRows)
    for (int64_t C : {64, 72}) {
      tw().reset();
      const Pair inp = tw().random({N, C}, -4.0, 4.0), out = tw().zeros({N, C});
      const Pair dout = tw().random({N, C}), dinp = tw().random({N, C});
      tw().both([&](Backend& be, bool d) {
        be.tanh_forward(out[d], inp[d]);
        be.tanh_backward(dinp[d], out[d], dout[d]);
      });
      EXPECT_TRUE(tw().close(out, tw().tol(1e-5), "tanh_forward" + at(N, C)));
      EXPECT_TRUE(tw().close(dinp, tw().tol(1e-5), "tanh_backward" + at(N, C)));
    }
}

// Inputs at, just inside and just outside ±limit (float neighbours) and far beyond it. The
// limits are exact in float, so that both sides decide |x| ≤ limit on the same numbers.
TEST_P(LayersConformance, ClampAroundTheLimit) {
  for (double limit : {0.5, 2.0})
    for (int64_t N : {0, 1, 33, 257}) {
      tw().reset();
      const int64_t C = 72;
      const float lf = static_cast<float>(limit);
      const std::vector<double> special = {limit,
                                           -limit,
                                           std::nextafter(lf, 0.0f),
                                           std::nextafter(lf, 10.0f),
                                           std::nextafter(-lf, 0.0f),
                                           std::nextafter(-lf, -10.0f),
                                           0.0,
                                           -0.0,
                                           100.0,
                                           -100.0};
      const Pair inp = tw().random({N, C}, -3.0 * limit, 3.0 * limit);
      if (N > 0) {
        std::vector<double> x = tw().host_ref(inp);
        for (size_t i = 0; i < x.size(); ++i)
          if (i % 3 == 0) x[i] = special[(i / 3) % special.size()];
        tw().set(inp, x);
      }
      const Pair out = tw().random({N, C}), dout = tw().random({N, C}), dinp = tw().random({N, C});
      tw().both([&](Backend& be, bool d) {
        be.clamp_forward(out[d], inp[d], limit);
        be.clamp_backward(dinp[d], inp[d], dout[d], limit);
      });
      const std::string w = " limit=" + std::to_string(limit) + " N=" + std::to_string(N);
      EXPECT_TRUE(tw().close(out, 0.0, "clamp_forward" + w));  // a choice between two exact values
      EXPECT_TRUE(tw().close(dinp, tw().tol(1e-6), "clamp_backward" + w));
    }
}

// A NaN input stays NaN through clamp (std::min/std::max's semantics on the CPU) and passes no
// gradient (|NaN| ≤ limit is false). Checked on the tested side alone: close() rejects NaNs.
TEST_P(LayersConformance, ClampNaN) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const Pair inp = tw().values({4}, {nan, 0.25, nan, -3.0}), out = tw().zeros({4});
  const Pair dout = tw().values({4}, {1.0, 2.0, 3.0, 4.0}), dinp = tw().values({4}, {0.5, 0.5, 0.5, 0.5});
  tw().dev().clamp_forward(out.dev, inp.dev, 1.0);
  tw().dev().clamp_backward(dinp.dev, inp.dev, dout.dev, 1.0);
  const std::vector<double> o = tw().host_dev(out), g = tw().host_dev(dinp);
  EXPECT_TRUE(std::isnan(o[0]) && std::isnan(o[2])) << "clamp_forward of NaN gave " << o[0] << ", " << o[2];
  EXPECT_EQ(o[1], 0.25);
  EXPECT_EQ(o[3], -1.0);
  EXPECT_EQ(g, (std::vector<double>{0.5, 2.5, 0.5, 0.5}));
}

// The reductions (the norms' rows and column sums, the gain's gradient) give the same bits
// when run twice on the same inputs.
TEST_P(LayersConformance, ReductionsAreDeterministic) {
  const int64_t N = 1024, C = 768;
  const Pair inp = tw().random({N, C}), w = tw().random({C}, 0.5, 1.5), b = tw().random({C}),
             dout = tw().random({N, C}), gain = tw().values({1}, {0.7});
  const Pair out = tw().zeros({N, C}), mean = tw().zeros({N}), rstd = tw().zeros({N}), rms = tw().zeros({N});
  Backend& be = tw().dev();
  std::vector<std::vector<unsigned char>> first;
  for (int run = 0; run < 2; ++run) {
    const Pair dinp = tw().zeros({N, C}), dw = tw().zeros({C}), db = tw().zeros({C}), dg = tw().zeros({1}),
               rdinp = tw().zeros({N, C}), rdw = tw().zeros({C});
    be.layernorm_forward(out.dev, mean.dev, rstd.dev, inp.dev, w.dev, b.dev, 1e-5);
    be.layernorm_backward(dinp.dev, dw.dev, db.dev, dout.dev, inp.dev, w.dev, mean.dev, rstd.dev);
    be.rmsnorm_forward(out.dev, rms.dev, inp.dev, w.dev, 1e-5);
    be.rmsnorm_backward(rdinp.dev, rdw.dev, dout.dev, inp.dev, w.dev, rms.dev, 1e-5);
    be.scaled_accumulate_backward(Tensor{}, dg.dev, dout.dev, inp.dev, gain.dev);
    std::vector<std::vector<unsigned char>> bits;
    for (const Pair* p : {&mean, &rstd, &rms, &out, &dinp, &dw, &db, &dg, &rdinp, &rdw})
      bits.push_back(tw().dev_bits(*p));
    if (run == 0) {
      first = bits;
    } else {
      for (size_t i = 0; i < bits.size(); ++i) EXPECT_EQ(bits[i], first[i]) << "result " << i << " differs";
    }
  }
}

}  // namespace
}  // namespace mom::test
