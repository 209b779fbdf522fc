// HDF5 implementation of the checkpoint file layer (see checkpoint_file.h for the why).
//
// Why built this way:
// - HDF5's C API with a tiny RAII handle: every hid_t is closed on every path, including
//   the exceptional ones, so a failed load never leaks an open file.
// - HDF5 never prints: automatic error printing is switched off and, when a call fails,
//   the most specific entry of HDF5's error stack ("incorrect metadata checksum",
//   "truncated file: ...") is folded into one UserError that names the file, the dataset
//   and what to do. Every reader call that touches the file checks its result, because
//   corruption can surface in any of them, not only in H5Fopen.
// - Strings are fixed-length attributes: they live inside checksummed object headers or
//   dense attribute storage, whereas variable-length strings would live in the global
//   heap, which HDF5 does not checksum.
#include "io/checkpoint_file.h"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <ostream>
#include <sstream>

#include "core/error.h"

namespace mom::io {
namespace {

// Chunks of about this size keep Fletcher32 granular (a flipped bit condemns one chunk's
// read, not a whole tensor) while keeping the chunk index small.
constexpr size_t kChunkBytes = size_t{1} << 20;
// verify() reads datasets in slabs of at most this size, so it needs bounded memory.
constexpr size_t kVerifySlabBytes = size_t{64} << 20;

const std::string kRestoreHint = "the file is damaged or truncated; restore it from an earlier checkpoint or a backup";

// Switching printing off is per-thread in thread-safe HDF5 builds, so every entry point
// does it rather than once per process.
void silence_hdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

// The most specific message on HDF5's error stack, then clears the stack.
std::string hdf5_reason() {
  std::string reason;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned n, const H5E_error2_t* err, void* data) -> herr_t {
        if (n == 0 && err->desc) *static_cast<std::string*>(data) = err->desc;
        return 0;
      },
      &reason);
  H5Eclear2(H5E_DEFAULT);
  return reason.empty() ? "no detail from HDF5" : reason;
}

class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Handle(Handle&& other) noexcept : id_(std::exchange(other.id_, -1)), closer_(other.closer_) {}
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, -1);
      closer_ = other.closer_;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now and reports whether HDF5 succeeded (the file close is where data is flushed).
  bool close() {
    const bool ok = id_ < 0 || closer_(id_) >= 0;
    id_ = -1;
    return ok;
  }
  void reset() { close(); }

 private:
  hid_t id_ = -1;
  Closer closer_ = nullptr;
};

std::string shape_text(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string quoted(const std::string& s) { return "'" + s + "'"; }

// Dataset and object paths are given relative to the root; a leading '/' is tolerated.
std::string object_path(const std::string& name) {
  if (name.empty() || name == "/") return "/";
  return name.front() == '/' ? name : "/" + name;
}

std::string dataset_label(const std::string& name) {
  return name.empty() || name.front() != '/' ? name : name.substr(1);
}

hid_t file_type(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return H5T_IEEE_F32LE;
    case DType::F64:
      return H5T_IEEE_F64LE;
    case DType::I32:
      return H5T_STD_I32LE;
  }
  throw std::invalid_argument("checkpoint dataset: unknown element type");
}

// Axis-0 slabs of whole rows when a row fits in the target; otherwise one row per chunk
// split along the next axes, so a row range [begin, end) always maps onto whole chunks.
// The split axis is cut into equal pieces, because HDF5 stores an edge chunk at full
// size: 600 rows become 3 chunks of 200, not 256 + 256 + 88 padded to 256.
std::vector<hsize_t> chunk_dims(const std::vector<hsize_t>& dims, size_t element_bytes) {
  std::vector<hsize_t> chunk = dims;
  for (size_t axis = 0; axis < dims.size(); ++axis) {
    size_t inner = element_bytes;
    for (size_t j = axis + 1; j < dims.size(); ++j) inner *= dims[j];
    if (inner >= kChunkBytes) {
      chunk[axis] = 1;
      continue;
    }
    const hsize_t per_chunk = std::max<hsize_t>(1, kChunkBytes / inner);
    const hsize_t pieces = (dims[axis] + per_chunk - 1) / per_chunk;
    chunk[axis] = (dims[axis] + pieces - 1) / pieces;
    break;
  }
  return chunk;
}

void fsync_path(const std::filesystem::path& p, int flags, const std::string& what) {
  const int fd = ::open(p.c_str(), flags);
  if (fd < 0 || ::fsync(fd) != 0) {
    const std::string err = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    throw UserError("cannot sync " + what + " " + p.string() + ": " + err +
                    "; check the disk and free space, then save again");
  }
  ::close(fd);
}

// The shortest text that reads back as the same double (6e-04, not 0.00059999999999999995).
std::string shortest(double v) {
  char buf[32];
  const auto res = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, res.ptr);
}

std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  std::ostringstream os;
  if (u == 0)
    os << bytes << " B";
  else
    os << std::fixed << std::setprecision(1) << v << ' ' << units[u];
  return os.str();
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Writer

struct CheckpointWriter::Impl {
  std::string label;  // the final path, for messages
  Handle file;

  [[noreturn]] void fail(const std::string& what) const {
    throw UserError("cannot write checkpoint " + label + ": " + what + " failed (HDF5: " + hdf5_reason() +
                    "); check free disk space and permissions, then save again");
  }
  hid_t check(hid_t result, const std::string& what) const {
    if (result < 0) fail(what);
    return result;
  }

