// Token shard files. See shards.h for the formats; docs/data.md for the layout in full.
//
// Why POSIX calls rather than iostreams: the reader needs mmap anyway, and the writer
// wants plain error codes (errno) to name in its messages.
#include "io/shards.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <utility>

#include "core/error.h"

namespace mom::io {

static_assert(std::endian::native == std::endian::little,
              "shards are read in place as little-endian uint16; big-endian hosts are unsupported");

namespace fs = std::filesystem;

namespace {

// Built by appending: GCC 12 at -O3 gives a false -Wrestrict for "'" + std::string.
std::string quoted(const fs::path& p) {
  std::string q(1, '\'');
  q += p.string();
  q += '\'';
  return q;
}

std::string errno_text() { return std::strerror(errno); }

}  // namespace

ShardFormat parse_shard_format(std::string_view name) {
  if (name == "auto") return ShardFormat::Auto;
  if (name == "llmc" || name == "llm.c") return ShardFormat::LlmC;
  if (name == "nanogpt") return ShardFormat::NanoGPT;
  throw UserError("unknown token file format '" + std::string(name) +
                  "'; use one of: auto, llmc, nanogpt");
}

std::string_view shard_format_name(ShardFormat format) {
  switch (format) {
    case ShardFormat::Auto: return "auto";
    case ShardFormat::LlmC: return "llmc";
    case ShardFormat::NanoGPT: return "nanogpt";
  }
  return "unknown";
}

// ---- writing ----------------------------------------------------------------------------

ShardWriter::ShardWriter(const fs::path& path, bool force) : path_(path) {
  std::error_code ec;
  require(force || !fs::exists(path_, ec),
          "token shard " + quoted(path_) + " already exists; remove it or pass force to replace it");
  partial_ = path_;
  partial_ += ".partial";
  fd_ = ::open(partial_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  require(fd_ >= 0, "cannot create token shard " + quoted(partial_) + ": " + errno_text() +
                        "; check that the folder exists and is writable");
  // The count is patched in by finish(); until then the header says 0 tokens.
  int32_t header[kShardHeaderInts] = {};
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  write_raw(header, sizeof header);
}

ShardWriter::~ShardWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(partial_.c_str());
  }
}

void ShardWriter::write_raw(const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd_, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    require(n > 0, "cannot write token shard " + quoted(partial_) + ": " + errno_text() +
                       "; check free disk space");
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

void ShardWriter::append(std::span<const uint16_t> tokens) {
  require(count_ + tokens.size() <= static_cast<uint64_t>(INT32_MAX),
          "token shard " + quoted(path_) + " would exceed llm.c's limit of 2^31-1 tokens; "
          "use a smaller shard size");
  write_raw(tokens.data(), tokens.size_bytes());
  count_ += tokens.size();
}

void ShardWriter::append(std::span<const int32_t> tokens) {
  // Converted in blocks so a large document needs no second full-size buffer.
  constexpr size_t kBlock = 1 << 14;
  uint16_t buf[kBlock];
  for (size_t start = 0; start < tokens.size(); start += kBlock) {
    const size_t n = std::min(kBlock, tokens.size() - start);
    for (size_t i = 0; i < n; ++i) {
      const int32_t t = tokens[start + i];
      require(t >= 0 && t < kShardTokenLimit,
              "token " + std::to_string(t) + " cannot be stored in " + quoted(path_) +
                  ": shard tokens are uint16, so ids must lie in [0, 65536)");
      buf[i] = static_cast<uint16_t>(t);
    }
    append(std::span<const uint16_t>(buf, n));
  }
}

void ShardWriter::finish() {
  const int32_t count = static_cast<int32_t>(count_);
  if (::pwrite(fd_, &count, sizeof count, 2 * sizeof(int32_t)) != sizeof count ||
      ::close(fd_) != 0) {
    const std::string why = errno_text();
    ::unlink(partial_.c_str());
    fd_ = -1;
    throw UserError("cannot finish token shard " + quoted(partial_) + ": " + why);
  }
  fd_ = -1;
  std::error_code ec;
  fs::rename(partial_, path_, ec);
  if (ec) {
    ::unlink(partial_.c_str());
    throw UserError("cannot rename " + quoted(partial_) + " to " + quoted(path_) + ": " +
                    ec.message());
  }
}

void write_token_shard(const fs::path& path, std::span<const uint16_t> tokens, bool force) {
  ShardWriter w(path, force);
  w.append(tokens);
  w.finish();
}

void write_token_shard(const fs::path& path, std::span<const int32_t> tokens, bool force) {
  ShardWriter w(path, force);
  w.append(tokens);
  w.finish();
}

// ---- reading ----------------------------------------------------------------------------

MappedShard::MappedShard(const fs::path& path, ShardFormat format) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  require(fd >= 0, "cannot open token file " + quoted(path) + ": " + errno_text() +
                       "; check the data path");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw UserError("token file " + quoted(path) + " is not a regular file; check the data path");
  }
  map_bytes_ = static_cast<size_t>(st.st_size);
  if (map_bytes_ > 0) {
    map_ = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_SHARED, fd, 0);
    if (map_ == MAP_FAILED) {
      const std::string why = errno_text();
      map_ = nullptr;
      ::close(fd);
      throw UserError("cannot memory-map token file " + quoted(path) + ": " + why);
    }
  }
  ::close(fd);  // the mapping keeps the file alive

  try {
    const auto* bytes = static_cast<const unsigned char*>(map_);
    if (format == ShardFormat::NanoGPT) {
      require(map_bytes_ % 2 == 0,
              "token file " + quoted(path) + " has an odd size (" + std::to_string(map_bytes_) +
                  " bytes), so it is not a raw uint16 nanoGPT file; it may be truncated");
      tokens_ = reinterpret_cast<const uint16_t*>(bytes);
      count_ = map_bytes_ / 2;
      return;
    }
    require(map_bytes_ >= kShardHeaderBytes,
            "token file " + quoted(path) + " is " + std::to_string(map_bytes_) +
                " bytes, shorter than llm.c's 1024-byte header; if it is a raw nanoGPT "
                "file (train.bin/val.bin), use format \"nanogpt\"");
    int32_t header[3];
    std::memcpy(header, bytes, sizeof header);
    require(header[0] == kShardMagic,
            "token file " + quoted(path) + " starts with magic " + std::to_string(header[0]) +
                ", not llm.c's " + std::to_string(kShardMagic) +
                "; if it is a raw nanoGPT file (train.bin/val.bin), use format \"nanogpt\"");
    require(header[1] == kShardVersion,
            "token file " + quoted(path) + " has llm.c shard version " +
                std::to_string(header[1]) + ", but only version " +
                std::to_string(kShardVersion) + " (uint16 tokens) is supported; re-create it");
    require(header[2] >= 0, "token file " + quoted(path) + " has a negative token count (" +
                                std::to_string(header[2]) + "); re-create it");
    count_ = static_cast<size_t>(header[2]);
    const size_t expected = kShardHeaderBytes + 2 * count_;
    require(map_bytes_ == expected,
            "token file " + quoted(path) + " is " + std::to_string(map_bytes_) +
                " bytes but its header promises " + std::to_string(count_) + " tokens, i.e. " +
                std::to_string(expected) + " bytes (1024 + 2*count); it is " +
                (map_bytes_ < expected ? "truncated" : "oversized") + ", re-create it");
    tokens_ = reinterpret_cast<const uint16_t*>(bytes + kShardHeaderBytes);
  } catch (...) {
    unmap();
    throw;
  }
}

