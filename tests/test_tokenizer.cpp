// Tests for io/tokenizer: token-for-token agreement with two independent GPT-2 tokenizers
// (the gpt-3-encoder npm package in JavaScript, and tests/ref/tokenizer_ref.py written from
// OpenAI's encoder.py), invalid UTF-8, round trips, both file layouts and load errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "core/error.h"
#include "io/tokenizer.h"
#include "tests/support.h"

namespace {

using mom::io::Gpt2Tokenizer;
namespace fs = std::filesystem;
using Tokens = std::vector<int32_t>;

fs::path package_dir() { return fs::path(mom::test::source_dir()) / ".deps/node_modules/gpt-3-encoder"; }

// Hard cases, all valid UTF-8 and free of U+0085 and U+FEFF: JavaScript's \s disagrees with
// Python's `regex` on exactly those two (they are compared against Python only).
const std::vector<std::string>& valid_strings() {
  static const std::vector<std::string> strings = {
      "",
      "Hello world",
      "The quick brown fox jumps over the lazy dog.",
      "a",
      " ",
      "  ",
      "hello   world",
      "trailing spaces   ",
      "   leading spaces",
      "line one\nline two\n\n\nline five\n",
      "\n",
      "\n\n\n",
      "tabs\tand\t\tmore\t \t end\t",
      " \n \n  x",
      "\r\n\r\nwindows\r\n",
      "it's I'm you're we've they'll he'd don't",
      "IT'S I'M YOU'RE WE'VE 'S 'T 'Re 'LL",
      "'s'''s'''t' 'd ''ll",
      "rock 'n' roll",
      "café naïve résumé Ångström façade Ærø",
      "Größenwahn Straße ŒUVRE",
      "日本語のテキスト、漢字とかな。",
      "中文测试：你好，世界！",
      "한국어 텍스트",
      "Привет, мир! Ελληνικά עברית العربية हिन्दी",
      "mixed日本English한국어ελληνικά123",
      "0 1 12 123 1234 12345 123456789012345678901234567890",
      "3.14159 -42 +7 1e10 0x1F 1,000,000",
      "٣٤٥ ½ ⅓ Ⅻ ²³",
      "emoji 😀😃😄 👍🏽 🇺🇸🇯🇵",
      "family 👨‍👩‍👧‍👦 and 🏳️‍🌈 flags",
      "symbols ©®™ §¶ ←↑→↓ ∑∏∫ €£¥",
      "zero\u200bwidth\u200cjoiners\u200d",
      "nbsp\u00a0here\u3000ideographic\u2003em",
      "def f(x):\n    if x > 0:\n        return x * 2\n    return -x\n",
      "class A:\n\tdef __init__(self):\n\t\tself.a = {'k': [1, 2, 3]}\n",
      "    # indented comment\n        deeper = \"string with 'quotes'\"\n",
      "print(f\"{value!r:>10}\")  # type: ignore\n\n\n",
      "x=1;y=2;;z=x**y//3%4",
      "<|endoftext|>",
      "a<|endoftext|>b",
      "!!!???...,,,;;;",
      "https://example.com/path?query=1&b=2#frag",
      "\x01\x02\x7f control",
  };
  return strings;
}

std::string to_hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string hex;
  for (unsigned char c : bytes) {
    hex += digits[c >> 4];
    hex += digits[c & 15];
  }
  return hex;
}

bool have_node() { return mom::test::run("node --version").exit_code == 0; }