  Handle open_object(const std::string& object) const {
    return Handle(check(H5Oopen(file.get(), object_path(object).c_str(), H5P_DEFAULT),
                        "opening " + quoted(object) + " (write it before its attributes)"),
                  H5Oclose);
  }

  void put_attr(const std::string& object, const std::string& name, hid_t type, hid_t space, const void* data) const {
    const Handle obj = open_object(object);
    const std::string what = "attribute " + quoted(name) + " on " + quoted(object_path(object));
    if (check(H5Aexists(obj.get(), name.c_str()), what) > 0)
      check(H5Adelete(obj.get(), name.c_str()), "replacing " + what);
    const Handle attr(check(H5Acreate2(obj.get(), name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), what),
                      H5Aclose);
    check(H5Awrite(attr.get(), type, data), what);
  }

  void put_array_attr(const std::string& object, const std::string& name, hid_t type, size_t count,
                      const void* data) const {
    const hsize_t dims[1] = {count};
    const Handle space(check(H5Screate_simple(1, dims, nullptr), "attribute space"), H5Sclose);
    put_attr(object, name, type, space.get(), data);
  }

  // Any element type: floats for tensors, uint8 for byte blobs (write_bytes).
  void create(const std::string& dataset, std::span<const int64_t> global_shape, hid_t type) const {
    if (global_shape.empty()) throw std::invalid_argument("checkpoint dataset " + quoted(dataset) + " needs rank >= 1");
    std::vector<hsize_t> dims;
    for (int64_t d : global_shape) {
      if (d < 0)
        throw std::invalid_argument("checkpoint dataset " + quoted(dataset) + " has negative shape " +
                                    shape_text(global_shape));
      dims.push_back(static_cast<hsize_t>(d));
    }
    const std::string path = object_path(dataset);
    if (path == "/") throw std::invalid_argument("checkpoint dataset needs a name");
    const std::string what = "creating dataset " + quoted(dataset);
    const Handle space(check(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), what), H5Sclose);
    const Handle dcpl(check(H5Pcreate(H5P_DATASET_CREATE), what), H5Pclose);
    // Fletcher32 needs chunked storage; an empty tensor has no chunks and nothing to check.
    const bool empty = std::find(dims.begin(), dims.end(), hsize_t{0}) != dims.end();
    if (!empty) {
      const auto chunk = chunk_dims(dims, H5Tget_size(type));
      check(H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()), what);
      check(H5Pset_fletcher32(dcpl.get()), what);
    }
    const Handle lcpl(check(H5Pcreate(H5P_LINK_CREATE), what), H5Pclose);
    check(H5Pset_create_intermediate_group(lcpl.get(), 1), what);
    if (H5Lexists(file.get(), path.c_str(), H5P_DEFAULT) > 0)
      throw std::invalid_argument("checkpoint dataset " + quoted(dataset) + " written twice");
    H5Eclear2(H5E_DEFAULT);  // H5Lexists fails, harmlessly, when a parent group is missing
    const Handle ds(
        check(H5Dcreate2(file.get(), path.c_str(), type, space.get(), lcpl.get(), dcpl.get(), H5P_DEFAULT), what),
        H5Dclose);
  }

  void write_rows(const std::string& dataset, int64_t begin, int64_t end, hid_t mem_type, const void* rows) const {
    const std::string path = object_path(dataset);
    if (H5Lexists(file.get(), path.c_str(), H5P_DEFAULT) <= 0)
      throw std::invalid_argument("write_rows: dataset " + quoted(dataset) + " was not created in " + label);
    const Handle ds(check(H5Dopen2(file.get(), path.c_str(), H5P_DEFAULT), "opening " + quoted(dataset)), H5Dclose);
    const Handle space(check(H5Dget_space(ds.get()), "dataset space"), H5Sclose);
    const int rank = H5Sget_simple_extent_ndims(space.get());
    std::vector<hsize_t> dims(static_cast<size_t>(rank));
    H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
    if (begin < 0 || begin > end || static_cast<hsize_t>(end) > dims[0])
      throw std::invalid_argument("write_rows: rows [" + std::to_string(begin) + ", " + std::to_string(end) +
                                  ") outside " + quoted(dataset) + " with " + std::to_string(dims[0]) + " rows");
    if (begin == end) return;
    std::vector<hsize_t> start(dims.size(), 0), count = dims;
    start[0] = static_cast<hsize_t>(begin);
    count[0] = static_cast<hsize_t>(end - begin);
    for (hsize_t d : count)
      if (d == 0) return;  // zero-size trailing axis: nothing to write
    check(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr),
          "selecting rows of " + quoted(dataset));
    const Handle mem(check(H5Screate_simple(rank, count.data(), nullptr), "memory space"), H5Sclose);
    check(H5Dwrite(ds.get(), mem_type, mem.get(), space.get(), H5P_DEFAULT, rows), "writing " + quoted(dataset));
  }
};

