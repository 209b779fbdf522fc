// KV-cached decoding for every block kind (Block::prepare_decode / decode, Gpt2::decode_step):
// - cached logits equal recomputing the whole prefix, position by position, for dense blocks,
//   SAS and SAS-P (both norms), MoM chunks (SKIP, top-2, GRU routers, weighted QKV), MoE
//   layers, AltUp (recycled, wide, Gemma coefficients, predicted input) and a mix of them;
// - several sequences decoded in one step, their rows interleaved and some in prefill chunks,
//   give each sequence exactly the logits it gets alone, bit for bit, in batch-invariant mode
//   (the property that lets a server batch requests without changing their text).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/gpt2.h"
#include "core/rng.h"
#include "io/config.h"

namespace mom {
namespace {

struct Case {
  const char* name;
  std::vector<std::string> overrides;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

const char* kMom = R"({"type":"mom","attn_modules":3,"ffn_modules":2,"skip":true,"steps":2,"top_k":2,"router":"gru",)"
                   R"("router_dim":16,"weighted_qkv":true})";
const char* kMoe = R"({"type":"moe","experts":3,"top_k":2})";

std::unique_ptr<Gpt2> make(const Case& c, uint64_t seed) {
  std::vector<std::string> o = {"model.vocab_size=97", "model.n_ctx=24", "model.n_embd=32", "model.n_head=4",
                                "train.seq_len=24"};
  o.insert(o.end(), c.overrides.begin(), c.overrides.end());
  auto m = std::make_unique<Gpt2>(io::load_config("", o).model, backend_for(Device::CPU));
  m->init_weights(seed);
  Rng rng(seed + 1);  // larger than init: the greedy choice and the routing are not flat
  for (size_t i = 0; i < m->params().size(); ++i) {
    float* p = m->params().param(i).ptr<float>();
    for (int64_t k = 0; k < m->params().param(i).numel(); ++k) p[k] += 0.2f * static_cast<float>(rng.normal());
  }
  return m;
}

class Decode : public ::testing::TestWithParam<Case> {};

TEST_P(Decode, CachedLogitsEqualFullRecompute) {
  auto m = make(GetParam(), 3);
  const std::vector<int32_t> seq = {5, 17, 3, 88, 42, 1, 0, 64, 9, 33, 70, 2};
  std::vector<float> full, cached;
  m->decode(seq.data(), 3, 0, cached);  // a prefill of three, then one token at a time
  for (size_t t = 3; t <= seq.size(); ++t) {
    if (t > 3) m->decode(seq.data() + t - 1, 1, static_cast<int>(t - 1), cached);
    m->last_logits(seq.data(), static_cast<int>(t), full);
    ASSERT_EQ(full.size(), cached.size());
    float worst = 0, scale = 0;
    for (size_t v = 0; v < full.size(); ++v)
      worst = std::max(worst, std::abs(full[v] - cached[v])), scale = std::max(scale, std::abs(full[v]));
    EXPECT_LE(worst, 1e-4f * scale) << "position " << t;
  }
}

// Three sequences, decoded alone, then together: their rows interleaved in each step, one of
// them prefilled in the same step as the others' single tokens.
TEST_P(Decode, BatchedSequencesEqualEachAloneBitForBit) {
  auto m = make(GetParam(), 5);
  Backend& be = m->backend();
  BatchInvariant invariant(be);
  const std::vector<std::vector<int32_t>> seqs = {{4, 8, 15, 16, 23, 42}, {7, 7, 7, 1, 2, 3}, {90, 1, 60, 2, 50}};
  // Alone: prefill 2, then one at a time; the logits after every position from 2 on.
  std::vector<std::vector<std::vector<float>>> alone(seqs.size());
  m->prepare_decode(3, 24);
  for (size_t s = 0; s < seqs.size(); ++s) {
    const int32_t slot = static_cast<int32_t>(s);
    std::vector<float> lg;
    const int32_t two_slots[2] = {slot, slot}, two_pos[2] = {0, 1};
    m->decode_step(seqs[s].data(), two_slots, two_pos, 2, {1}, lg);
    alone[s].push_back(lg);
    for (int32_t p = 2; p < static_cast<int32_t>(seqs[s].size()); ++p) {
      m->decode_step(&seqs[s][static_cast<size_t>(p)], &slot, &p, 1, {0}, lg);
      alone[s].push_back(lg);
    }
  }
  // Together, on fresh caches: step 0 prefills sequences 0 and 1 (two rows each, interleaved
  // per sequence), step 1 gives 0 and 1 their third token and prefills 2; then one row each.
  m->prepare_decode(3, 24);
  const int64_t V = m->config().vocab_size;
  auto expect_equal = [&](const std::vector<float>& got, int row, size_t s, size_t at, const char* when) {
    ASSERT_LT(at, alone[s].size());
    EXPECT_TRUE(std::equal(alone[s][at].begin(), alone[s][at].end(), got.begin() + row * V))
        << "sequence " << s << " at logits " << at << " (" << when << ")";
  };
  std::vector<float> lg;
  {
    const int32_t tok[4] = {seqs[0][0], seqs[0][1], seqs[1][0], seqs[1][1]};
    const int32_t slot[4] = {0, 0, 1, 1}, pos[4] = {0, 1, 0, 1};
    m->decode_step(tok, slot, pos, 4, {1, 3}, lg);
    expect_equal(lg, 0, 0, 0, "step 0");
    expect_equal(lg, 1, 1, 0, "step 0");
  }
  {
    const int32_t tok[4] = {seqs[2][0], seqs[1][2], seqs[2][1], seqs[0][2]};
    const int32_t slot[4] = {2, 1, 2, 0}, pos[4] = {0, 2, 1, 2};
    m->decode_step(tok, slot, pos, 4, {2, 1, 3}, lg);
    expect_equal(lg, 0, 2, 0, "step 1");
    expect_equal(lg, 1, 1, 1, "step 1");
    expect_equal(lg, 2, 0, 1, "step 1");
  }
  for (int32_t p = 3; p < 6; ++p) {
    std::vector<int32_t> tok, slot, pos;
    std::vector<int> want;
    for (size_t s = 0; s < seqs.size(); ++s) {
      const int32_t ps = s == 2 ? p - 1 : p;  // sequence 2 is one position behind
      if (ps >= static_cast<int32_t>(seqs[s].size())) continue;
      want.push_back(static_cast<int>(tok.size()));
      tok.push_back(seqs[s][static_cast<size_t>(ps)]), slot.push_back(static_cast<int32_t>(s)), pos.push_back(ps);
    }
    m->decode_step(tok.data(), slot.data(), pos.data(), static_cast<int>(tok.size()), want, lg);
    for (size_t r = 0; r < want.size(); ++r)
      expect_equal(lg, static_cast<int>(r), static_cast<size_t>(slot[r]), static_cast<size_t>(pos[r] - 1), "decode");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, Decode,
    ::testing::Values(
        Case{"Dense", {"model.n_layer=2"}}, Case{"Sas", {R"(model.stack=[{"type":"sas","count":2}])"}},
        Case{"SasPNoNorm", {R"(model.stack=[{"type":"sas_p","count":2,"norm":"none"}])"}},
        Case{"Mom", {std::string("model.stack=[") + kMom + "]"}},
        Case{"Moe", {std::string("model.stack=[") + kMoe + "]"}},
        Case{"AltUpRecycled", {"model.n_layer=2", R"(model.altup={"k":2})"}},
        Case{"AltUpWideGemmaPredicted",
             {R"(model.stack=[{"type":"sas_p","count":1},{"type":"dense","count":1}])",
              R"(model.altup={"k":3,"mode":"wide","layer_input":"predicted","coefficients":"input_dependent"})"}},
        Case{"MixedUnderAltUp",
             {std::string(R"(model.stack=[{"type":"dense","count":1},{"type":"sas","count":1},)") + kMom + "," + kMoe +
                  "]",
              R"(model.altup={"k":2})"}}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace mom
