// Corpus preparation. See corpus.h for the contract and docs/data.md for the split rule.
//
// Why chunks: documents are read and tokenised in parallel a chunk (a few MB of source) at
// a time and then appended in sorted order, which keeps memory bounded for large corpora
// while the output stays independent of thread timing.
#include "io/corpus.h"

#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "io/shards.h"
#include "io/tokenizer.h"

namespace mom::io {

namespace fs = std::filesystem;

namespace {

constexpr uint64_t kChunkBytes = 16ull << 20;

struct Document {
  fs::path path;
  std::string rel;  // path relative to its input root: the key of the split
  uint64_t size = 0;
  double split_key = 0;  // uniform in [0, 1): the document is val when below val_fraction
  bool val = false;
};

// Built by appending: GCC 12 at -O3 gives a false -Wrestrict for "'" + std::string.
std::string quoted(const fs::path& p) {
  std::string q(1, '\'');
  q += p.string();
  q += '\'';
  return q;
}

// FNV-1a over the seed and the relative path, then splitmix64's finaliser so that nearby
// paths land far apart. Fully specified, so the split is the same on every platform.
double split_key(const std::string& rel, uint64_t seed) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto eat = [&h](unsigned char c) { h = (h ^ c) * 0x100000001b3ull; };
  for (int i = 0; i < 8; ++i) eat(static_cast<unsigned char>(seed >> (8 * i)));
  for (char c : rel) eat(static_cast<unsigned char>(c));
  h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
  h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
  h ^= h >> 31;
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

// 0 when the size cannot be read: the file is then skipped when it cannot be read either.
uint64_t size_or_zero(uint64_t size, const std::error_code& ec) { return ec ? 0 : size; }

bool has_suffix(const fs::path& p, const std::vector<std::string>& suffixes) {
  if (suffixes.empty()) return true;
  const std::string name = p.filename().string();
  return std::any_of(suffixes.begin(), suffixes.end(),
                     [&name](const std::string& s) { return name.ends_with(s); });
}

// Every matching file under the inputs: inputs in the order given, files within a folder
// sorted by relative path; a file reached twice is kept once.
std::vector<Document> find_documents(const PrepareOptions& o) {
  std::vector<Document> docs;
  std::set<fs::path> seen;
  auto add = [&](const fs::path& path, std::string rel, uint64_t size) {
    std::error_code ec;
    fs::path canonical = fs::weakly_canonical(path, ec);
    if (!seen.insert(ec ? path : canonical).second) return;
    docs.push_back({path, std::move(rel), size});
  };
  for (const fs::path& root : o.inputs) {
    std::error_code ec;
    const auto status = fs::status(root, ec);
    require(fs::exists(status), "corpus input " + quoted(root) + " does not exist; check the path");
    if (fs::is_regular_file(status)) {
      const uint64_t size = fs::file_size(root, ec);
      add(root, root.filename().string(), size_or_zero(size, ec));
      continue;
    }
    require(fs::is_directory(status),
            "corpus input " + quoted(root) + " is neither a file nor a folder");
    std::vector<Document> found;
    try {
      for (const auto& de : fs::recursive_directory_iterator(
               root, fs::directory_options::skip_permission_denied)) {
        std::error_code fec;
        if (!de.is_regular_file(fec) || !has_suffix(de.path(), o.suffixes)) continue;
        const uint64_t size = de.file_size(fec);
        found.push_back({de.path(), de.path().lexically_relative(root).generic_string(),
                         size_or_zero(size, fec)});
      }
    } catch (const fs::filesystem_error& e) {
      throw UserError("cannot walk corpus folder " + quoted(root) + ": " + e.what());
    }
    std::sort(found.begin(), found.end(),
              [](const Document& a, const Document& b) { return a.rel < b.rel; });
    for (auto& d : found) add(d.path, std::move(d.rel), d.size);
  }
  return docs;
}

// Decides train/val per document; guarantees one document on each side when there are at
// least two and a validation split was asked for, moving the one closest to the threshold.
void assign_split(std::vector<Document>& docs, double val_fraction, uint64_t seed) {
  for (auto& d : docs) {
    d.split_key = split_key(d.rel, seed);
    d.val = d.split_key < val_fraction;
  }
  if (val_fraction <= 0 || docs.size() < 2) {
    for (auto& d : docs) d.val = false;
    return;
  }
  auto by_key = [](const Document& a, const Document& b) { return a.split_key < b.split_key; };
  const auto n_val = std::count_if(docs.begin(), docs.end(), [](const Document& d) { return d.val; });
  if (n_val == 0) std::min_element(docs.begin(), docs.end(), by_key)->val = true;
  if (n_val == static_cast<ptrdiff_t>(docs.size()))
    std::max_element(docs.begin(), docs.end(), by_key)->val = false;
}

bool read_whole_file(const fs::path& path, std::string& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out.clear();
  char buf[1 << 16];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) out.append(buf, static_cast<size_t>(in.gcount()));
  return !in.bad();
}

// One split's shards: "<prefix>_000000.bin", ... each holding shard_tokens tokens except
// the last; a document may continue into the next shard, as the loader joins them.
class SplitWriter {
 public:
  SplitWriter(fs::path dir, std::string prefix, uint64_t shard_tokens)
      : dir_(std::move(dir)), prefix_(std::move(prefix)), shard_tokens_(shard_tokens) {}