CheckpointWriter::CheckpointWriter(std::filesystem::path final_path, bool overwrite)
    : final_path_(std::move(final_path)) {
  silence_hdf5();
  std::error_code ec;
  if (std::filesystem::exists(final_path_, ec) && !overwrite)
    throw UserError("checkpoint " + final_path_.string() + " exists; pass --force to replace it");
  temp_path_ = final_path_;
  // The host and PID name the writer, so that a later run can tell a crashed save's file from
  // one being written right now (core/run_folder.h).
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  temp_path_ += ".tmp." + std::string(host) + "." + std::to_string(::getpid());
  impl_ = std::make_unique<Impl>();
  impl_->label = final_path_.string();

  // Newest format: checksummed superblock, object headers and chunk indexes. STRONG close
  // so that closing the file really closes it (and flushes) even if a handle leaked.
  const Handle fapl(impl_->check(H5Pcreate(H5P_FILE_ACCESS), "file access list"), H5Pclose);
  impl_->check(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_LATEST), "file format");
  impl_->check(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG), "close degree");
  const hid_t file = H5Fcreate(temp_path_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get());
  if (file < 0)
    throw UserError("cannot create checkpoint " + temp_path_.string() + " (HDF5: " + hdf5_reason() +
                    "); check that the folder " + final_path_.parent_path().string() + " exists and is writable");
  impl_->file = Handle(file, H5Fclose);
  set_attr("/", "format", std::string(kCheckpointFormat));
  set_attr("/", "format_version", kCheckpointFormatVersion);
}

CheckpointWriter::~CheckpointWriter() {
  if (!impl_) return;  // committed
  impl_->file.reset();
  std::error_code ec;
  std::filesystem::remove(temp_path_, ec);
}

CheckpointWriter::Impl& CheckpointWriter::live() const {
  if (!impl_) throw std::logic_error("checkpoint writer for " + final_path_.string() + " used after commit()");
  return *impl_;
}

void CheckpointWriter::write(const std::string& dataset, std::span<const int64_t> shape, const float* data) {
  create(dataset, shape, DType::F32);
  write_rows(dataset, 0, shape[0], data);
}

void CheckpointWriter::write(const std::string& dataset, std::span<const int64_t> shape, const double* data) {
  create(dataset, shape, DType::F64);
  write_rows(dataset, 0, shape[0], data);
}

void CheckpointWriter::write(const std::string& dataset, std::span<const int64_t> shape, const int32_t* data) {
  create(dataset, shape, DType::I32);
  write_rows(dataset, 0, shape[0], data);
}

void CheckpointWriter::create(const std::string& dataset, std::span<const int64_t> global_shape, DType dtype) {
  live().create(dataset, global_shape, file_type(dtype));
}

void CheckpointWriter::write_rows(const std::string& dataset, int64_t begin, int64_t end, const float* rows) {
  live().write_rows(dataset, begin, end, H5T_NATIVE_FLOAT, rows);
}

void CheckpointWriter::write_rows(const std::string& dataset, int64_t begin, int64_t end, const double* rows) {
  live().write_rows(dataset, begin, end, H5T_NATIVE_DOUBLE, rows);
}

void CheckpointWriter::write_rows(const std::string& dataset, int64_t begin, int64_t end, const int32_t* rows) {
  live().write_rows(dataset, begin, end, H5T_NATIVE_INT32, rows);
}

void CheckpointWriter::write_bytes(const std::string& dataset, std::string_view bytes) {
  const std::array<int64_t, 1> shape{static_cast<int64_t>(bytes.size())};
  live().create(dataset, shape, H5T_STD_U8LE);
  live().write_rows(dataset, 0, shape[0], H5T_NATIVE_UCHAR, bytes.data());
}

void CheckpointWriter::set_int_attr(const std::string& object, const std::string& name, int64_t value) {
  const Handle space(live().check(H5Screate(H5S_SCALAR), "attribute space"), H5Sclose);
  live().put_attr(object, name, H5T_STD_I64LE, space.get(), &value);
}

void CheckpointWriter::set_attr(const std::string& object, const std::string& name, double value) {
  const Handle space(live().check(H5Screate(H5S_SCALAR), "attribute space"), H5Sclose);
  live().put_attr(object, name, H5T_IEEE_F64LE, space.get(), &value);
}

void CheckpointWriter::set_attr(const std::string& object, const std::string& name, const std::string& value) {
  const std::string what = "string attribute " + quoted(name);
  const Handle type(live().check(H5Tcopy(H5T_C_S1), what), H5Tclose);
  // HDF5 has no zero-length fixed strings; NULLPAD makes the empty string one NUL that
  // every reader strips.
  live().check(H5Tset_size(type.get(), std::max<size_t>(value.size(), 1)), what);
  live().check(H5Tset_strpad(type.get(), H5T_STR_NULLPAD), what);
  live().check(H5Tset_cset(type.get(), H5T_CSET_UTF8), what);
  const Handle space(live().check(H5Screate(H5S_SCALAR), what), H5Sclose);
  std::string padded = value;
  padded.resize(std::max<size_t>(value.size(), 1), '\0');
  live().put_attr(object, name, type.get(), space.get(), padded.data());
}

void CheckpointWriter::set_attr(const std::string& object, const std::string& name, std::span<const uint64_t> values) {
  live().put_array_attr(object, name, H5T_STD_U64LE, values.size(), values.data());
}

void CheckpointWriter::set_attr(const std::string& object, const std::string& name, std::span<const int64_t> values) {
  live().put_array_attr(object, name, H5T_STD_I64LE, values.size(), values.data());
}

