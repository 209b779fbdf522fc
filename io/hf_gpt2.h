// Hugging Face GPT-2 <-> mom: config and tensor-name mapping, both directions.
//
// Why built this way:
// - It works on host float tensors keyed by our parameter names (the names under `params/`
//   in a checkpoint), not on a model: io sits below core, and keeping the mapping free of
//   backends lets the command (jobs/cmd_convert.cpp) decide how tensors reach a model or a
//   checkpoint. The mapping itself is one table (hf_gpt2_name_map), which the docs and tests
//   print and check.
// - Hugging Face's GPT-2 keeps one tensor per layer and uses Conv1D, whose weights are
//   [in, out]; ours are stacked along a leading layer axis and [out, in] (nn.Linear). So
//   conversion slices or stacks along the layer axis and transposes the four linear weights.
//   Transposing and stacking move bits without arithmetic, so F32 HF -> ours -> HF is
//   bit-identical.
// - A checkpoint from the hub is checked as a whole before anything is written: every
//   missing, unexpected, mis-shaped or non-float tensor is collected and reported in one
//   message, because fixing them one run at a time is slow.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/gpt2.h"
#include "io/safetensors.h"

namespace mom::io {

struct HostTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;  // row-major
};
// Our parameters by name ("wte", "blocks/attn_qkv_weight", ...), in our layout.
using HostTensors = std::map<std::string, HostTensor>;

// One Hugging Face tensor and where it lives among ours.
struct HfGpt2Mapping {
  std::string hf;                  // name without the "transformer." prefix, e.g. "h.3.attn.c_attn.weight"
  std::vector<int64_t> hf_shape;   // e.g. [C, 3C]
  std::string ours;                // e.g. "blocks/attn_qkv_weight"
  int layer = -1;                  // index along our leading layer axis; -1: the whole tensor
  bool transpose = false;          // Conv1D weight: ours[layer] is its transpose
};
// Every tensor of a GPT2LMHeadModel of shape `c` (tied lm_head and mask buffers excluded).
std::vector<HfGpt2Mapping> hf_gpt2_name_map(const Gpt2Config& c);

// Reads a GPT-2 config.json (already parsed); UserError naming `origin` and the key when it
// is another architecture or a variant mom does not compute (activation, attention scaling).
Gpt2Config hf_gpt2_config_from_json(const nlohmann::json& j, const std::string& origin);
// The config.json that GPT2LMHeadModel.from_pretrained reads for a model of shape `c`.
nlohmann::json hf_gpt2_config_to_json(const Gpt2Config& c);

// Our parameters from a GPT-2 safetensors file (keys with or without "transformer.";
// F32, F16 or BF16, widened to float exactly). Lists every problem in one UserError.
HostTensors hf_gpt2_params_from_safetensors(const SafetensorsReader& st, const Gpt2Config& c);

struct HfGpt2Dir {
  Gpt2Config config;
  HostTensors params;
  bool has_tokenizer = false;  // vocab.json and merges.txt were both present
  std::string vocab_json, merges_txt;
};
// Reads `dir`/config.json, `dir`/model.safetensors and, when both exist, the tokenizer files.
HfGpt2Dir read_hf_gpt2_dir(const std::filesystem::path& dir);
// Writes config.json, model.safetensors (F32, "transformer." keys, no lm_head: it is tied)
// and, when `has_tokenizer`, vocab.json + merges.txt into `dir` (created when missing). When
// any of those files exists and !overwrite, throws UserError listing them before writing.
void write_hf_gpt2_dir(const std::filesystem::path& dir, const Gpt2Config& c, const HostTensors& params,
                       bool has_tokenizer, const std::string& vocab_json, const std::string& merges_txt,
                       bool overwrite);

}  // namespace mom::io
