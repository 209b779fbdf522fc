// Checkpoint files: named float tensors plus typed attributes in one HDF5 file.
//
// Why built this way:
// - HDF5 because every tool (h5py, h5dump, h5ls) can read it and it keeps tensors, their
//   shapes and the run's metadata in one self-describing file (layout: docs/checkpoint-format.md).
// - Generic layer: it knows nothing about models. The trainer decides the dataset names;
//   this file only guarantees that what it reads back is exactly what was written.
// - Corruption is detected, never loaded: files use the newest HDF5 format so that the
//   superblock, object headers (where attributes live) and indexes carry checksums, every
//   dataset is chunked with the Fletcher32 filter, strings are stored inline (never in the
//   unchecksummed global heap), and every HDF5 failure becomes a mom::UserError that names
//   the file, the dataset and the fix. HDF5's own error printing is switched off.
// - Atomic commit: the writer fills `<final>.tmp.<host>.<pid>`, fsyncs it and renames it over the
//   final name, so a crash mid-save leaves the previous checkpoint untouched.
// - Ready for sharded I/O: a dataset can be created with its full global shape and filled
//   by row ranges [begin, end) of axis 0 (write_rows), and read back by row ranges
//   (read_rows), so a module pool stacked along a global module axis can be saved and
//   loaded by any number of ranks. The HDF5 C API stays behind a pimpl so that users of
//   this header do not need HDF5's (MPI) include paths.
#pragma once
#include <concepts>
#include <cstdint>
#include <filesystem>
#include <iosfwd>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mom::io {

// Root attributes every checkpoint carries; a reader refuses files without them.
inline constexpr const char* kCheckpointFormat = "mom-checkpoint";
inline constexpr int64_t kCheckpointFormatVersion = 1;

// Element type of a stored tensor (little-endian IEEE floats, or little-endian two's-complement
// int32 for integer data such as `mom route`'s module ids).
enum class DType { F32, F64, I32 };

class CheckpointWriter {
 public:
  // Creates `<final_path>.tmp.<host>.<pid>` and writes the root `format`/`format_version`
  // attributes. When `final_path` exists and !overwrite, throws UserError before any work.
  CheckpointWriter(std::filesystem::path final_path, bool overwrite);
  // Removes the temporary file when commit() was not reached (the old checkpoint stays).
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // create() + write_rows() over the whole of axis 0. Dataset names are slash-separated
  // paths ("params/blocks/ln1_weight"); intermediate groups are created as needed.
  void write(const std::string& dataset, std::span<const int64_t> shape, const float* data);
  void write(const std::string& dataset, std::span<const int64_t> shape, const double* data);
  void write(const std::string& dataset, std::span<const int64_t> shape, const int32_t* data);

  // Creates a dataset of its full (global) shape, chunked along axis 0 to about 1 MiB per
  // chunk, with the Fletcher32 checksum filter. Rank >= 1.
  void create(const std::string& dataset, std::span<const int64_t> global_shape, DType dtype);
  // Writes rows [begin, end) of axis 0 from `rows` (row-major, (end-begin) * row elements).
  void write_rows(const std::string& dataset, int64_t begin, int64_t end, const float* rows);
  void write_rows(const std::string& dataset, int64_t begin, int64_t end, const double* rows);
  void write_rows(const std::string& dataset, int64_t begin, int64_t end, const int32_t* rows);

  // A byte string (a file's raw contents, e.g. a tokenizer's vocab.json) as a 1-D uint8
  // dataset, chunked and checksummed like tensors.
  void write_bytes(const std::string& dataset, std::string_view bytes);

  // Attributes on "/" or on any group/dataset path; setting an existing one replaces it.
  // Integers are stored as int64 (a value outside int64's range throws invalid_argument).
  template <std::integral T>
  requires(!std::same_as<T, bool>) void set_attr(const std::string& object, const std::string& name, T value) {
    if (!std::in_range<int64_t>(value)) throw std::invalid_argument("attribute " + name + " does not fit in int64");
    set_int_attr(object, name, static_cast<int64_t>(value));
  }
  void set_attr(const std::string& object, const std::string& name, double value);
  void set_attr(const std::string& object, const std::string& name, const std::string& value);
  void set_attr(const std::string& object, const std::string& name, std::span<const uint64_t> values);
  void set_attr(const std::string& object, const std::string& name, std::span<const int64_t> values);