void CheckpointWriter::commit() {
  if (!live().file.close())
    throw UserError("cannot write checkpoint " + final_path_.string() + ": closing " + temp_path_.string() +
                    " failed (HDF5: " + hdf5_reason() + "); check free disk space, then save again");
  fsync_path(temp_path_, O_RDONLY, "checkpoint");
  std::error_code ec;
  std::filesystem::rename(temp_path_, final_path_, ec);
  if (ec)
    throw UserError("cannot move " + temp_path_.string() + " to " + final_path_.string() + ": " + ec.message() +
                    "; check that the target is not a folder and is writable");
  impl_.reset();
  // The rename is durable only once the folder's entry is on disk.
  const auto dir = final_path_.parent_path().empty() ? std::filesystem::path(".") : final_path_.parent_path();
  fsync_path(dir, O_RDONLY | O_DIRECTORY, "folder");
}

// ---------------------------------------------------------------------------------------
// Reader

struct CheckpointReader::Impl {
  std::string label;  // the path, for messages
  Handle file;

  [[noreturn]] void corrupt(const std::string& what) const {
    throw UserError("cannot read checkpoint " + label + ": " + what + " failed (HDF5: " + hdf5_reason() + "); " +
                    kRestoreHint);
  }
  hid_t check(hid_t result, const std::string& what) const {
    if (result < 0) corrupt(what);
    return result;
  }

  // True when every component of `path` exists and the last one is an object of `type`.
  bool exists(const std::string& path, H5O_type_t type) const {
    if (path == "/") return type == H5O_TYPE_GROUP;
    for (size_t pos = path.find('/', 1);; pos = path.find('/', pos + 1)) {
      const std::string prefix = path.substr(0, pos);
      if (check(H5Lexists(file.get(), prefix.c_str(), H5P_DEFAULT), "looking up " + quoted(prefix)) <= 0) return false;
      // H5Lexists fails (rather than answering false) below a dataset.
      const H5O_type_t found = type_of(prefix);
      if (pos == std::string::npos) return found == type;
      if (found != H5O_TYPE_GROUP) return false;
    }
  }

  H5O_type_t type_of(const std::string& path) const {
    H5O_info_t info;
    check(H5Oget_info_by_name2(file.get(), path.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT),
          "looking up " + quoted(path));
    return info.type;
  }

  Handle open_dataset(const std::string& dataset) const {
    const std::string path = object_path(dataset);
    if (!exists(path, H5O_TYPE_DATASET))
      throw UserError("checkpoint " + label + " has no dataset " + quoted(dataset_label(dataset)) +
                      "; it was written for a different model or by a different program "
                      "(list its contents with `mom ckpt inspect`)");
    return Handle(check(H5Dopen2(file.get(), path.c_str(), H5P_DEFAULT), "opening dataset " + quoted(dataset)),
                  H5Dclose);
  }

  Handle open_object(const std::string& object) const {
    const std::string path = object_path(object);
    if (!exists(path, H5O_TYPE_GROUP) && !exists(path, H5O_TYPE_DATASET))
      throw UserError("checkpoint " + label + " has no group or dataset " + quoted(path));
    return Handle(check(H5Oopen(file.get(), path.c_str(), H5P_DEFAULT), "opening " + quoted(path)), H5Oclose);
  }

