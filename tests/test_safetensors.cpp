// Safetensors reader and writer: exact half -> float widening against numpy on every bit
// pattern, files written by an independent Python writer, our writer's layout as Hugging
// Face writes it, and one clear UserError naming the file for each kind of damaged header.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"
#include "tests/support.h"

namespace mom::test {
namespace {

namespace fs = std::filesystem;
using io::SafetensorsReader;
using io::StDType;

// Header length, header, data: the file layout, for crafting good and bad files.
std::string st_bytes(const std::string& header, const std::string& data) {
  const uint64_t n = header.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

std::string floats(std::initializer_list<float> v) {
  return std::string(reinterpret_cast<const char*>(std::data(v)), v.size() * sizeof(float));
}

// Opening `bytes` as a safetensors file must throw a UserError naming the file and `needle`.
void expect_bad(const ScratchDir& dir, const std::string& label, const std::string& bytes, const std::string& needle) {
  const std::string p = dir / (label + ".safetensors");
  write_file(p, bytes);
  try {
    SafetensorsReader r(p);
    ADD_FAILURE() << label << ": opened without error";
  } catch (const UserError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(p), std::string::npos) << label << ": message does not name the file: " << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << label << ": no '" << needle << "' in: " << msg;
  }
}

TEST(Safetensors, HalfWideningMatchesNumpyOnEveryBitPattern) {
  ScratchDir dir("st-dtypes");
  const std::string path = dir / "table.safetensors";
  const RunResult r = run(reference_python() + " " + shell_quote(source_dir() + "/tests/ref/hf_dtype_table.py") + " " +
                          shell_quote(path));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const SafetensorsReader st(path);
  for (const char* name : {"f16", "bf16"}) {
    const std::vector<float> got = st.read_f32(name);
    const std::vector<float> want = st.read_f32(std::string(name) + "_as_f32");
    ASSERT_EQ(got.size(), 65536u);
    ASSERT_EQ(want.size(), 65536u);
    int mismatches = 0;
    for (size_t i = 0; i < got.size(); ++i)
      if (std::bit_cast<uint32_t>(got[i]) != std::bit_cast<uint32_t>(want[i]) && ++mismatches <= 5)
        ADD_FAILURE() << name << " bits 0x" << std::hex << i << ": got 0x" << std::bit_cast<uint32_t>(got[i])
                      << ", numpy 0x" << std::bit_cast<uint32_t>(want[i]);
    EXPECT_EQ(mismatches, 0) << name;
  }
  EXPECT_EQ(st.info("f16").dtype, StDType::F16);
  EXPECT_EQ(st.info("f16").shape, (std::vector<int64_t>{256, 256}));
  EXPECT_EQ(st.info("empty").numel(), 0);
  EXPECT_TRUE(st.read_f32("empty").empty());
  EXPECT_TRUE(st.info("scalar").shape.empty());
  EXPECT_EQ(st.read_f32("scalar"), std::vector<float>{2.5f});
  const std::vector<float> grid = st.read_f32("grid");
  for (size_t i = 0; i < grid.size(); ++i) EXPECT_EQ(grid[i], static_cast<float>(i));
  EXPECT_EQ(st.metadata().at("format"), "pt");
  EXPECT_EQ(st.metadata().at("source"), "hf_dtype_table.py");
  EXPECT_EQ(st.names().size(), 7u);
}

TEST(Safetensors, HalfWideningLandmarks) {
  EXPECT_EQ(io::f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(io::f16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(io::f16_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(io::f16_to_f32(0x0400), std::ldexp(1.0f, -14));                // smallest normal
  EXPECT_EQ(io::f16_to_f32(0x0001), std::ldexp(1.0f, -24));                // smallest subnormal
  EXPECT_EQ(io::f16_to_f32(0x03ff), std::ldexp(1023.0f, -24));             // largest subnormal
  EXPECT_EQ(io::f16_to_f32(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::signbit(io::f16_to_f32(0x8000)) && io::f16_to_f32(0x8000) == 0.0f);
  EXPECT_EQ(io::f16_to_f32(0x7c00), INFINITY);
  EXPECT_EQ(io::f16_to_f32(0xfc00), -INFINITY);
  EXPECT_TRUE(std::isnan(io::f16_to_f32(0x7e00)));
  EXPECT_EQ(std::bit_cast<uint32_t>(io::f16_to_f32(0x7c01)), 0x7f802000u);  // NaN payload kept
  EXPECT_EQ(io::bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(io::bf16_to_f32(0x0001), std::bit_cast<float>(0x00010000u));  // subnormal
  EXPECT_EQ(io::bf16_to_f32(0xff80), -INFINITY);
  EXPECT_EQ(std::bit_cast<uint32_t>(io::bf16_to_f32(0x7fc1)), 0x7fc10000u);
}

TEST(Safetensors, WriterMatchesHuggingFaceLayoutAndReadsBack) {
  ScratchDir dir("st-writer");
  const std::string path = dir / "w.safetensors";
  const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  const std::vector<uint16_t> h = {0x3c00, 0x0001, 0xfc00};
  const std::vector<uint16_t> b = {0x3f80, 0x4000};
  const std::vector<io::StTensorView> tensors = {
      {"zeta", StDType::F32, {2, 3}, std::as_bytes(std::span(a))},
      {"alpha.half", StDType::F16, {3}, std::as_bytes(std::span(h))},
      {"Mid.bf", StDType::BF16, {1, 2}, std::as_bytes(std::span(b))},
      {"nothing", StDType::F32, {0}, {}},
  };
  io::write_safetensors(path, tensors, {{"format", "pt"}}, false);

  const SafetensorsReader st(path);
  EXPECT_EQ(st.names(), (std::vector<std::string>{"Mid.bf", "alpha.half", "nothing", "zeta"}));
  EXPECT_EQ(st.read_f32("zeta"), a);
  EXPECT_EQ(st.read_f32("alpha.half"), (std::vector<float>{1.0f, std::ldexp(1.0f, -24), -INFINITY}));
  EXPECT_EQ(st.read_f32("Mid.bf"), (std::vector<float>{1.0f, 2.0f}));
  EXPECT_EQ(st.info("Mid.bf").shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(st.metadata().at("format"), "pt");

  // Parsed by Python from the format's definition: header length a multiple of 8 and
  // space-padded, keys in sorted order, data packed from offset 0 in that order.
  const std::string check = R"PY(
import json, struct, sys
blob = open(sys.argv[1], "rb").read()
(n,) = struct.unpack("<Q", blob[:8])
text = blob[8:8 + n].decode()
assert n % 8 == 0, n
assert text == text.rstrip(" ") + " " * (len(text) - len(text.rstrip(" "))), text
h = json.loads(text)
keys = list(h)
assert keys == sorted(keys), keys
assert h["__metadata__"] == {"format": "pt"}
off = 0
for k in (k for k in keys if k != "__metadata__"):
    b, e = h[k]["data_offsets"]
    assert b == off, (k, b, off)
    off = e
assert 8 + n + off == len(blob)
assert struct.unpack("<6f", blob[8 + n + h["zeta"]["data_offsets"][0]:][:24]) == (1, 2, 3, 4, 5, 6)
print("layout ok")
)PY";
  write_file(dir / "check.py", check);
  const RunResult r = run(reference_python() + " " + shell_quote(dir / "check.py") + " " + shell_quote(path));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("layout ok"), std::string::npos) << r.output;
}

TEST(Safetensors, WriterRefusesToOverwriteUnlessForced) {
  ScratchDir dir("st-overwrite");
  const std::string path = dir / "keep.safetensors";
  write_file(path, "precious");
  const std::vector<float> a = {1};
  const std::vector<io::StTensorView> t = {{"a", StDType::F32, {1}, std::as_bytes(std::span(a))}};
  try {
    io::write_safetensors(path, t, {}, false);
    ADD_FAILURE() << "overwrote without being forced";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--force"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_file(path), "precious");
  io::write_safetensors(path, t, {}, true);
  EXPECT_EQ(SafetensorsReader(path).read_f32("a"), a);
  size_t files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path())) ++files;
  EXPECT_EQ(files, 1u) << "a temporary file was left behind";
}

TEST(Safetensors, DamagedHeadersAreNamedUserErrors) {
  ScratchDir dir("st-bad");
  const std::string eight = floats({1, 2});
  const auto one = [](const std::string& entry) { return R"({"t":)" + entry + "}"; };
  expect_bad(dir, "short", "abc", "too short");
  {
    std::string b = st_bytes(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", eight);
    const uint64_t huge = 1000000;
    std::memcpy(b.data(), &huge, 8);
    expect_bad(dir, "huge-header", b, "1000000-byte header");
  }
  expect_bad(dir, "not-json", st_bytes("{\"t\": [1, 2", eight), "not valid JSON");
  expect_bad(dir, "not-object", st_bytes("[1, 2]", eight), "not an object");
  expect_bad(dir, "no-dtype", st_bytes(one(R"({"shape":[2],"data_offsets":[0,8]})"), eight), "no \"dtype\"");
  expect_bad(dir, "no-shape", st_bytes(one(R"({"dtype":"F32","data_offsets":[0,8]})"), eight), "no \"shape\"");
  expect_bad(dir, "no-offsets", st_bytes(one(R"({"dtype":"F32","shape":[2]})"), eight), "no \"data_offsets\"");
  expect_bad(dir, "unknown-dtype", st_bytes(one(R"({"dtype":"F17","shape":[2],"data_offsets":[0,8]})"), eight),
             "unknown dtype 'F17'");
  expect_bad(dir, "out-of-range", st_bytes(one(R"({"dtype":"F32","shape":[4],"data_offsets":[0,16]})"), eight),
             "beyond the 8-byte data area");
  expect_bad(dir, "reversed", st_bytes(one(R"({"dtype":"F32","shape":[0],"data_offsets":[8,0]})"), eight),
             "begin > end");
  expect_bad(dir, "wrong-size", st_bytes(one(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), eight),
             "holds 8 bytes but its shape [3] of F32 needs 12");
  expect_bad(dir, "negative-dim", st_bytes(one(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), eight),
             "not a size");
  expect_bad(dir, "overlap",
             st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                      floats({1, 2, 3})),
             "overlap");
  expect_bad(dir, "bad-metadata", st_bytes(R"({"__metadata__":{"format":7}})", ""), "__metadata__");
  expect_bad(dir, "missing", "", "too short");
  {
    // A good file cut short: the declared data no longer fits.
    const std::string good = st_bytes(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})" "    ",
                                      floats({1, 2, 3}));
    expect_bad(dir, "truncated", good.substr(0, good.size() - 5), "beyond the");
  }
}

TEST(Safetensors, OtherDtypesOpenButDoNotConvert) {
  ScratchDir dir("st-other");
  const std::string p = dir / "mixed.safetensors";
  write_file(p, st_bytes(R"({"__metadata__":{"format":"pt"},"mask":{"dtype":"BOOL","shape":[2,2],"data_offsets":[0,4]},)"
                         R"("ids":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}})",
                         std::string("\1\0\1\1", 4) + std::string(12, '\0')));
  const SafetensorsReader st(p);
  EXPECT_EQ(st.info("mask").dtype, StDType::BOOL);
  EXPECT_EQ(st.bytes("mask").size(), 4u);
  try {
    st.read_f32("ids");
    ADD_FAILURE() << "converted an I64 tensor";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("'ids'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("I64"), std::string::npos) << e.what();
  }
  try {
    st.info("absent");
    ADD_FAILURE() << "found a tensor that is not there";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("'absent'"), std::string::npos) << e.what();
  }
  try {
    SafetensorsReader missing(dir / "no-such.safetensors");
    ADD_FAILURE() << "opened a missing file";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("no-such.safetensors"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mom::test
