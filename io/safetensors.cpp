// Safetensors reader and writer (see safetensors.h for the why).
//
// Why built this way: the header is parsed with nlohmann::json (already a dependency) and
// then checked field by field, because a malformed or hostile header must end in a message,
// never in an out-of-bounds read of the mapping. Offsets and sizes are checked with
// overflow-safe arithmetic for the same reason. The host is little-endian (static_assert),
// like the file, so F32 data is copied as is.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <utility>

#include "core/error.h"

namespace mom::io {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian; so must the host be");

namespace {

struct DTypeName {
  StDType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeName kDTypes[] = {
    {StDType::BOOL, "BOOL", 1}, {StDType::U8, "U8", 1},     {StDType::I8, "I8", 1},
    {StDType::U16, "U16", 2},   {StDType::I16, "I16", 2},   {StDType::F16, "F16", 2},
    {StDType::BF16, "BF16", 2}, {StDType::U32, "U32", 4},   {StDType::I32, "I32", 4},
    {StDType::F32, "F32", 4},   {StDType::U64, "U64", 8},   {StDType::I64, "I64", 8},
    {StDType::F64, "F64", 8},   {StDType::F8_E4M3, "F8_E4M3", 1}, {StDType::F8_E5M2, "F8_E5M2", 1},
};

std::string known_dtypes() {
  std::string s;
  for (const auto& d : kDTypes) s += (s.empty() ? "" : ", ") + std::string(d.name);
  return s;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// A non-negative integer that fits in int64 (JSON numbers may be negative, fractional or huge).
bool as_count(const nlohmann::json& j, uint64_t& out) {
  if (j.is_number_unsigned()) out = j.get<uint64_t>();
  else if (j.is_number_integer() && j.get<int64_t>() >= 0) out = static_cast<uint64_t>(j.get<int64_t>());
  else return false;
  return out <= static_cast<uint64_t>(INT64_MAX);
}

void fsync_or_throw(const std::filesystem::path& p, int flags, const std::string& what) {
  const int fd = ::open(p.c_str(), flags);
  if (fd < 0 || ::fsync(fd) != 0) {
    const std::string reason = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    throw UserError("cannot sync " + what + " " + p.string() + ": " + reason + "; check the disk, then write again");
  }
  ::close(fd);
}

}  // namespace

const char* st_dtype_name(StDType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d.name;
  return "?";
}

size_t st_dtype_size(StDType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d.size;
  return 0;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf, or NaN keeping its payload
  } else if (exp != 0) {
    bits = sign | ((exp + (127 - 15)) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;  // ±0
  } else {
    // Subnormal mant·2^-24: shift the leading 1 up to the implicit bit, one exponent step
    // per shift; every half subnormal is a normal float.
    uint32_t e = 127 - 15 + 1;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

int64_t StTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------------------------------
// Reader

SafetensorsReader::SafetensorsReader(const std::filesystem::path& path) : path_(path) {
  const std::string file = "safetensors file " + path.string();
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0)
    throw UserError("cannot open " + file + ": " + std::strerror(errno) + "; check the path and its permissions");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw UserError(file + " is not a regular file; pass the model.safetensors file itself");
  }
  map_size_ = static_cast<size_t>(st.st_size);
  if (map_size_ < 8) {
    ::close(fd);
    throw UserError(file + " is " + std::to_string(map_size_) +
                    " bytes long, too short for the 8-byte header length; it is truncated or not a "
                    "safetensors file, download it again");
  }
  void* m = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) throw UserError("cannot map " + file + " into memory: " + std::strerror(errno));
  map_ = static_cast<const std::byte*>(m);