  std::vector<hsize_t> dims_of(hid_t dataset, const std::string& name) const {
    const Handle space(check(H5Dget_space(dataset), "reading the shape of " + quoted(name)), H5Sclose);
    const int rank = static_cast<int>(check(H5Sget_simple_extent_ndims(space.get()), "shape of " + quoted(name)));
    std::vector<hsize_t> dims(static_cast<size_t>(rank));
    check(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), "shape of " + quoted(name));
    return dims;
  }

  // Float tensors are read only into float memory and integer ones only into int32 memory:
  // anything else in a checkpoint is foreign.
  void require_class(hid_t dataset, const std::string& name, hid_t mem_type) const {
    const Handle type(check(H5Dget_type(dataset), "type of " + quoted(name)), H5Tclose);
    const bool want_float = H5Tget_class(mem_type) == H5T_FLOAT;
    if (H5Tget_class(type.get()) != (want_float ? H5T_FLOAT : H5T_INTEGER))
      throw UserError("dataset " + quoted(dataset_label(name)) + " in checkpoint " + label + " is not " +
                      (want_float ? "a float" : "an integer") + " tensor; the file was not written by mom");
  }

  void read_rows(const std::string& dataset, int64_t begin, int64_t end, hid_t mem_type, void* dst) const {
    const Handle ds = open_dataset(dataset);
    require_class(ds.get(), dataset, mem_type);
    const auto dims = dims_of(ds.get(), dataset);
    if (begin < 0 || begin > end || static_cast<hsize_t>(end) > dims[0])
      throw UserError("checkpoint " + label + ": rows [" + std::to_string(begin) + ", " + std::to_string(end) +
                      ") requested from dataset " + quoted(dataset_label(dataset)) + ", which has " +
                      std::to_string(dims[0]) +
                      " rows; the checkpoint was written for a different model configuration");
    read_slab(ds.get(), dataset, dims, static_cast<hsize_t>(begin), static_cast<hsize_t>(end), mem_type, dst);
  }

  void read_slab(hid_t ds, const std::string& name, const std::vector<hsize_t>& dims, hsize_t begin, hsize_t end,
                 hid_t mem_type, void* dst) const {
    std::vector<hsize_t> start(dims.size(), 0), count = dims;
    start[0] = begin;
    count[0] = end - begin;
    for (hsize_t d : count)
      if (d == 0) return;
    const Handle space(check(H5Dget_space(ds), "reading " + quoted(name)), H5Sclose);
    check(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr),
          "selecting rows of " + quoted(name));
    const Handle mem(check(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr), "memory space"),
                     H5Sclose);
    if (H5Dread(ds, mem_type, mem.get(), space.get(), H5P_DEFAULT, dst) < 0)
      throw UserError("dataset " + quoted(dataset_label(name)) + " in checkpoint " + label +
                      " is corrupt: reading it failed (HDF5: " + hdf5_reason() + "); " + kRestoreHint);
  }

  void read_all(const std::string& dataset, std::span<const int64_t> expected, hid_t mem_type, void* dst) const {
    const Handle ds = open_dataset(dataset);
    require_class(ds.get(), dataset, mem_type);
    const auto dims = dims_of(ds.get(), dataset);
    const std::vector<int64_t> actual(dims.begin(), dims.end());
    if (!std::equal(actual.begin(), actual.end(), expected.begin(), expected.end()))
      throw UserError("dataset " + quoted(dataset_label(dataset)) + " in checkpoint " + label + " has shape " +
                      shape_text(actual) + " but the model expects " + shape_text(expected) +
                      "; the checkpoint was written for a different model configuration");
    if (dims.empty()) return;
    read_slab(ds.get(), dataset, dims, 0, dims[0], mem_type, dst);
  }

  Handle open_attr(const std::string& object, const std::string& name) const {
    const Handle obj = open_object(object);
    const std::string what = "attribute " + quoted(name) + " on " + quoted(object_path(object));
    if (check(H5Aexists(obj.get(), name.c_str()), "looking up " + what) <= 0)
      throw UserError("checkpoint " + label + " has no " + what + "; it was not written by this version of mom");
    return Handle(check(H5Aopen(obj.get(), name.c_str(), H5P_DEFAULT), "opening " + what), H5Aclose);
  }

  [[noreturn]] void wrong_attr_type(const std::string& object, const std::string& name,
                                    const std::string& wanted) const {
    throw UserError("attribute " + quoted(name) + " on " + quoted(object_path(object)) + " in checkpoint " + label +
                    " is not " + wanted + "; the file was not written by this version of mom");
  }

  H5T_class_t attr_class(hid_t attr, const std::string& name) const {
    const Handle type(check(H5Aget_type(attr), "type of attribute " + quoted(name)), H5Tclose);
    return H5Tget_class(type.get());
  }

  hssize_t attr_points(hid_t attr, const std::string& name) const {
    const Handle space(check(H5Aget_space(attr), "space of attribute " + quoted(name)), H5Sclose);
    return check(H5Sget_simple_extent_npoints(space.get()), "size of attribute " + quoted(name));
  }

  template <typename T>
  T scalar_attr(const std::string& object, const std::string& name, hid_t mem_type,
                std::initializer_list<H5T_class_t> classes, const std::string& wanted) const {
    const Handle attr = open_attr(object, name);
    const H5T_class_t cls = attr_class(attr.get(), name);
    if (std::find(classes.begin(), classes.end(), cls) == classes.end() || attr_points(attr.get(), name) != 1)
      wrong_attr_type(object, name, wanted);
    T value{};
    check(H5Aread(attr.get(), mem_type, &value), "reading attribute " + quoted(name));
    return value;
  }

  template <typename T>
  std::vector<T> array_attr(const std::string& object, const std::string& name, hid_t mem_type) const {
    const Handle attr = open_attr(object, name);
    if (attr_class(attr.get(), name) != H5T_INTEGER) wrong_attr_type(object, name, "an integer array");
    std::vector<T> values(static_cast<size_t>(attr_points(attr.get(), name)));
    if (!values.empty()) check(H5Aread(attr.get(), mem_type, values.data()), "reading attribute " + quoted(name));
    return values;
  }

  std::string string_attr(const std::string& object, const std::string& name) const {
    const Handle attr = open_attr(object, name);
    return read_string(attr.get(), object, name);
  }

  // Fixed-length is what mom writes; variable-length is accepted so that a foreign file's
  // `format` attribute still yields a clear "not a mom checkpoint".
  std::string read_string(hid_t attr, const std::string& object, const std::string& name) const {
    const Handle type(check(H5Aget_type(attr), "type of attribute " + quoted(name)), H5Tclose);
    if (H5Tget_class(type.get()) != H5T_STRING || attr_points(attr, name) != 1)
      wrong_attr_type(object, name, "a string");
    const std::string what = "reading attribute " + quoted(name);
    if (check(H5Tis_variable_str(type.get()), what) > 0) {
      char* text = nullptr;
      check(H5Aread(attr, type.get(), &text), what);
      std::string value = text ? text : "";
      H5free_memory(text);
      return value;
    }
    std::string value(H5Tget_size(type.get()), '\0');
    check(H5Aread(attr, type.get(), value.data()), what);
    value.erase(std::find(value.begin(), value.end(), '\0'), value.end());
    return value;
  }

  // A one-line (or, for JSON, multi-line) rendering of any attribute, for inspect.
  std::string describe_attr(const std::string& object, const std::string& name) const {
    const Handle attr = open_attr(object, name);
    const Handle type(check(H5Aget_type(attr.get()), "type of attribute " + quoted(name)), H5Tclose);
    const H5T_class_t cls = H5Tget_class(type.get());
    const hssize_t n = attr_points(attr.get(), name);
    std::ostringstream os;
    if (cls == H5T_STRING && n == 1) {
      const std::string text = read_string(attr.get(), object, name);
      const auto json = nlohmann::json::parse(text, nullptr, false);
      if (!json.is_discarded() && json.is_structured()) return json.dump(2);
      return nlohmann::json(text).dump();
    }
    if (cls == H5T_INTEGER || cls == H5T_FLOAT) {
      const bool is_signed = cls == H5T_FLOAT || H5Tget_sign(type.get()) != H5T_SGN_NONE;
      std::vector<int64_t> ints;
      std::vector<uint64_t> uints;
      std::vector<double> reals;
      const std::string what = "reading attribute " + quoted(name);
      if (cls == H5T_FLOAT)
        reals.resize(static_cast<size_t>(n));
      else if (is_signed)
        ints.resize(static_cast<size_t>(n));
      else
        uints.resize(static_cast<size_t>(n));
      if (n > 0) {
        if (cls == H5T_FLOAT)
          check(H5Aread(attr.get(), H5T_NATIVE_DOUBLE, reals.data()), what);
        else if (is_signed)
          check(H5Aread(attr.get(), H5T_NATIVE_INT64, ints.data()), what);
        else
          check(H5Aread(attr.get(), H5T_NATIVE_UINT64, uints.data()), what);
      }
      const size_t count = static_cast<size_t>(n);
      if (count != 1) os << '[';
      for (size_t i = 0; i < count; ++i) {
        if (i) os << ", ";
        if (cls == H5T_FLOAT)
          os << shortest(reals[i]);
        else if (is_signed)
          os << ints[i];
        else
          os << uints[i];
      }
      if (count != 1) os << ']';
      return os.str();
    }
    return "(" + std::to_string(n) + " values of a type mom does not write)";
  }

  std::vector<std::string> attr_names(const std::string& object) const {
    const Handle obj = open_object(object);
    std::vector<std::string> names;
    hsize_t idx = 0;
    check(H5Aiterate2(
              obj.get(), H5_INDEX_NAME, H5_ITER_INC, &idx,
              [](hid_t, const char* name, const H5A_info_t*, void* data) -> herr_t {
                static_cast<std::vector<std::string>*>(data)->push_back(name);
                return 0;
              },
              &names),
          "listing attributes of " + quoted(object_path(object)));
    std::sort(names.begin(), names.end());
    return names;
  }

  std::string dtype(hid_t ds, const std::string& name) const {
    const Handle type(check(H5Dget_type(ds), "type of " + quoted(name)), H5Tclose);
    const size_t bits = H5Tget_size(type.get()) * 8;
    switch (H5Tget_class(type.get())) {
      case H5T_FLOAT:
        return "float" + std::to_string(bits);
      case H5T_INTEGER:
        return (H5Tget_sign(type.get()) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(bits);
      case H5T_STRING:
        return "string";
      default:
        return "other";
    }
  }
};

