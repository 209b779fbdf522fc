// Token shard files: llm.c's format (1024-byte header + uint16 tokens) and nanoGPT's raw
// uint16 train.bin/val.bin.
//
// Why these formats: they are what existing GPT-2 data pipelines already produce, so a
// dataset made for llm.c or nanoGPT trains here unchanged, and ours train there. Why mmap:
// a corpus can be tens of GB; mapping lets the page cache hold it once for every process
// on the machine and the loader touch only the windows it samples. Tokens are stored
// little-endian on disk and read in place, so the code requires a little-endian host.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mom::io {

enum class ShardFormat {
  Auto,     // llm.c when the header's magic matches; anything else is an error
  LlmC,     // 256 int32 header {20240520, 1, count, 0...} then count uint16 tokens
  NanoGPT,  // raw uint16 tokens, no header
};

inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderInts = 256;
inline constexpr size_t kShardHeaderBytes = kShardHeaderInts * sizeof(int32_t);
// uint16 storage: a token id must be below this to be written.
inline constexpr int64_t kShardTokenLimit = 65536;

// "auto", "llmc" (also "llm.c") or "nanogpt"; anything else throws UserError listing them.
ShardFormat parse_shard_format(std::string_view name);
std::string_view shard_format_name(ShardFormat format);

// Writes one llm.c shard. Tokens must lie in [0, 65536). Refuses to replace an existing
// file unless `force`; the file appears under its name only once complete.
void write_token_shard(const std::filesystem::path& path, std::span<const uint16_t> tokens,
                       bool force = false);
void write_token_shard(const std::filesystem::path& path, std::span<const int32_t> tokens,
                       bool force = false);

// Writes one llm.c shard whose size is not known up front (corpus preparation streams
// documents into it). Writes to "<path>.partial" and renames on finish(); destroying it
// unfinished removes the partial file.
class ShardWriter {
 public:
  explicit ShardWriter(const std::filesystem::path& path, bool force = false);
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  void append(std::span<const int32_t> tokens);
  void append(std::span<const uint16_t> tokens);
  uint64_t count() const { return count_; }
  // Fills in the header's count, closes the file and moves it to its final name.
  void finish();

 private:
  void write_raw(const void* data, size_t bytes);
  std::filesystem::path path_, partial_;
  int fd_ = -1;
  uint64_t count_ = 0;
};

// A read-only memory mapping of one shard's tokens, validated on open.
class MappedShard {
 public:
  // Throws UserError naming the file for: missing/unreadable file, wrong magic (saying
  // which magic was found and that raw nanoGPT files need format "nanogpt"), wrong version,
  // or a size that does not match the header (expected vs actual bytes).
  MappedShard(const std::filesystem::path& path, ShardFormat format);
  ~MappedShard();
  MappedShard(MappedShard&& other) noexcept;
  MappedShard& operator=(MappedShard&& other) noexcept;
  MappedShard(const MappedShard&) = delete;
  MappedShard& operator=(const MappedShard&) = delete;

  std::span<const uint16_t> tokens() const { return {tokens_, count_}; }
  size_t size() const { return count_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  void unmap();
  std::filesystem::path path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const uint16_t* tokens_ = nullptr;
  size_t count_ = 0;
};

// Expands each entry: a path without '*', '?' or '[' is taken as is (it must exist); a
// pattern (wildcards in the file name only, e.g. "data/train_*.bin") becomes its matches
// sorted by name. Throws UserError when an entry matches nothing.
std::vector<std::filesystem::path> expand_shard_paths(const std::vector<std::string>& entries);

}  // namespace mom::io