  // From here on a throw must unmap: the destructor does not run for a failed constructor.
  try {
    uint64_t header_len = 0;
    std::memcpy(&header_len, map_, 8);
    if (header_len > map_size_ - 8)
      throw UserError(file + " declares a " + std::to_string(header_len) + "-byte header but only " +
                      std::to_string(map_size_ - 8) +
                      " bytes follow the length field; the file is truncated or not a safetensors file, "
                      "download it again");
    data_ = map_ + 8 + header_len;
    const uint64_t data_size = map_size_ - 8 - header_len;
    const char* text = reinterpret_cast<const char*>(map_ + 8);
    const nlohmann::json header = nlohmann::json::parse(text, text + header_len, nullptr, false);
    if (header.is_discarded())
      throw UserError(file + " has a header that is not valid JSON; the file is damaged or not a "
                      "safetensors file, download it again");
    if (!header.is_object())
      throw UserError(file + " has a JSON header that is not an object; it is not a safetensors file");

    std::vector<const StTensorInfo*> by_offset;
    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& name = it.key();
      const nlohmann::json& e = *it;
      if (name == "__metadata__") {
        // Free-form strings (e.g. {"format": "pt"}); anything else is a malformed file.
        if (!e.is_object())
          throw UserError(file + ": \"__metadata__\" must be an object of strings");
        for (auto m2 = e.begin(); m2 != e.end(); ++m2) {
          if (!m2->is_string())
            throw UserError(file + ": \"__metadata__\" entry '" + m2.key() + "' must be a string");
          metadata_[m2.key()] = m2->get<std::string>();
        }
        continue;
      }
      const std::string where = "tensor '" + name + "' in " + file;
      if (!e.is_object()) throw UserError(where + " is not described by a JSON object");
      for (const char* key : {"dtype", "shape", "data_offsets"})
        if (!e.contains(key))
          throw UserError(where + " has no \"" + key + "\" in the header; the file is malformed, download it again");
      StTensorInfo info;
      info.name = name;
      if (!e["dtype"].is_string()) throw UserError(where + " has a \"dtype\" that is not a string");
      const std::string dtype = e["dtype"];
      const auto d = std::find_if(std::begin(kDTypes), std::end(kDTypes),
                                  [&](const DTypeName& k) { return dtype == k.name; });
      if (d == std::end(kDTypes))
        throw UserError(where + " has unknown dtype '" + dtype + "' (safetensors dtypes are " + known_dtypes() + ")");
      info.dtype = d->dtype;
      if (!e["shape"].is_array()) throw UserError(where + " has a \"shape\" that is not an array");
      uint64_t numel = 1;
      for (const auto& dim : e["shape"]) {
        uint64_t v = 0;
        if (!as_count(dim, v)) throw UserError(where + " has a shape entry " + dim.dump() + " that is not a size");
        if (__builtin_mul_overflow(numel, v, &numel))
          throw UserError(where + " has a shape " + e["shape"].dump() + " too large to exist");
        info.shape.push_back(static_cast<int64_t>(v));
      }
      const auto& off = e["data_offsets"];
      if (!off.is_array() || off.size() != 2 || !as_count(off[0], info.begin) || !as_count(off[1], info.end))
        throw UserError(where + " has \"data_offsets\" " + off.dump() + "; expected [begin, end] byte offsets");
      if (info.begin > info.end)
        throw UserError(where + " has data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                        "] with begin > end; the header is corrupt");
      if (info.end > data_size)
        throw UserError(where + " has data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                        "] beyond the " + std::to_string(data_size) +
                        "-byte data area; the file is truncated or corrupt, download it again");
      uint64_t bytes = 0;
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d->size), &bytes))
        throw UserError(where + " has a shape " + shape_text(info.shape) + " too large to exist");
      if (bytes != info.end - info.begin)
        throw UserError(where + " holds " + std::to_string(info.end - info.begin) + " bytes but its shape " +
                        shape_text(info.shape) + " of " + d->name + " needs " + std::to_string(bytes) +
                        "; the header is corrupt");
      by_offset.push_back(&tensors_.emplace(name, std::move(info)).first->second);
    }
    // Two tensors sharing bytes would alias one another: a corrupt or hostile header.
    std::sort(by_offset.begin(), by_offset.end(),
              [](const StTensorInfo* a, const StTensorInfo* b) { return a->begin < b->begin; });
    const StTensorInfo* prev = nullptr;
    for (const StTensorInfo* t : by_offset) {
      if (t->begin == t->end) continue;  // empty tensors occupy no bytes
      if (prev && t->begin < prev->end)
        throw UserError("tensors '" + prev->name + "' [" + std::to_string(prev->begin) + ", " +
                        std::to_string(prev->end) + ") and '" + t->name + "' [" + std::to_string(t->begin) + ", " +
                        std::to_string(t->end) + ") overlap in " + file + "; the header is corrupt");
      prev = t;
    }
  } catch (...) {
    ::munmap(const_cast<std::byte*>(map_), map_size_);
    throw;
  }
}