CheckpointReader::CheckpointReader(std::filesystem::path path)
    : path_(std::move(path)), impl_(std::make_unique<Impl>()) {
  silence_hdf5();
  impl_->label = path_.string();
  const std::string& p = impl_->label;
  std::error_code ec;
  if (!std::filesystem::exists(path_, ec))
    throw UserError("checkpoint " + p +
                    " does not exist; check the path (`mom train` writes checkpoints "
                    "into the run's output folder)");
  if (std::filesystem::is_directory(path_, ec))
    throw UserError("checkpoint " + p + " is a folder; pass the checkpoint file inside it");
  if (::access(path_.c_str(), R_OK) != 0)
    throw UserError("cannot read checkpoint " + p + ": " + std::strerror(errno) + "; check its permissions");
  const htri_t is_hdf5 = H5Fis_hdf5(p.c_str());
  H5Eclear2(H5E_DEFAULT);
  if (is_hdf5 <= 0)
    throw UserError("checkpoint " + p +
                    " is not an HDF5 file (it is empty, truncated at its start, "
                    "or some other kind of file); pass a checkpoint written by mom");
  const Handle fapl(impl_->check(H5Pcreate(H5P_FILE_ACCESS), "file access list"), H5Pclose);
  impl_->check(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG), "close degree");
  const hid_t file = H5Fopen(p.c_str(), H5F_ACC_RDONLY, fapl.get());
  if (file < 0) impl_->corrupt("opening the file");
  impl_->file = Handle(file, H5Fclose);

  const std::string not_ours = "checkpoint " + p + " is an HDF5 file but not a mom checkpoint";
  if (!impl_->check(H5Aexists(file, "format"), "reading the root attributes"))
    throw UserError(not_ours + " (no 'format' attribute on /); pass a file written by `mom train`");
  const std::string format = impl_->string_attr("/", "format");
  if (format != kCheckpointFormat)
    throw UserError(not_ours + " (its 'format' is " + quoted(format) + ", expected " + quoted(kCheckpointFormat) + ")");
  const int64_t version = attr_int("/", "format_version");
  if (version > kCheckpointFormatVersion)
    throw UserError("checkpoint " + p + " has format_version " + std::to_string(version) +
                    ", newer than this mom reads (" + std::to_string(kCheckpointFormatVersion) +
                    "); upgrade mom to load it");
  if (version != kCheckpointFormatVersion)
    throw UserError("checkpoint " + p + " has format_version " + std::to_string(version) +
                    ", which no mom release wrote (this mom reads " + std::to_string(kCheckpointFormatVersion) +
                    "); the file is damaged");
}