// Runs a reference script over `input` (JSON) and returns its token id arrays.
std::vector<Tokens> run_reference(const std::string& interpreter, const std::string& script,
                                  const nlohmann::json& input) {
  mom::test::ScratchDir dir("tokenizer-ref");
  mom::test::write_file(dir / "in.json", input.dump());
  const auto r =
      mom::test::run(interpreter + " " + mom::test::shell_quote(mom::test::source_dir() + "/tests/ref/" + script) +
                     " " + mom::test::shell_quote(package_dir().string()) + " " +
                     mom::test::shell_quote(dir / "in.json") + " " + mom::test::shell_quote(dir / "out.json"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  if (r.exit_code != 0) return {};
  return nlohmann::json::parse(mom::test::read_file(dir / "out.json")).get<std::vector<Tokens>>();
}

std::vector<Tokens> python_reference(const std::vector<std::string>& texts) {
  nlohmann::json hex = nlohmann::json::array();
  for (const auto& t : texts) hex.push_back(to_hex(t));
  return run_reference(mom::test::reference_python(), "tokenizer_ref.py", hex);
}

// Random byte strings that stress the matcher: raw bytes, bytes biased towards UTF-8 lead,
// continuation and space bytes, and valid UTF-8 drawn from many scripts.
std::vector<std::string> random_strings(size_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  auto pick = [&](size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); };
  const std::string biased = std::string(" \n\t'sSrevlmd0a\x80\xbf\xc2\xc3\xe2\xed\xf0\xf4\xff\xa0\x85") + '\0';
  const std::vector<char32_t> code_points = {'a',     'Z',      ' ',    ' ',    '\n',   '\t',   '\'',   's',    '7',
                                             '.',     0x85,     0xA0,   0xE9,   0x3A3,  0x5D0,  0x663,  0x2003, 0x2028,
                                             0x200D,  0x3000,   0x3042, 0x4E2D, 0xAC00, 0xFEFF, 0xFFFD, 0xFFFE, 0x1F600,
                                             0x1F3FD, 0x10FFFF, 0xE000, 0x2160, 0xBD,   0x1D7CE};
  std::vector<std::string> out;
  for (size_t i = 0; i < count; ++i) {
    const size_t len = pick(40);
    std::string s;
    const size_t kind = i % 3;
    for (size_t j = 0; j < len; ++j) {
      if (kind == 0) {
        s += static_cast<char>(pick(256));
      } else if (kind == 1) {
        s += biased[pick(biased.size())];
      } else {
        const char32_t c = code_points[pick(code_points.size())];
        if (c < 0x80) {
          s += static_cast<char>(c);
        } else if (c < 0x800) {
          s += static_cast<char>(0xC0 | (c >> 6));
          s += static_cast<char>(0x80 | (c & 0x3F));
        } else if (c < 0x10000) {
          s += static_cast<char>(0xE0 | (c >> 12));
          s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
          s += static_cast<char>(0x80 | (c & 0x3F));
        } else {
          s += static_cast<char>(0xF0 | (c >> 18));
          s += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
          s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
          s += static_cast<char>(0x80 | (c & 0x3F));
        }
      }
    }
    out.push_back(std::move(s));
  }
  return out;
}

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (fs::exists(package_dir() / "encoder.json")) {
      tokenizer_ = new Gpt2Tokenizer(Gpt2Tokenizer::load(package_dir()));
    }
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }
  void SetUp() override {
    if (!tokenizer_) {
      GTEST_SKIP() << "gpt-3-encoder npm package missing at " << package_dir() << "; run jobs/setup.sh";
    }
  }
  const Gpt2Tokenizer& tok() const { return *tokenizer_; }
  std::vector<Tokens> encode_all(const std::vector<std::string>& texts) const {
    std::vector<Tokens> out;
    for (const auto& t : texts) out.push_back(tok().encode(t));
    return out;
  }

  static Gpt2Tokenizer* tokenizer_;
};
Gpt2Tokenizer* TokenizerTest::tokenizer_ = nullptr;

TEST_F(TokenizerTest, KnownTokens) {
  EXPECT_EQ(tok().vocab_size(), 50257);
  EXPECT_EQ(tok().eot(), 50256);
  EXPECT_EQ(tok().decode_one(50256), "<|endoftext|>");
  EXPECT_EQ(tok().encode("Hello world"), (Tokens{15496, 995}));
  EXPECT_EQ(tok().encode(""), Tokens{});
  // The special string in text is ordinary text, as in OpenAI's encoder.py.
  const Tokens special = tok().encode("<|endoftext|>");
  EXPECT_GT(special.size(), 1u);
  EXPECT_EQ(tok().decode(special), "<|endoftext|>");
  EXPECT_THROW(tok().decode_one(50257), mom::UserError);
  EXPECT_THROW(tok().decode_one(-1), mom::UserError);
}

TEST_F(TokenizerTest, MatchesJavaScriptAndPythonReferences) {
  if (!have_node() || !fs::exists(package_dir() / "index.js")) {
    GTEST_SKIP() << "node or the gpt-3-encoder npm package is missing; run jobs/setup.sh";
  }
  const auto& texts = valid_strings();
  const auto ours = encode_all(texts);
  const auto js = run_reference("node", "tokenizer_js.js", nlohmann::json(texts));
  const auto py = python_reference(texts);
  ASSERT_EQ(js.size(), texts.size());
  ASSERT_EQ(py.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(ours[i], js[i]) << "JavaScript disagrees on " << nlohmann::json(texts[i]).dump();
    EXPECT_EQ(ours[i], py[i]) << "Python disagrees on " << nlohmann::json(texts[i]).dump();
    EXPECT_EQ(tok().decode(ours[i]), texts[i]);
  }
}