  void append(std::span<const int32_t> tokens) {
    while (!tokens.empty()) {
      if (!current_) {
        char name[64];
        std::snprintf(name, sizeof name, "%s_%06zu.bin", prefix_.c_str(), names_.size());
        names_.emplace_back(name);
        current_ = std::make_unique<ShardWriter>(dir_ / name);
      }
      const size_t take =
          static_cast<size_t>(std::min<uint64_t>(tokens.size(), shard_tokens_ - current_->count()));
      current_->append(tokens.first(take));
      tokens = tokens.subspan(take);
      tokens_ += take;
      if (current_->count() == shard_tokens_) finish();
    }
  }
  void finish() {
    if (current_) current_->finish();
    current_.reset();
  }
  uint64_t tokens() const { return tokens_; }
  const std::vector<std::string>& names() const { return names_; }

 private:
  fs::path dir_;
  std::string prefix_;
  uint64_t shard_tokens_;
  std::unique_ptr<ShardWriter> current_;
  std::vector<std::string> names_;
  uint64_t tokens_ = 0;
};

// A sibling temporary folder that is removed unless committed into place.
class StagingDir {
 public:
  explicit StagingDir(const fs::path& target) : target_(target) {
    const fs::path parent = target_.parent_path();
    std::error_code ec;
    fs::create_directories(parent, ec);
    std::string templ = (parent / ("." + target_.filename().string() + ".tmp-XXXXXX")).string();
    require(mkdtemp(templ.data()) != nullptr,
            "cannot create a temporary folder next to " + quoted(target_) +
                "; check that its parent folder is writable");
    path_ = templ;
    // mkdtemp makes it private (0700); a dataset is meant to be readable like any folder.
    fs::permissions(path_,
                    fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                        fs::perms::others_read | fs::perms::others_exec,
                    ec);
  }
  ~StagingDir() {
    if (!committed_) {
      std::error_code ec;
      fs::remove_all(path_, ec);
    }
  }
  const fs::path& path() const { return path_; }

  // Moves the finished folder into place; an existing target is moved aside first and
  // deleted only once the new folder is in place, so either the old or the new is there.
  void commit() {
    std::error_code ec;
    fs::path aside;
    if (fs::exists(target_, ec)) {
      aside = path_;
      aside += ".old";
      fs::rename(target_, aside, ec);
      require(!ec, "cannot move the old " + quoted(target_) + " aside: " + ec.message());
    }
    fs::rename(path_, target_, ec);
    if (ec) {
      const std::string why = ec.message();
      if (!aside.empty()) fs::rename(aside, target_, ec);
      throw UserError("cannot move the new dataset into " + quoted(target_) + ": " + why);
    }
    committed_ = true;
    if (!aside.empty()) fs::remove_all(aside, ec);
  }

 private:
  fs::path target_, path_;
  bool committed_ = false;
};

void check_options(const PrepareOptions& o) {
  require(!o.inputs.empty(), "no corpus inputs given; pass at least one file or folder");
  require(!o.output_dir.empty(), "no output folder given for the prepared corpus");
  require(o.val_fraction >= 0 && o.val_fraction < 1,
          "val_fraction must lie in [0, 1) (got " + std::to_string(o.val_fraction) + ")");
  require(o.shard_tokens > 0 && o.shard_tokens <= static_cast<uint64_t>(INT32_MAX),
          "shard size must be between 1 and 2^31-1 tokens (got " +
              std::to_string(o.shard_tokens) + ")");
  require(static_cast<bool>(o.tokenizer.encode), "no tokenizer given for corpus preparation");
  require(o.tokenizer.eot >= 0 && o.tokenizer.eot < kShardTokenLimit &&
              o.tokenizer.vocab_size <= kShardTokenLimit,
          "tokenizer vocab size " + std::to_string(o.tokenizer.vocab_size) +
              " does not fit llm.c's uint16 shards (at most 65536)");
  std::error_code ec;
  if (fs::exists(o.output_dir, ec)) {
    require(fs::is_directory(o.output_dir, ec),
            "output " + quoted(o.output_dir) + " exists and is not a folder; choose another path");
    require(o.force || fs::is_empty(o.output_dir, ec),
            "output folder " + quoted(o.output_dir) +
                " already exists and is not empty; pass --force to replace it or choose another folder");
  }
}

}  // namespace

CorpusTokenizer corpus_tokenizer(const Gpt2Tokenizer& tokenizer) {
  CorpusTokenizer t;
  t.encode = [&tokenizer](std::string_view text) { return tokenizer.encode(text); };
  t.eot = tokenizer.eot();
  t.vocab_size = tokenizer.vocab_size();
  t.name = "gpt2";
  t.source = tokenizer.vocab_file().parent_path().string();
  return t;
}