CheckpointReader::~CheckpointReader() = default;

bool CheckpointReader::has(const std::string& dataset) const {
  return impl_->exists(object_path(dataset), H5O_TYPE_DATASET);
}

std::vector<int64_t> CheckpointReader::shape(const std::string& dataset) const {
  const Handle ds = impl_->open_dataset(dataset);
  const auto dims = impl_->dims_of(ds.get(), dataset);
  return {dims.begin(), dims.end()};
}

std::string CheckpointReader::dtype(const std::string& dataset) const {
  const Handle ds = impl_->open_dataset(dataset);
  return impl_->dtype(ds.get(), dataset);
}

std::vector<std::string> CheckpointReader::datasets() const {
  std::vector<std::string> names;
  impl_->check(H5Ovisit2(
                   impl_->file.get(), H5_INDEX_NAME, H5_ITER_INC,
                   [](hid_t, const char* name, const H5O_info_t* info, void* data) -> herr_t {
                     if (info->type == H5O_TYPE_DATASET) static_cast<std::vector<std::string>*>(data)->push_back(name);
                     return 0;
                   },
                   &names, H5O_INFO_BASIC),
               "listing the datasets");
  std::sort(names.begin(), names.end());
  return names;
}

void CheckpointReader::read(const std::string& dataset, std::span<const int64_t> expected, float* dst) const {
  impl_->read_all(dataset, expected, H5T_NATIVE_FLOAT, dst);
}

void CheckpointReader::read(const std::string& dataset, std::span<const int64_t> expected, double* dst) const {
  impl_->read_all(dataset, expected, H5T_NATIVE_DOUBLE, dst);
}

void CheckpointReader::read(const std::string& dataset, std::span<const int64_t> expected, int32_t* dst) const {
  impl_->read_all(dataset, expected, H5T_NATIVE_INT32, dst);
}

void CheckpointReader::read_rows(const std::string& dataset, int64_t begin, int64_t end, float* dst) const {
  impl_->read_rows(dataset, begin, end, H5T_NATIVE_FLOAT, dst);
}

void CheckpointReader::read_rows(const std::string& dataset, int64_t begin, int64_t end, double* dst) const {
  impl_->read_rows(dataset, begin, end, H5T_NATIVE_DOUBLE, dst);
}

void CheckpointReader::read_rows(const std::string& dataset, int64_t begin, int64_t end, int32_t* dst) const {
  impl_->read_rows(dataset, begin, end, H5T_NATIVE_INT32, dst);
}

std::string CheckpointReader::read_bytes(const std::string& dataset) const {
  const Handle ds = impl_->open_dataset(dataset);
  const Handle type(impl_->check(H5Dget_type(ds.get()), "type of " + quoted(dataset)), H5Tclose);
  const auto dims = impl_->dims_of(ds.get(), dataset);
  if (H5Tget_class(type.get()) != H5T_INTEGER || H5Tget_size(type.get()) != 1 || dims.size() != 1)
    throw UserError("dataset " + quoted(dataset_label(dataset)) + " in checkpoint " + impl_->label +
                    " is not a byte string (a 1-D uint8 dataset); the file was not written by mom");
  std::string bytes(static_cast<size_t>(dims[0]), '\0');
  impl_->read_slab(ds.get(), dataset, dims, 0, dims[0], H5T_NATIVE_UCHAR, bytes.data());
  return bytes;
}

bool CheckpointReader::has_attr(const std::string& object, const std::string& name) const {
  const Handle obj = impl_->open_object(object);
  return impl_->check(H5Aexists(obj.get(), name.c_str()), "looking up attribute " + quoted(name)) > 0;
}

std::vector<std::string> CheckpointReader::attr_names(const std::string& object) const {
  return impl_->attr_names(object);
}

int64_t CheckpointReader::attr_int(const std::string& object, const std::string& name) const {
  return impl_->scalar_attr<int64_t>(object, name, H5T_NATIVE_INT64, {H5T_INTEGER}, "an integer");
}

double CheckpointReader::attr_double(const std::string& object, const std::string& name) const {
  return impl_->scalar_attr<double>(object, name, H5T_NATIVE_DOUBLE, {H5T_FLOAT, H5T_INTEGER}, "a number");
}

std::string CheckpointReader::attr_string(const std::string& object, const std::string& name) const {
  return impl_->string_attr(object, name);
}

std::vector<uint64_t> CheckpointReader::attr_u64s(const std::string& object, const std::string& name) const {
  return impl_->array_attr<uint64_t>(object, name, H5T_NATIVE_UINT64);
}