TEST_F(TokenizerTest, InvalidUtf8MatchesPythonSurrogateEscape) {
  const std::vector<std::string> texts = {
      "\x80",
      "\xff",
      "a\x80"
      "b",
      " \x80\x81 x",
      "abc \xff\xfe def",
      "\xe2\x82",       // truncated 3-byte sequence
      "\xe2\x82 euro",  // truncated, then space and letters
      "\xf0\x9f\x98",   // truncated emoji
      "x\xf0\x9f\x98y",
      "\xc0\xaf",                  // overlong '/'
      "\xe0\x80\xaf",              // overlong, 3 bytes
      "\xf0\x80\x80\xaf",          // overlong, 4 bytes
      "\xed\xa0\x80",              // encoded surrogate U+D800
      "\xed\xbf\xbf\xed\x9f\xbf",  // encoded surrogate, then valid U+D7FF
      "\xf4\x90\x80\x80",          // above U+10FFFF
      "\xf5\xf8\xfc\xfe",
      "caf\xe9 na\xefve",  // Latin-1 text
      "it\x92s",
      "'\x80s '\xffll",
      "123\x80"
      "456",
      " \xa0 \xc2\xa0 \x85 \xc2\x85 x",
      "\xef\xbb\xbf"
      "BOM \xef\xbb\xbf here",  // U+FEFF: not \s for Python's `regex`
      "next\xc2\x85line",       // U+0085: \s for Python's `regex`
      std::string("nul\0byte", 8),
  };
  const auto ours = encode_all(texts);
  const auto py = python_reference(texts);
  ASSERT_EQ(py.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(ours[i], py[i]) << "Python disagrees on bytes " << to_hex(texts[i]);
    EXPECT_EQ(tok().decode(ours[i]), texts[i]) << to_hex(texts[i]);
  }
}

TEST_F(TokenizerTest, RandomBytesRoundTripAndMatchPython) {
  const auto texts = random_strings(3000, 20240601);
  const auto ours = encode_all(texts);
  for (size_t i = 0; i < texts.size(); ++i) {
    ASSERT_EQ(tok().decode(ours[i]), texts[i]) << "round trip of bytes " << to_hex(texts[i]);
  }
  const auto py = python_reference(texts);
  ASSERT_EQ(py.size(), texts.size());
  size_t mismatches = 0;
  for (size_t i = 0; i < texts.size() && mismatches < 10; ++i) {
    if (ours[i] != py[i]) {
      ++mismatches;
      ADD_FAILURE() << "Python disagrees on bytes " << to_hex(texts[i]);
    }
  }
}