PrepareSummary prepare_corpus(const PrepareOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  check_options(o);

  std::vector<Document> docs = find_documents(o);
  if (o.max_bytes > 0) {
    uint64_t taken = 0;
    size_t n = 0;
    while (n < docs.size() && taken < o.max_bytes) taken += docs[n++].size;
    docs.resize(n);
  }
  std::string suffix_list;
  for (const auto& s : o.suffixes) suffix_list += (suffix_list.empty() ? "" : ", ") + s;
  require(!docs.empty(), "no corpus files found under the inputs" +
                             (o.suffixes.empty() ? std::string()
                                                 : " with suffix " + suffix_list) +
                             "; check the input paths and suffixes");
  assign_split(docs, o.val_fraction, o.seed);

  uint64_t total_bytes = 0;
  for (const auto& d : docs) total_bytes += d.size;

  // Normalised so that "out/" stages next to "out", not inside it.
  fs::path target = fs::absolute(o.output_dir).lexically_normal();
  if (!target.has_filename()) target = target.parent_path();
  StagingDir staging(target);
  SplitWriter train(staging.path(), "train", o.shard_tokens);
  SplitWriter val(staging.path(), "val", o.shard_tokens);
  PrepareSummary summary;
  std::vector<std::string> skipped;
  uint64_t done_bytes = 0;

  for (size_t begin = 0; begin < docs.size();) {
    size_t end = begin;
    uint64_t chunk_bytes = 0;
    while (end < docs.size() && (end == begin || chunk_bytes < kChunkBytes))
      chunk_bytes += docs[end++].size;

    const size_t n = end - begin;
    std::vector<std::vector<int32_t>> tokens(n);
    std::vector<uint64_t> read_bytes(n, 0);
    std::vector<char> readable(n, 0);
    std::exception_ptr failure;
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t i = 0; i < n; ++i) {
      // Exceptions must not cross the OpenMP region; the first one is rethrown below.
      try {
        std::string text;
        if (!read_whole_file(docs[begin + i].path, text)) continue;
        readable[i] = 1;
        read_bytes[i] = text.size();
        tokens[i] = o.tokenizer.encode(text);
        tokens[i].push_back(o.tokenizer.eot);
      } catch (...) {
#pragma omp critical(mom_corpus_failure)
        if (!failure) failure = std::current_exception();
      }
    }
    if (failure) std::rethrow_exception(failure);

    for (size_t i = 0; i < n; ++i) {
      const Document& d = docs[begin + i];
      if (!readable[i]) {
        skipped.push_back(d.rel);
        continue;
      }
      (d.val ? val : train).append(tokens[i]);
      ++(d.val ? summary.val_docs : summary.train_docs);
      summary.bytes += read_bytes[i];
    }
    done_bytes += chunk_bytes;
    if (o.progress) o.progress(done_bytes, total_bytes);
    begin = end;
  }
  train.finish();
  val.finish();
  require(summary.train_docs + summary.val_docs > 0,
          "none of the " + std::to_string(docs.size()) +
              " corpus files could be read; check their permissions");

  nlohmann::json sources = nlohmann::json::array();
  for (const auto& p : o.inputs) sources.push_back(p.string());
  auto split_json = [](const SplitWriter& w, uint64_t docs_in_split) {
    return nlohmann::json{{"documents", docs_in_split}, {"tokens", w.tokens()}, {"shards", w.names()}};
  };
  const nlohmann::json meta = {
      {"format", {{"name", "llmc"}, {"magic", kShardMagic}, {"version", kShardVersion},
                  {"header_bytes", kShardHeaderBytes}, {"token_dtype", "uint16"}}},
      {"tokenizer", {{"name", o.tokenizer.name}, {"source", o.tokenizer.source},
                     {"vocab_size", o.tokenizer.vocab_size}, {"eot", o.tokenizer.eot}}},
      {"sources", {{"inputs", sources}, {"suffixes", o.suffixes}, {"max_bytes", o.max_bytes},
                   {"val_fraction", o.val_fraction}, {"seed", o.seed},
                   {"shard_tokens", o.shard_tokens}}},
      {"train", split_json(train, summary.train_docs)},
      {"val", split_json(val, summary.val_docs)},
      {"source_bytes", summary.bytes},
      {"skipped_files", {{"count", skipped.size()}, {"paths", skipped}}},
  };
  {
    std::ofstream out(staging.path() / "meta.json", std::ios::binary);
    out << meta.dump(2) << "\n";
    require(static_cast<bool>(out), "cannot write meta.json in " + quoted(staging.path()) +
                                        "; check free disk space");
  }
  staging.commit();

  summary.train_tokens = train.tokens();
  summary.val_tokens = val.tokens();
  summary.train_shards = train.names().size();
  summary.val_shards = val.names().size();
  summary.skipped_files = skipped.size();
  summary.output_dir = o.output_dir;
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return summary;
}

}  // namespace mom::io