  // Closes the file, fsyncs it, renames it over the final path and fsyncs the folder.
  // The writer is spent afterwards: further calls throw std::logic_error.
  void commit();

  const std::filesystem::path& final_path() const { return final_path_; }
  const std::filesystem::path& temp_path() const { return temp_path_; }

 private:
  struct Impl;
  Impl& live() const;  // the open file, or std::logic_error after commit()
  void set_int_attr(const std::string& object, const std::string& name, int64_t value);

  std::filesystem::path final_path_;
  std::filesystem::path temp_path_;
  std::unique_ptr<Impl> impl_;
};

class CheckpointReader {
 public:
  // Opens `path` and checks root attributes format == "mom-checkpoint" and format_version.
  explicit CheckpointReader(std::filesystem::path path);
  ~CheckpointReader();
  CheckpointReader(const CheckpointReader&) = delete;
  CheckpointReader& operator=(const CheckpointReader&) = delete;

  const std::filesystem::path& path() const { return path_; }

  bool has(const std::string& dataset) const;
  std::vector<int64_t> shape(const std::string& dataset) const;
  // "float32", "float64", or a short description of a foreign type ("int32", ...).
  std::string dtype(const std::string& dataset) const;
  // Every dataset path (without a leading '/'), sorted.
  std::vector<std::string> datasets() const;

  // Reads the whole dataset; its shape must equal `expected` (else UserError naming both).
  // Float datasets read into float or double memory, integer datasets into int32 memory;
  // any other pairing is a UserError.
  void read(const std::string& dataset, std::span<const int64_t> expected, float* dst) const;
  void read(const std::string& dataset, std::span<const int64_t> expected, double* dst) const;
  void read(const std::string& dataset, std::span<const int64_t> expected, int32_t* dst) const;
  // Reads rows [begin, end) of axis 0 into dst ((end-begin) * row elements).
  void read_rows(const std::string& dataset, int64_t begin, int64_t end, float* dst) const;
  void read_rows(const std::string& dataset, int64_t begin, int64_t end, double* dst) const;
  void read_rows(const std::string& dataset, int64_t begin, int64_t end, int32_t* dst) const;

  // A dataset written by CheckpointWriter::write_bytes; anything else throws UserError.
  std::string read_bytes(const std::string& dataset) const;

  // Attributes on "/" or a group/dataset path. A missing attribute, or one of another
  // type, throws UserError naming it.
  bool has_attr(const std::string& object, const std::string& name) const;
  std::vector<std::string> attr_names(const std::string& object) const;  // sorted
  int64_t attr_int(const std::string& object, const std::string& name) const;
  double attr_double(const std::string& object, const std::string& name) const;
  std::string attr_string(const std::string& object, const std::string& name) const;
  std::vector<uint64_t> attr_u64s(const std::string& object, const std::string& name) const;
  std::vector<int64_t> attr_i64s(const std::string& object, const std::string& name) const;

  // Reads every dataset fully so that HDF5 checks each chunk's Fletcher32 checksum.
  void verify() const;

 private:
  struct Impl;
  friend void inspect_checkpoint(const std::filesystem::path&, std::ostream&, bool);

  std::filesystem::path path_;
  std::unique_ptr<Impl> impl_;
};

// `mom ckpt inspect`: root attributes (JSON strings pretty-printed), then a tree of
// groups and datasets with dtype, shape, element count and bytes, then totals. With
// `verify`, reads every dataset to check its checksums (throws UserError on corruption).
void inspect_checkpoint(const std::filesystem::path& path, std::ostream& out, bool verify);

}  // namespace mom::io