TEST_F(TokenizerTest, LongRunsAndConcurrentEncode) {
  // Long single pre-tokens exercise the heap merge; they must match the Python reference.
  const std::vector<std::string> texts = {std::string(5000, ' ') + "x", std::string(3000, 'a'), std::string(2000, '\n'),
                                          std::string(1500, '=')};
  EXPECT_EQ(encode_all(texts), python_reference(texts));

  std::string text;
  for (const auto& s : valid_strings()) text += s + "\n";
  for (const auto& s : random_strings(200, 7)) text += s;
  const Tokens expected = tok().encode(text);
  std::vector<Tokens> results(4);
  std::vector<std::thread> threads;
  for (auto& r : results) {
    threads.emplace_back([&] {
      for (int rep = 0; rep < 20; ++rep) r = tok().encode(text);
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : results) EXPECT_EQ(r, expected);
}

TEST_F(TokenizerTest, HuggingFaceLayoutLoadsTheSame) {
  mom::test::ScratchDir dir("tokenizer-hf");
  fs::copy_file(package_dir() / "encoder.json", dir.path() / "vocab.json");
  fs::copy_file(package_dir() / "vocab.bpe", dir.path() / "merges.txt");
  const Gpt2Tokenizer hf = Gpt2Tokenizer::load(dir.path());
  EXPECT_EQ(hf.vocab_file(), dir.path() / "vocab.json");
  EXPECT_EQ(hf.merges_file(), dir.path() / "merges.txt");
  EXPECT_EQ(tok().vocab_file(), package_dir() / "encoder.json");
  EXPECT_EQ(tok().merges_file(), package_dir() / "vocab.bpe");
  for (const auto& s : valid_strings()) EXPECT_EQ(hf.encode(s), tok().encode(s));
}

// From the files' contents (what a converted checkpoint carries): the same tokens, the names
// given kept for messages.
TEST_F(TokenizerTest, FromTextLoadsTheSameAndNamesItsOrigin) {
  const std::string vocab = mom::test::read_file(package_dir() / "encoder.json");
  const std::string merges = mom::test::read_file(package_dir() / "vocab.bpe");
  const Gpt2Tokenizer t =
      Gpt2Tokenizer::from_text(vocab, merges, "m.h5:tokenizer/vocab.json", "m.h5:tokenizer/merges.txt");
  EXPECT_EQ(t.vocab_file(), "m.h5:tokenizer/vocab.json");
  for (const auto& s : valid_strings()) EXPECT_EQ(t.encode(s), tok().encode(s));
  try {
    Gpt2Tokenizer::from_text("{", merges, "m.h5:tokenizer/vocab.json", "m.h5:tokenizer/merges.txt");
    ADD_FAILURE() << "a truncated vocabulary was accepted";
  } catch (const mom::UserError& e) {
    EXPECT_NE(std::string(e.what()).find("m.h5:tokenizer/vocab.json is malformed"), std::string::npos) << e.what();
  }
}

// Runs `body`, expecting a UserError whose message contains every one of `needles`.
template <typename F>
void expect_user_error(F body, const std::vector<std::string>& needles) {
  try {
    body();
    ADD_FAILURE() << "expected mom::UserError";
  } catch (const mom::UserError& e) {
    const std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << msg;
  }
}

TEST_F(TokenizerTest, MissingOrMalformedFilesThrowUserError) {
  mom::test::ScratchDir dir("tokenizer-bad");
  const fs::path d = dir.path();
  expect_user_error([&] { Gpt2Tokenizer::load(d); }, {d.string(), "vocab.json", "encoder.json", "jobs/setup.sh"});
  expect_user_error([&] { Gpt2Tokenizer::load(d / "nonexistent"); }, {"nonexistent"});

  fs::copy_file(package_dir() / "encoder.json", d / "vocab.json");
  expect_user_error([&] { Gpt2Tokenizer::load(d); }, {(d / "merges.txt").string(), "--tokenizer"});

  mom::test::write_file(d / "merges.txt", "#version: 0.2\nĠ t\nnot-two-tokens\n");
  expect_user_error([&] { Gpt2Tokenizer::load(d); }, {(d / "merges.txt").string(), "line 3"});

  mom::test::write_file(d / "merges.txt", "#version: 0.2\nĠ t\nzzzz qqqq\n");
  expect_user_error([&] { Gpt2Tokenizer::load(d); }, {(d / "merges.txt").string(), "line 3"});

  mom::test::write_file(d / "vocab.json", "{\"a\": 0, ");
  expect_user_error([&] { Gpt2Tokenizer::load(d); }, {(d / "vocab.json").string(), "JSON"});

  mom::test::write_file(d / "vocab.json", "{\"a\": 0, \"b\": 0}");
  expect_user_error([&] { Gpt2Tokenizer::load(d); }, {(d / "vocab.json").string(), "id"});
}

TEST(TokenizerDefaultDir, HonoursEnvironment) {
  const char* old = std::getenv("MOM_TOKENIZER_DIR");
  const std::string saved = old ? old : "";
  setenv("MOM_TOKENIZER_DIR", "/some/where", 1);
  EXPECT_EQ(Gpt2Tokenizer::default_dir(), fs::path("/some/where"));
  if (old) {
    setenv("MOM_TOKENIZER_DIR", saved.c_str(), 1);
  } else {
    unsetenv("MOM_TOKENIZER_DIR");
    // From the repository root the npm package folder is found relative to the current
    // directory.
    const fs::path cwd = fs::current_path();
    fs::current_path(mom::test::source_dir());
    const fs::path found = Gpt2Tokenizer::default_dir();
    fs::current_path(cwd);
    if (fs::exists(package_dir())) {
      EXPECT_TRUE(fs::equivalent(found, package_dir())) << found;
    }
  }
}

}  // namespace