MappedShard::~MappedShard() { unmap(); }

void MappedShard::unmap() {
  if (map_) ::munmap(map_, map_bytes_);
  map_ = nullptr;
  map_bytes_ = 0;
  tokens_ = nullptr;
  count_ = 0;
}

MappedShard::MappedShard(MappedShard&& other) noexcept
    : path_(std::move(other.path_)),
      map_(std::exchange(other.map_, nullptr)),
      map_bytes_(std::exchange(other.map_bytes_, 0)),
      tokens_(std::exchange(other.tokens_, nullptr)),
      count_(std::exchange(other.count_, 0)) {}

MappedShard& MappedShard::operator=(MappedShard&& other) noexcept {
  if (this != &other) {
    unmap();
    path_ = std::move(other.path_);
    map_ = std::exchange(other.map_, nullptr);
    map_bytes_ = std::exchange(other.map_bytes_, 0);
    tokens_ = std::exchange(other.tokens_, nullptr);
    count_ = std::exchange(other.count_, 0);
  }
  return *this;
}

// ---- path patterns ------------------------------------------------------------------------

std::vector<fs::path> expand_shard_paths(const std::vector<std::string>& entries) {
  std::vector<fs::path> out;
  for (const std::string& entry : entries) {
    const fs::path p(entry);
    const std::string name = p.filename().string();
    if (name.find_first_of("*?[") == std::string::npos) {
      std::error_code ec;
      require(fs::is_regular_file(p, ec),
              "token file " + quoted(p) + " does not exist; check the data path");
      out.push_back(p);
      continue;
    }
    const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
    std::error_code ec;
    require(fs::is_directory(dir, ec), "folder " + quoted(dir) + " of data pattern '" + entry +
                                           "' does not exist; check the data path");
    std::vector<fs::path> matches;
    for (const auto& de : fs::directory_iterator(dir)) {
      if (!de.is_regular_file()) continue;
      if (::fnmatch(name.c_str(), de.path().filename().c_str(), FNM_PERIOD) == 0)
        matches.push_back(p.has_parent_path() ? de.path() : de.path().filename());
    }
    require(!matches.empty(), "no token files match '" + entry + "'; check the data path");
    std::sort(matches.begin(), matches.end());
    out.insert(out.end(), matches.begin(), matches.end());
  }
  return out;
}

}  // namespace mom::io