SafetensorsReader::~SafetensorsReader() { ::munmap(const_cast<std::byte*>(map_), map_size_); }

std::vector<std::string> SafetensorsReader::names() const {
  std::vector<std::string> out;
  for (const auto& [name, info] : tensors_) out.push_back(name);
  return out;
}

const StTensorInfo& SafetensorsReader::info(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end())
    throw UserError("safetensors file " + path_.string() + " has no tensor '" + name + "'");
  return it->second;
}

std::span<const std::byte> SafetensorsReader::bytes(const std::string& name) const {
  const StTensorInfo& t = info(name);
  return {data_ + t.begin, static_cast<size_t>(t.end - t.begin)};
}

std::vector<float> SafetensorsReader::read_f32(const std::string& name) const {
  const StTensorInfo& t = info(name);
  const auto raw = bytes(name);
  std::vector<float> out(static_cast<size_t>(t.numel()));
  switch (t.dtype) {
    case StDType::F32:
      if (!out.empty()) std::memcpy(out.data(), raw.data(), raw.size());
      break;
    case StDType::F16:
    case StDType::BF16: {
      const bool f16 = t.dtype == StDType::F16;
      for (size_t i = 0; i < out.size(); ++i) {
        uint16_t h;
        std::memcpy(&h, raw.data() + 2 * i, 2);  // the data area need not be 2-byte aligned
        out[i] = f16 ? f16_to_f32(h) : bf16_to_f32(h);
      }
      break;
    }
    default:
      throw UserError("tensor '" + name + "' in safetensors file " + path_.string() + " has dtype " +
                      st_dtype_name(t.dtype) + "; mom reads weights only as F32, F16 or BF16");
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Writer

void write_safetensors(const std::filesystem::path& path, const std::vector<StTensorView>& tensors,
                       const std::map<std::string, std::string>& metadata, bool overwrite) {
  std::error_code ec;
  if (std::filesystem::exists(path, ec) && !overwrite)
    throw UserError(path.string() + " exists; pass --force to replace it");

  // Data in name order, the same order as the (sorted) header keys.
  std::vector<const StTensorView*> order;
  for (const auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const StTensorView* a, const StTensorView* b) { return a->name < b->name; });
  nlohmann::json header = nlohmann::json::object();  // std::map underneath: keys sorted
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const StTensorView* t : order) {
    if (t->name == "__metadata__" || header.contains(t->name))
      throw std::invalid_argument("write_safetensors: tensor name '" + t->name + "' is reserved or repeated");
    uint64_t numel = 1;
    for (int64_t d : t->shape) numel *= static_cast<uint64_t>(d);
    if (numel * st_dtype_size(t->dtype) != t->data.size())
      throw std::invalid_argument("write_safetensors: tensor '" + t->name + "' has " +
                                  std::to_string(t->data.size()) + " bytes for shape " + shape_text(t->shape));
    header[t->name] = {{"dtype", st_dtype_name(t->dtype)},
                       {"shape", t->shape},
                       {"data_offsets", {offset, offset + t->data.size()}}};
    offset += t->data.size();
  }
  std::string text = header.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');  // data starts 8-byte aligned
  const uint64_t header_len = text.size();

  std::filesystem::path temp = path;
  temp += ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(temp.c_str(), "wb");
  if (!f)
    throw UserError("cannot create " + temp.string() + ": " + std::strerror(errno) + "; check that the folder " +
                    path.parent_path().string() + " exists and is writable");
  bool ok = std::fwrite(&header_len, 8, 1, f) == 1 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
  for (const StTensorView* t : order)
    ok = ok && (t->data.empty() || std::fwrite(t->data.data(), 1, t->data.size(), f) == t->data.size());
  const int saved_errno = errno;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::filesystem::remove(temp, ec);
    throw UserError("cannot write " + path.string() + ": " + std::strerror(saved_errno) +
                    "; check free disk space, then write again");
  }
  fsync_or_throw(temp, O_RDONLY, "file");
  std::filesystem::rename(temp, path, ec);
  if (ec) {
    const std::string reason = ec.message();
    std::filesystem::remove(temp, ec);
    throw UserError("cannot move " + temp.string() + " to " + path.string() + ": " + reason);
  }
  fsync_or_throw(path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path(), O_RDONLY | O_DIRECTORY,
                 "folder");
}

}  // namespace mom::io