std::vector<int64_t> CheckpointReader::attr_i64s(const std::string& object, const std::string& name) const {
  return impl_->array_attr<int64_t>(object, name, H5T_NATIVE_INT64);
}

void CheckpointReader::verify() const {
  // Attributes live in checksummed headers; reading them all makes HDF5 load every one.
  for (const auto& name : attr_names("/")) impl_->describe_attr("/", name);
  std::vector<char> buffer;
  for (const auto& name : datasets()) {
    const Handle ds = impl_->open_dataset(name);
    const auto dims = impl_->dims_of(ds.get(), name);
    // The stored type as memory type: no conversion, only the checksummed read.
    const Handle type(impl_->check(H5Dget_type(ds.get()), "type of " + quoted(name)), H5Tclose);
    size_t row_bytes = H5Tget_size(type.get());
    for (size_t i = 1; i < dims.size(); ++i) row_bytes *= dims[i];
    if (dims.empty() || dims[0] == 0 || row_bytes == 0) continue;
    const hsize_t rows_per_slab = std::max<hsize_t>(1, kVerifySlabBytes / row_bytes);
    buffer.resize(static_cast<size_t>(std::min(rows_per_slab, dims[0])) * row_bytes);
    for (hsize_t begin = 0; begin < dims[0]; begin += rows_per_slab)
      impl_->read_slab(ds.get(), name, dims, begin, std::min(dims[0], begin + rows_per_slab), type.get(),
                       buffer.data());
  }
}

// ---------------------------------------------------------------------------------------
// inspect

void inspect_checkpoint(const std::filesystem::path& path, std::ostream& out, bool verify) {
  const CheckpointReader reader(path);
  const auto& im = *reader.impl_;
  std::error_code ec;
  const auto file_bytes = std::filesystem::file_size(path, ec);

  const auto print_attrs = [&](const std::string& object, const std::string& indent) {
    for (const auto& name : reader.attr_names(object)) {
      std::string value = im.describe_attr(object, name);
      // Multi-line values (pretty JSON) start on their own line, indented under the name.
      if (value.find('\n') != std::string::npos) {
        std::string block;
        std::istringstream lines(value);
        for (std::string line; std::getline(lines, line);) block += "\n" + indent + "    " + line;
        value = block;
      } else {
        value = " " + value;
      }
      out << indent << name << " =" << value << '\n';
    }
  };

  out << "mom checkpoint " << path.string() << " (" << human_bytes(file_bytes) << " on disk)\n\n";
  out << "attributes on /:\n";
  print_attrs("/", "  ");

  const auto names = reader.datasets();
  out << "\ndatasets:\n";
  std::vector<std::string> open_groups;  // the group path components printed so far
  uint64_t total_elements = 0, total_bytes = 0;
  size_t pools = 0;
  for (const auto& name : names) {
    if (reader.has_attr(name, "pool_axis")) ++pools;
    std::vector<std::string> parts;
    for (size_t start = 0;;) {
      const size_t slash = name.find('/', start);
      parts.push_back(name.substr(start, slash - start));
      if (slash == std::string::npos) break;
      start = slash + 1;
    }
    size_t common = 0;
    while (common < open_groups.size() && common + 1 < parts.size() && open_groups[common] == parts[common]) ++common;
    open_groups.resize(common);
    std::string group;
    for (size_t i = 0; i < common; ++i) group += parts[i] + "/";
    for (size_t i = common; i + 1 < parts.size(); ++i) {
      group += parts[i];
      out << std::string(2 + 2 * i, ' ') << parts[i] << "/\n";
      print_attrs(group, std::string(6 + 2 * i, ' ') + "@");
      group += "/";
      open_groups.push_back(parts[i]);
    }

    const Handle ds = im.open_dataset(name);
    const std::string dtype = im.dtype(ds.get(), name);
    const auto dims = im.dims_of(ds.get(), name);
    const Handle type(im.check(H5Dget_type(ds.get()), "type of " + quoted(name)), H5Tclose);
    uint64_t elements = 1;
    for (hsize_t d : dims) elements *= d;
    const uint64_t bytes = elements * H5Tget_size(type.get());
    total_elements += elements;
    total_bytes += bytes;
    const std::string label = std::string(2 + 2 * (parts.size() - 1), ' ') + parts.back();
    out << std::left << std::setw(36) << label << ' ' << std::setw(8) << dtype << ' ' << std::setw(20)
        << shape_text(std::vector<int64_t>(dims.begin(), dims.end())) << std::right << std::setw(12) << elements
        << " elements  " << human_bytes(bytes) << '\n';
    print_attrs(name, std::string(4 + 2 * (parts.size() - 1), ' ') + "@");
  }
  out << "\ntotal: " << names.size() << " datasets, " << total_elements << " elements, " << total_bytes << " bytes ("
      << human_bytes(total_bytes) << ")\n";
  out << "layout: one file; " << pools << " module-pool datasets (@pool_axis) are stored whole along their global "
      << "module axis (axis 0), and a rank of an expert-parallel group of any size that divides the pool reads "
      << "its contiguous block of modules; everything else is replicated on every rank\n";
  if (verify) {
    reader.verify();
    out << "verify: every dataset and attribute read back with valid checksums\n";
  }
}

}  // namespace mom::io
