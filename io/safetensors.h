// Safetensors files (Hugging Face's tensor format): a memory-mapped reader and a writer.
//
// Why built this way:
// - The format is an 8-byte little-endian header length, a JSON header mapping each tensor
//   name to {dtype, shape, data_offsets} (plus an optional "__metadata__" string map), then
//   the raw little-endian tensor bytes. Hub files reach many GiB, so the reader maps the file
//   and hands out views; nothing is copied until a tensor is converted.
// - A downloaded file is untrusted input: every header field is checked (types, known dtype,
//   offsets inside the data area, no two tensors overlapping, byte size = numel × element
//   size) before any view is given out, and every failure is a mom::UserError naming the
//   file and the tensor, never a crash or a read past the end of the mapping.
// - All standard safetensors dtypes are understood structurally, so a file holding, say, a
//   bool mask buffer opens fine; only F32, F16 and BF16 convert to float (read_f32), because
//   those are the weight types. F16/BF16 widening is written out bit by bit (subnormals,
//   infinities and NaN payloads included) so it is exact and independent of compiler support
//   for half types.
// - The writer produces what Hugging Face's library writes: compact JSON with sorted keys,
//   padded with spaces to a multiple of 8 bytes so that the data starts aligned, tensors
//   packed back to back in name order. It writes `<path>.tmp.<pid>`, fsyncs and renames, so
//   an interrupted export never leaves a half-written file under the final name.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace mom::io {

// Element types of the safetensors format. Only F32, F16 and BF16 convert to float.
enum class StDType { BOOL, U8, I8, U16, I16, F16, BF16, U32, I32, F32, U64, I64, F64, F8_E4M3, F8_E5M2 };

const char* st_dtype_name(StDType dtype);  // "F32", "BF16", ...
size_t st_dtype_size(StDType dtype);       // bytes per element

// Exact widening of IEEE binary16 and bfloat16 bit patterns to float32.
float f16_to_f32(uint16_t bits);
float bf16_to_f32(uint16_t bits);

struct StTensorInfo {
  std::string name;
  StDType dtype = StDType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets into the data area (after the header)
  int64_t numel() const;
};

class SafetensorsReader {
 public:
  // Maps `path` and validates its header; throws UserError naming the file on any defect.
  explicit SafetensorsReader(const std::filesystem::path& path);
  ~SafetensorsReader();
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // Tensor names, sorted.
  std::vector<std::string> names() const;
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  // Throws UserError naming the file when `name` is absent.
  const StTensorInfo& info(const std::string& name) const;
  // The tensor's raw little-endian bytes, inside the mapping (valid while the reader lives).
  std::span<const std::byte> bytes(const std::string& name) const;
  // The tensor as float32 (F16/BF16 widened exactly); other dtypes throw UserError.
  std::vector<float> read_f32(const std::string& name) const;
  // The "__metadata__" string map (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::filesystem::path path_;
  const std::byte* map_ = nullptr;
  size_t map_size_ = 0;
  const std::byte* data_ = nullptr;  // start of the data area
  std::map<std::string, StTensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write: `data` holds numel × element-size little-endian bytes.
struct StTensorView {
  std::string name;
  StDType dtype = StDType::F32;
  std::vector<int64_t> shape;
  std::span<const std::byte> data;
};

// Writes `tensors` (unique names, none "__metadata__") to `path`; an existing file is
// replaced only when `overwrite` (else UserError, the file left untouched).
void write_safetensors(const std::filesystem::path& path, const std::vector<StTensorView>& tensors,
                       const std::map<std::string, std::string>& metadata, bool overwrite);

}  // namespace mom::io
