// Tests for the HDF5 checkpoint file layer (io/checkpoint_file.h).
//
// Why these tests: a checkpoint is the only copy of days of training, so besides round
// trips they attack real files: truncation, single-bit flips across data and metadata,
// garbage, foreign HDF5 files. Every attack must end in mom::UserError (never a crash,
// never another exception, never HDF5 noise on stderr), or, for a flip that lands in
// unused bytes, in contents identical bit for bit. h5py checks the format independently.
#include "io/checkpoint_file.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cstring>
#include <random>
#include <sstream>

#include "core/error.h"
#include "tests/support.h"

namespace fs = std::filesystem;
using mom::UserError;
using mom::io::CheckpointReader;
using mom::io::CheckpointWriter;
using mom::io::DType;

namespace {

struct Tensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

int64_t elements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Tensor random_tensor(const std::string& name, std::vector<int64_t> shape, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  Tensor t{name, std::move(shape), {}};
  t.values.resize(static_cast<size_t>(elements(t.shape)));
  for (float& v : t.values) v = dist(gen);
  return t;
}

// Shapes of a tiny GPT-2 (V=64, T=16, C=8, L=2) as the trainer stores them, plus one
// tensor spanning several ~1 MiB chunks and one whose rows are over 1 MiB each.
std::vector<Tensor> sample_tensors() {
  const int64_t V = 64, T = 16, C = 8, L = 2;
  return {
      random_tensor("params/wte", {V, C}, 1),
      random_tensor("params/wpe", {T, C}, 2),
      random_tensor("params/blocks/attn_qkv_weight", {L, 3 * C, C}, 3),
      random_tensor("params/blocks/mlp_fc_bias", {L, 4 * C}, 4),
      random_tensor("params/ln_f_weight", {C}, 5),
      random_tensor("optimizer/adam_m/wte", {V, C}, 6),
      random_tensor("pool/experts", {600, 1024}, 7),
      random_tensor("pool/wide_rows", {2, 300, 1024}, 8),
  };
}

const std::string kConfig = R"({"n_layer":2,"n_embd":8,"vocab_size":64,"block_size":16})";
const std::vector<uint64_t> kRng = {0x0123456789abcdefULL, 0xfedcba9876543210ULL, 1, 0xffffffffffffffffULL};
const std::vector<double> kF64 = {1.0, -2.5, 1e-300, 3.141592653589793, 0.1, 7.0};

void write_sample(const fs::path& path, bool overwrite = false) {
  CheckpointWriter w(path, overwrite);
  for (const auto& t : sample_tensors()) w.write(t.name, t.shape, t.values.data());
  const std::vector<int64_t> f64_shape = {3, 2};
  w.write("extra/f64", f64_shape, kF64.data());
  w.set_attr("/", "config", kConfig);
  w.set_attr("/", "step", int64_t{1234});
  w.set_attr("/", "tokens_seen", int64_t{5'000'000'000});
  w.set_attr("/", "rng_state", std::span<const uint64_t>(kRng));
  w.set_attr("/", "loader_epoch", 3);
  w.set_attr("/", "loader_batch", 17);
  w.set_attr("/", "created_by", std::string("mom 0.1.0 (test)"));
  w.set_attr("/", "created_at", std::string("2024-05-01T12:34:56Z"));
  w.set_attr("/", "learning_rate", 6e-4);
  w.set_attr("/", "empty", std::string());
  w.set_attr("params", "note", std::string("group attribute"));
  const std::vector<int64_t> offsets = {-1, 0, 42};
  w.set_attr("pool/experts", "global_offsets", std::span<const int64_t>(offsets));
  w.commit();
}

// Everything a checkpoint holds, as bytes: equal snapshots mean identical contents. Reading
// goes through verify() and every typed getter, as a load does.
std::string snapshot(const fs::path& path) {
  const CheckpointReader r(path);
  r.verify();
  std::ostringstream os;
  for (const auto& name : r.datasets()) {
    const auto shape = r.shape(name);
    const std::string dtype = r.dtype(name);
    os << name << ' ' << dtype << ' ' << shape.size() << ':';
    std::string bytes;
    if (dtype == "float64") {
      std::vector<double> v(static_cast<size_t>(elements(shape)));
      r.read(name, shape, v.data());
      bytes.assign(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(double));
    } else {
      std::vector<float> v(static_cast<size_t>(elements(shape)));
      r.read(name, shape, v.data());
      bytes.assign(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
    }
    for (int64_t d : shape) os << d << ',';
    os << bytes << '\n';
  }
  for (const auto& name : r.attr_names("/")) os << name << ';';
  os << r.attr_string("/", "config") << r.attr_int("/", "step") << r.attr_int("/", "tokens_seen")
     << r.attr_int("/", "loader_epoch") << r.attr_int("/", "loader_batch") << r.attr_string("/", "created_by")
     << r.attr_string("/", "created_at") << r.attr_double("/", "learning_rate") << r.attr_string("/", "empty")
     << r.attr_string("params", "note");
  for (uint64_t v : r.attr_u64s("/", "rng_state")) os << v << ',';
  for (int64_t v : r.attr_i64s("pool/experts", "global_offsets")) os << v << ',';
  return os.str();
}

// Runs `load`; returns the UserError's message, or "" when it loaded. Any other exception
// escapes and fails the test.
template <typename F>
std::string user_error_of(F&& load) {
  try {
    load();
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

std::vector<fs::path> folder_entries(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST(CheckpointFile, RoundTripsTensorsAndAttributes) {
  mom::test::ScratchDir dir("ckpt");
  const fs::path path = dir / "model.h5";
  write_sample(path);
  EXPECT_EQ(folder_entries(dir.path()), std::vector<fs::path>{"model.h5"});  // no temp left

  const CheckpointReader r(path);
  std::vector<std::string> expected_names = {"extra/f64"};
  for (const auto& t : sample_tensors()) {
    expected_names.push_back(t.name);
    ASSERT_TRUE(r.has(t.name));
    EXPECT_EQ(r.shape(t.name), t.shape);
    EXPECT_EQ(r.dtype(t.name), "float32");
    std::vector<float> back(t.values.size());
    r.read(t.name, t.shape, back.data());
    EXPECT_EQ(0, std::memcmp(back.data(), t.values.data(), back.size() * sizeof(float))) << t.name;
  }
  std::sort(expected_names.begin(), expected_names.end());
  EXPECT_EQ(r.datasets(), expected_names);
  EXPECT_FALSE(r.has("params/nope"));
  EXPECT_FALSE(r.has("params"));              // a group, not a dataset
  EXPECT_FALSE(r.has("params/wte/below"));    // below a dataset
  EXPECT_TRUE(r.has("/params/wte"));          // a leading slash is tolerated

  std::vector<double> f64(kF64.size());
  const std::vector<int64_t> f64_shape = {3, 2};
  EXPECT_EQ(r.dtype("extra/f64"), "float64");
  r.read("extra/f64", f64_shape, f64.data());
  EXPECT_EQ(f64, kF64);

  EXPECT_EQ(r.attr_string("/", "format"), "mom-checkpoint");
  EXPECT_EQ(r.attr_int("/", "format_version"), 1);
  EXPECT_EQ(r.attr_string("/", "config"), kConfig);
  EXPECT_EQ(r.attr_int("/", "step"), 1234);
  EXPECT_EQ(r.attr_int("/", "tokens_seen"), 5'000'000'000);
  EXPECT_EQ(r.attr_u64s("/", "rng_state"), kRng);
  EXPECT_EQ(r.attr_int("/", "loader_epoch"), 3);
  EXPECT_EQ(r.attr_int("/", "loader_batch"), 17);
  EXPECT_EQ(r.attr_string("/", "created_by"), "mom 0.1.0 (test)");
  EXPECT_EQ(r.attr_string("/", "created_at"), "2024-05-01T12:34:56Z");
  EXPECT_EQ(r.attr_double("/", "learning_rate"), 6e-4);
  EXPECT_EQ(r.attr_double("/", "step"), 1234.0);  // integers widen to double
  EXPECT_EQ(r.attr_string("/", "empty"), "");
  EXPECT_EQ(r.attr_string("params", "note"), "group attribute");
  EXPECT_EQ(r.attr_i64s("pool/experts", "global_offsets"), (std::vector<int64_t>{-1, 0, 42}));
  EXPECT_TRUE(r.has_attr("/", "step"));
  EXPECT_FALSE(r.has_attr("/", "nope"));
  r.verify();
}

TEST(CheckpointFile, ReadRowsReturnsTheSlice) {
  mom::test::ScratchDir dir("ckpt");
  const fs::path path = dir / "model.h5";
  write_sample(path);
  const CheckpointReader r(path);
  const auto tensors = sample_tensors();
  for (const auto& t : tensors) {
    if (t.name != "pool/experts" && t.name != "pool/wide_rows" && t.name != "params/wte") continue;
    const int64_t rows = t.shape[0];
    const size_t row = t.values.size() / static_cast<size_t>(rows);
    for (auto [b, e] : std::vector<std::pair<int64_t, int64_t>>{{0, rows}, {1, rows}, {rows / 3, rows / 2 + 1}, {rows - 1, rows}, {2, 2}}) {
      std::vector<float> got(static_cast<size_t>(e - b) * row);
      r.read_rows(t.name, b, e, got.data());
      EXPECT_EQ(0, std::memcmp(got.data(), t.values.data() + static_cast<size_t>(b) * row, got.size() * sizeof(float)))
          << t.name << " rows " << b << ".." << e;
    }
  }
  std::vector<float> sink(8 * 1024);
  const std::string msg = user_error_of([&] { r.read_rows("pool/experts", 599, 601, sink.data()); });
  EXPECT_NE(msg.find("'pool/experts'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("600 rows"), std::string::npos) << msg;
}

TEST(CheckpointFile, RowRangesWrittenSeparatelyFormOneDataset) {
  // What sharded saving will do: create the global shape, each rank writes its rows.
  mom::test::ScratchDir dir("ckpt");
  const fs::path path = dir / "pool.h5";
  const Tensor t = random_tensor("pool/mlp_fc_weight", {10, 32, 8}, 9);
  const size_t row = 32 * 8;
  {
    CheckpointWriter w(path, false);
    w.create(t.name, t.shape, DType::F32);
    w.write_rows(t.name, 4, 10, t.values.data() + 4 * row);
    w.write_rows(t.name, 0, 4, t.values.data());
    EXPECT_THROW(w.write_rows(t.name, 9, 11, t.values.data()), std::invalid_argument);
    EXPECT_THROW(w.write(t.name, t.shape, t.values.data()), std::invalid_argument);  // twice
    w.commit();
    EXPECT_THROW(w.commit(), std::logic_error);
    EXPECT_THROW(w.set_attr("/", "step", 1), std::logic_error);
  }
  const CheckpointReader r(path);
  std::vector<float> back(t.values.size());
  r.read(t.name, t.shape, back.data());
  EXPECT_EQ(back, t.values);
}

TEST(CheckpointFile, WrongShapeMissingDatasetAndMissingAttributeNameTheProblem) {
  mom::test::ScratchDir dir("ckpt");
  const fs::path path = dir / "model.h5";
  write_sample(path);
  const CheckpointReader r(path);
  std::vector<float> sink(64 * 64);
  const std::vector<int64_t> wrong = {64, 16};
  std::string msg = user_error_of([&] { r.read("params/wte", wrong, sink.data()); });
  EXPECT_NE(msg.find("'params/wte'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[64, 8]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[64, 16]"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;

  msg = user_error_of([&] { r.read("params/blocks/missing", wrong, sink.data()); });
  EXPECT_NE(msg.find("'params/blocks/missing'"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;

  msg = user_error_of([&] { r.attr_int("/", "missing_attr"); });
  EXPECT_NE(msg.find("'missing_attr'"), std::string::npos) << msg;
  msg = user_error_of([&] { r.attr_int("/", "config"); });
  EXPECT_NE(msg.find("not an integer"), std::string::npos) << msg;
  msg = user_error_of([&] { r.attr_string("/", "step"); });
  EXPECT_NE(msg.find("not a string"), std::string::npos) << msg;
}

TEST(CheckpointFile, WriterRefusesExistingPathWithoutOverwrite) {
  mom::test::ScratchDir dir("ckpt");
  const fs::path path = dir / "model.h5";
  mom::test::write_file(path, "precious bytes");
  const std::string msg = user_error_of([&] { CheckpointWriter w(path, false); });
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("--force"), std::string::npos) << msg;
  EXPECT_EQ(mom::test::read_file(path), "precious bytes");
  EXPECT_EQ(folder_entries(dir.path()), std::vector<fs::path>{"model.h5"});

  write_sample(path, /*overwrite=*/true);
  EXPECT_EQ(CheckpointReader(path).attr_int("/", "step"), 1234);
}

TEST(CheckpointFile, AbandonedWriterLeavesOldCheckpointAndNoTempFile) {
  mom::test::ScratchDir dir("ckpt");
  const fs::path path = dir / "model.h5";
  write_sample(path);
  const std::string before_bytes = mom::test::read_file(path);
  const std::string before = snapshot(path);
  {
    CheckpointWriter w(path, true);
    EXPECT_TRUE(fs::exists(w.temp_path()));
    const std::vector<int64_t> shape = {2};
    const float junk[2] = {1, 2};
    w.write("params/wte", shape, junk);
    w.set_attr("/", "step", 99);
  }  // destroyed before commit, as when a save throws
  EXPECT_EQ(folder_entries(dir.path()), std::vector<fs::path>{"model.h5"});
  EXPECT_EQ(mom::test::read_file(path), before_bytes);
  EXPECT_EQ(snapshot(path), before);

  // Throwing out of a half-written save behaves the same.
  EXPECT_THROW(
      {
        CheckpointWriter w(path, true);
        w.set_attr("/", "step", 5);
        throw UserError("save interrupted");
      },
      UserError);
  EXPECT_EQ(folder_entries(dir.path()), std::vector<fs::path>{"model.h5"});
  EXPECT_EQ(mom::test::read_file(path), before_bytes);
}

TEST(CheckpointFile, WriterIntoMissingFolderIsAUserError) {
  mom::test::ScratchDir dir("ckpt");
  const std::string msg = user_error_of([&] { CheckpointWriter w(dir.path() / "no/such/dir/model.h5", false); });
  EXPECT_NE(msg.find("no/such/dir"), std::string::npos) << msg;
}

TEST(CheckpointFile, MissingGarbageAndForeignFilesAreUserErrors) {
  mom::test::ScratchDir dir("ckpt");
  std::string msg = user_error_of([&] { CheckpointReader r(dir / "absent.h5"); });
  EXPECT_NE(msg.find("absent.h5"), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;

  msg = user_error_of([&] { CheckpointReader r(dir.path()); });
  EXPECT_NE(msg.find("folder"), std::string::npos) << msg;

  std::mt19937 gen(7);
  std::string garbage(20000, '\0');
  for (char& c : garbage) c = static_cast<char>(gen());
  mom::test::write_file(dir / "garbage.h5", garbage);
  msg = user_error_of([&] { CheckpointReader r(dir / "garbage.h5"); });
  EXPECT_NE(msg.find("not an HDF5 file"), std::string::npos) << msg;

  // Valid HDF5 files from another program (h5py): without and with a foreign `format`.
  const auto made = mom::test::run(mom::test::reference_python() + " " +
                                   mom::test::shell_quote(mom::test::source_dir() + "/tests/ref/h5_checkpoint_summary.py") +
                                   " --make-foreign " + mom::test::shell_quote(dir.path().string()));
  ASSERT_EQ(made.exit_code, 0) << made.output;
  msg = user_error_of([&] { CheckpointReader r(dir / "plain.h5"); });
  EXPECT_NE(msg.find("not a mom checkpoint"), std::string::npos) << msg;
  EXPECT_NE(msg.find("plain.h5"), std::string::npos) << msg;
  msg = user_error_of([&] { CheckpointReader r(dir / "other-format.h5"); });
  EXPECT_NE(msg.find("not a mom checkpoint"), std::string::npos) << msg;
  EXPECT_NE(msg.find("something-else"), std::string::npos) << msg;
}

TEST(CheckpointFile, WrongFormatVersionIsAUserError) {
  mom::test::ScratchDir dir("ckpt");
  const fs::path path = dir / "future.h5";
  {
    CheckpointWriter w(path, false);
    w.set_attr("/", "format_version", 2);  // as a future mom would write
    w.commit();
  }
  const std::string msg = user_error_of([&] { CheckpointReader r(path); });
  EXPECT_NE(msg.find("format_version 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("upgrade mom"), std::string::npos) << msg;
}

TEST(CheckpointFile, TruncatedFilesAreUserErrors) {
  mom::test::ScratchDir dir("ckpt");
  const fs::path good = dir / "model.h5";
  write_sample(good);
  const auto size = fs::file_size(good);
  testing::internal::CaptureStderr();
  for (double fraction : {0.0, 0.1, 0.5, 0.9, 0.99}) {
    for (uintmax_t length : {static_cast<uintmax_t>(fraction * static_cast<double>(size)), size - 1}) {
      const fs::path cut = dir / "cut.h5";
      fs::copy_file(good, cut, fs::copy_options::overwrite_existing);
      fs::resize_file(cut, length);
      const std::string msg = user_error_of([&] { snapshot(cut); });
      EXPECT_NE(msg, "") << "truncated to " << length << " of " << size << " bytes loaded without error";
      EXPECT_NE(msg.find(cut.string()), std::string::npos) << msg;
    }
  }
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
}

TEST(CheckpointFile, BitFlipsAreDetectedOrHarmless) {
  mom::test::ScratchDir dir("ckpt");
  const fs::path good = dir / "model.h5";
  write_sample(good);
  const std::string original = mom::test::read_file(good);
  const std::string expected = snapshot(good);
  const size_t size = original.size();

  // Metadata (superblock, object headers, chunk indexes) sits mostly near the start and
  // the end of the file; data chunks fill the middle. Probe all three.
  std::vector<size_t> positions;
  for (size_t i = 0; i < 24; ++i) positions.push_back(i * 4096 / 24 + i % 7);
  for (size_t i = 0; i < 24; ++i) positions.push_back(4096 + i * (size - 8192) / 24);
  for (size_t i = 0; i < 16; ++i) positions.push_back(size - 4096 + i * 4096 / 16 + i % 5);

  int detected = 0;
  testing::internal::CaptureStderr();
  for (size_t k = 0; k < positions.size(); ++k) {
    const size_t pos = positions[k];
    std::string bytes = original;
    bytes[pos] = static_cast<char>(bytes[pos] ^ (1 << (k % 8)));
    const fs::path bad = dir / "flipped.h5";
    mom::test::write_file(bad, bytes);
    std::string got;
    const std::string msg = user_error_of([&] { got = snapshot(bad); });
    if (!msg.empty()) {
      ++detected;
      EXPECT_NE(msg.find(bad.string()), std::string::npos) << msg;
    } else {
      EXPECT_EQ(got, expected) << "flip at byte " << pos << " of " << size << " changed contents undetected";
    }
  }
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
  EXPECT_GT(detected, static_cast<int>(positions.size()) / 2) << detected << " of " << positions.size();
  std::cout << "[ info     ] " << detected << " of " << positions.size() << " bit flips detected, the rest landed in unused bytes\n";
}

TEST(CheckpointFile, H5pyReadsTheSameNumbers) {
  mom::test::ScratchDir dir("ckpt");
  const fs::path path = dir / "model.h5";
  write_sample(path);
  const auto res = mom::test::run(mom::test::reference_python() + " " +
                                  mom::test::shell_quote(mom::test::source_dir() + "/tests/ref/h5_checkpoint_summary.py") +
                                  " " + mom::test::shell_quote(path.string()));
  ASSERT_EQ(res.exit_code, 0) << res.output;
  const auto j = nlohmann::json::parse(res.output);

  EXPECT_EQ(j["attrs"]["format"], "mom-checkpoint");
  EXPECT_EQ(j["attrs"]["format_version"], 1);
  EXPECT_EQ(j["attrs"]["config"], kConfig);
  EXPECT_EQ(j["attrs"]["step"], 1234);
  EXPECT_EQ(j["attrs"]["tokens_seen"], 5'000'000'000);
  EXPECT_EQ(j["attrs"]["rng_state"].get<std::vector<uint64_t>>(), kRng);
  EXPECT_EQ(j["attrs"]["created_at"], "2024-05-01T12:34:56Z");
  EXPECT_EQ(j["attrs"]["learning_rate"].get<double>(), 6e-4);
  EXPECT_EQ(j["attrs"]["empty"], "");

  for (const auto& t : sample_tensors()) {
    const auto& d = j["datasets"][t.name];
    ASSERT_TRUE(d.is_object()) << t.name;
    EXPECT_EQ(d["shape"].get<std::vector<int64_t>>(), t.shape);
    EXPECT_EQ(d["dtype"], "float32");
    EXPECT_TRUE(d["fletcher32"].get<bool>()) << t.name;
    const auto values = d["values"].get<std::vector<double>>();
    ASSERT_EQ(values.size(), t.values.size());
    for (size_t i = 0; i < values.size(); ++i)
      ASSERT_EQ(values[i], static_cast<double>(t.values[i])) << t.name << "[" << i << "]";
  }
  // Chunks: equal slabs of whole rows up to ~1 MiB; a row over 1 MiB is split along the
  // next axis; a small tensor is one chunk.
  EXPECT_EQ(j["datasets"]["pool/experts"]["chunks"].get<std::vector<int64_t>>(), (std::vector<int64_t>{200, 1024}));
  EXPECT_EQ(j["datasets"]["pool/wide_rows"]["chunks"].get<std::vector<int64_t>>(), (std::vector<int64_t>{1, 150, 1024}));
  EXPECT_EQ(j["datasets"]["params/wte"]["chunks"].get<std::vector<int64_t>>(), (std::vector<int64_t>{64, 8}));
  EXPECT_EQ(j["datasets"]["extra/f64"]["dtype"], "float64");
  EXPECT_EQ(j["datasets"]["extra/f64"]["values"].get<std::vector<double>>(), kF64);
}

TEST(CheckpointFile, InspectListsAttributesAndTree) {
  mom::test::ScratchDir dir("ckpt");
  const fs::path path = dir / "model.h5";
  write_sample(path);
  std::ostringstream out;
  mom::io::inspect_checkpoint(path, out, /*verify=*/true);
  const std::string text = out.str();
  for (const char* needle : {"format = \"mom-checkpoint\"", "step = 1234", "\"n_embd\": 8",
                             "rng_state = [81985529216486895, 18364758544493064720, 1, 18446744073709551615]",
                             "params/", "  blocks/", "attn_qkv_weight", "[2, 24, 8]", "float32", "float64",
                             "384 elements", "learning_rate = 6e-04", "@note = \"group attribute\"", "@global_offsets = [-1, 0, 42]",
                             "total: 9 datasets", "verify: every dataset"})
    EXPECT_NE(text.find(needle), std::string::npos) << needle << "\n" << text;

  // A damaged data chunk passes the listing but fails --verify.
  std::string bytes = mom::test::read_file(path);
  bytes[bytes.size() / 2] ^= 0x10;
  mom::test::write_file(dir / "bad.h5", bytes);
  std::ostringstream ignored;
  const std::string msg = user_error_of([&] { mom::io::inspect_checkpoint(dir / "bad.h5", ignored, true); });
  EXPECT_NE(msg.find("bad.h5"), std::string::npos) << msg;
}
