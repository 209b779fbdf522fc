// Hugging Face GPT-2 conversion (see hf_gpt2.h for the why).
//
// Why built this way: both directions walk the same table (hf_gpt2_name_map), so a name or
// a transpose cannot be right one way and wrong the other. Validation of an incoming file
// collects problems into lists and throws once, naming each tensor with the exact key the
// file uses (with or without the "transformer." prefix).
#include "io/hf_gpt2.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>

#include "core/error.h"

namespace mom::io {

namespace {

constexpr const char* kPrefix = "transformer.";

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string join(const std::vector<std::string>& items) {
  std::string s;
  for (const auto& i : items) s += (s.empty() ? "" : ", ") + i;
  return s;
}

// Our per-layer slice (or whole tensor) shape in nn.Linear order; HF's is its transpose
// when `transpose`.
struct Rule {
  const char* ours;
  const char* hf;  // without "h.{i}." for per-layer tensors
  bool per_layer;
  bool transpose;
  std::vector<int64_t> slice;
};

std::vector<Rule> rules(const Gpt2Config& c) {
  const int64_t V = c.vocab_size, P = c.n_ctx, C = c.n_embd;
  return {
      {"wte", "wte.weight", false, false, {V, C}},
      {"wpe", "wpe.weight", false, false, {P, C}},
      {"blocks/ln1_weight", "ln_1.weight", true, false, {C}},
      {"blocks/ln1_bias", "ln_1.bias", true, false, {C}},
      {"blocks/attn_qkv_weight", "attn.c_attn.weight", true, true, {3 * C, C}},
      {"blocks/attn_qkv_bias", "attn.c_attn.bias", true, false, {3 * C}},
      {"blocks/attn_proj_weight", "attn.c_proj.weight", true, true, {C, C}},
      {"blocks/attn_proj_bias", "attn.c_proj.bias", true, false, {C}},
      {"blocks/ln2_weight", "ln_2.weight", true, false, {C}},
      {"blocks/ln2_bias", "ln_2.bias", true, false, {C}},
      {"blocks/mlp_fc_weight", "mlp.c_fc.weight", true, true, {4 * C, C}},
      {"blocks/mlp_fc_bias", "mlp.c_fc.bias", true, false, {4 * C}},
      {"blocks/mlp_proj_weight", "mlp.c_proj.weight", true, true, {C, 4 * C}},
      {"blocks/mlp_proj_bias", "mlp.c_proj.bias", true, false, {C}},
      {"ln_f_weight", "ln_f.weight", false, false, {C}},
      {"ln_f_bias", "ln_f.bias", false, false, {C}},
  };
}

std::vector<int64_t> our_shape(const Rule& r, const Gpt2Config& c) {
  std::vector<int64_t> s = r.slice;
  if (r.per_layer) s.insert(s.begin(), c.n_layer);
  return s;
}

// dst[o][i] = src[i][o] for src [rows, cols].
void transpose_into(const float* src, int64_t rows, int64_t cols, float* dst) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t o = 0; o < cols; ++o) dst[o * rows + i] = src[i * cols + o];
}

int64_t numel(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

// Writes `bytes` to `path` through a temporary file and a rename, like the other writers.
void write_file_atomic(const std::filesystem::path& path, const std::string& bytes) {
  std::filesystem::path temp = path;
  temp += ".tmp." + std::to_string(::getpid());
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  bool ok = fd >= 0;
  for (size_t done = 0; ok && done < bytes.size();) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) done += static_cast<size_t>(n);
  }
  ok = ok && ::fsync(fd) == 0;
  const int saved_errno = errno;
  if (fd >= 0) ::close(fd);
  std::error_code ec;
  if (ok) std::filesystem::rename(temp, path, ec);
  if (!ok || ec) {
    const std::string reason = ok ? ec.message() : std::strerror(saved_errno);
    std::filesystem::remove(temp, ec);
    throw UserError("cannot write " + path.string() + ": " + reason +
                    "; check that the folder is writable and has free space");
  }
}

std::string read_whole_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError("cannot read " + path.string() + ": check its permissions");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::vector<HfGpt2Mapping> hf_gpt2_name_map(const Gpt2Config& c) {
  std::vector<HfGpt2Mapping> out;
  for (const Rule& r : rules(c)) {
    std::vector<int64_t> hf_shape = r.slice;
    if (r.transpose) std::reverse(hf_shape.begin(), hf_shape.end());
    if (!r.per_layer) {
      out.push_back({r.hf, hf_shape, r.ours, -1, r.transpose});
      continue;
    }
    for (int l = 0; l < c.n_layer; ++l)
      out.push_back({"h." + std::to_string(l) + "." + r.hf, hf_shape, r.ours, l, r.transpose});
  }
  return out;
}

Gpt2Config hf_gpt2_config_from_json(const nlohmann::json& j, const std::string& origin) {
  require(j.is_object(), origin + " is not a JSON object; expected a Hugging Face GPT-2 config.json");
  const bool has_type = j.contains("model_type"), has_arch = j.contains("architectures");
  require(has_type || has_arch, origin + " has neither \"model_type\" nor \"architectures\"; mom converts "
                                         "GPT-2 models (model_type \"gpt2\", GPT2LMHeadModel)");
  if (has_type) {
    const std::string type = j["model_type"].is_string() ? j["model_type"].get<std::string>() : j["model_type"].dump();
    require(type == "gpt2", origin + " describes a model of type '" + type +
                                "', but mom converts only GPT-2 (model_type \"gpt2\")");
  }
  if (has_arch) {
    require(j["architectures"].is_array(), origin + ": \"architectures\" must be an array");
    for (const auto& a : j["architectures"]) {
      const std::string arch = a.is_string() ? a.get<std::string>() : a.dump();
      require(arch == "GPT2LMHeadModel" || arch == "GPT2Model",
              origin + " lists architecture '" + arch + "', but mom converts only GPT2LMHeadModel (or GPT2Model)");
    }
  }
  const auto integer = [&](const char* key) -> int {
    require(j.contains(key), origin + " has no \"" + key + "\"; a GPT-2 config.json must give it");
    const auto& v = j[key];
    require(v.is_number_integer() && v.get<int64_t>() > 0 && v.get<int64_t>() <= INT32_MAX,
            origin + ": \"" + key + "\" must be a positive integer, got " + v.dump());
    return static_cast<int>(v.get<int64_t>());
  };
  Gpt2Config c;
  c.n_layer = integer("n_layer");
  c.n_head = integer("n_head");
  c.n_embd = integer("n_embd");
  c.vocab_size = integer("vocab_size");
  c.n_ctx = integer(j.contains("n_positions") ? "n_positions" : "n_ctx");
  if (j.contains("layer_norm_epsilon")) {
    const auto& v = j["layer_norm_epsilon"];
    require(v.is_number() && v.get<double>() > 0,
            origin + ": \"layer_norm_epsilon\" must be a positive number, got " + v.dump());
    c.ln_eps = v.get<double>();
  }
  // GPT2Config's defaults when a key is absent: gelu_new, 4·n_embd inner width, 1/sqrt(d) scaling.
  const std::string act =
      j.contains("activation_function") && j["activation_function"].is_string() ? j["activation_function"].get<std::string>()
      : j.contains("activation_function")                                      ? j["activation_function"].dump()
                                                                               : "gelu_new";
  require(act == "gelu_new" || act == "gelu_pytorch_tanh",
          origin + ": \"activation_function\" is '" + act +
              "', but mom computes GPT-2's tanh GELU only (\"gelu_new\" or \"gelu_pytorch_tanh\")");
  if (j.contains("n_inner") && !j["n_inner"].is_null())
    require(j["n_inner"] == nlohmann::json(4 * static_cast<int64_t>(c.n_embd)),
            origin + ": \"n_inner\" is " + j["n_inner"].dump() + ", but mom's MLP is 4 × n_embd = " +
                std::to_string(4 * static_cast<int64_t>(c.n_embd)) + " wide");
  const auto flag = [&](const char* key, bool expected, const std::string& why) {
    if (j.contains(key))
      require(j[key] == nlohmann::json(expected), origin + ": \"" + key + "\" is " + j[key].dump() + ", " + why);
  };
  flag("scale_attn_weights", true, "but mom always scales attention scores by 1/sqrt(head size)");
  flag("scale_attn_by_inverse_layer_idx", false, "but mom does not scale attention by layer index");
  flag("add_cross_attention", false, "but mom's GPT-2 has no cross-attention");
  flag("tie_word_embeddings", true, "but mom's output head is always tied to the token embedding");
  return c;
}

nlohmann::json hf_gpt2_config_to_json(const Gpt2Config& c) {
  // What GPT2Config.save_pretrained writes, with dropout off because mom trains without it.
  return {
      {"activation_function", "gelu_new"},
      {"architectures", {"GPT2LMHeadModel"}},
      {"attn_pdrop", 0.0},
      {"bos_token_id", 50256},
      {"embd_pdrop", 0.0},
      {"eos_token_id", 50256},
      {"initializer_range", 0.02},
      {"layer_norm_epsilon", c.ln_eps},
      {"model_type", "gpt2"},
      {"n_ctx", c.n_ctx},
      {"n_embd", c.n_embd},
      {"n_head", c.n_head},
      {"n_inner", nullptr},
      {"n_layer", c.n_layer},
      {"n_positions", c.n_ctx},
      {"reorder_and_upcast_attn", false},
      {"resid_pdrop", 0.0},
      {"scale_attn_by_inverse_layer_idx", false},
      {"scale_attn_weights", true},
      {"tie_word_embeddings", true},
      {"torch_dtype", "float32"},
      {"use_cache", true},
      {"vocab_size", c.vocab_size},
  };
}

HostTensors hf_gpt2_params_from_safetensors(const SafetensorsReader& st, const Gpt2Config& c) {
  const std::string file = st.path().string();
  // Keys as the file spells them, by name without the prefix.
  std::map<std::string, std::string> key_of;
  std::vector<std::string> unexpected, wrong_shape, wrong_dtype;
  bool prefixed = false;
  for (const std::string& key : st.names()) {
    const bool p = key.rfind(kPrefix, 0) == 0;
    prefixed = prefixed || p;
    const std::string bare = p ? key.substr(std::strlen(kPrefix)) : key;
    if (!key_of.emplace(bare, key).second) unexpected.push_back(key + " (duplicates " + key_of[bare] + ")");
  }
  const auto mapping = hf_gpt2_name_map(c);
  std::set<std::string> known;
  std::vector<std::string> missing;
  const auto check = [&](const std::string& bare, const std::vector<int64_t>& shape) {
    const auto it = key_of.find(bare);
    if (it == key_of.end()) {
      missing.push_back((prefixed ? kPrefix : "") + bare);
      return;
    }
    const StTensorInfo& info = st.info(it->second);
    if (info.shape != shape)
      wrong_shape.push_back(it->second + " is " + shape_text(info.shape) + ", expected " + shape_text(shape));
    if (info.dtype != StDType::F32 && info.dtype != StDType::F16 && info.dtype != StDType::BF16)
      wrong_dtype.push_back(it->second + " is " + st_dtype_name(info.dtype));
  };
  for (const auto& m : mapping) {
    known.insert(m.hf);
    check(m.hf, m.hf_shape);
  }
  // lm_head is optional (tied); its shape and dtype are checked like the rest.
  const bool has_head = key_of.count("lm_head.weight") != 0;
  if (has_head) check("lm_head.weight", {c.vocab_size, c.n_embd});
  known.insert("lm_head.weight");
  // Causal-mask buffers of older transformers versions: constants, not weights.
  for (int l = 0; l < c.n_layer; ++l) {
    known.insert("h." + std::to_string(l) + ".attn.bias");
    known.insert("h." + std::to_string(l) + ".attn.masked_bias");
  }
  for (const auto& [bare, key] : key_of)
    if (!known.count(bare)) unexpected.push_back(key);

  if (!missing.empty() || !unexpected.empty() || !wrong_shape.empty() || !wrong_dtype.empty()) {
    std::string msg = "safetensors file " + file + " does not match a GPT-2 with n_layer=" + std::to_string(c.n_layer) +
                      ", n_embd=" + std::to_string(c.n_embd) + ", vocab_size=" + std::to_string(c.vocab_size) +
                      ", n_positions=" + std::to_string(c.n_ctx) + " (from config.json):";
    if (!missing.empty()) msg += "\n  missing tensors (" + std::to_string(missing.size()) + "): " + join(missing);
    if (!unexpected.empty())
      msg += "\n  unexpected tensors (" + std::to_string(unexpected.size()) + "): " + join(unexpected);
    if (!wrong_shape.empty())
      msg += "\n  wrong shapes (" + std::to_string(wrong_shape.size()) + "): " + join(wrong_shape);
    if (!wrong_dtype.empty())
      msg += "\n  not F32/F16/BF16 (" + std::to_string(wrong_dtype.size()) + "): " + join(wrong_dtype);
    msg += "\ncheck that config.json belongs to this model file and that it is a GPT-2 (GPT2LMHeadModel) export";
    throw UserError(msg);
  }

  HostTensors out;
  for (const Rule& r : rules(c)) {
    HostTensor& t = out[r.ours];
    t.shape = our_shape(r, c);
    t.data.resize(static_cast<size_t>(numel(t.shape)));
  }
  for (const auto& m : mapping) {
    HostTensor& t = out[m.ours];
    const std::vector<float> src = st.read_f32(key_of[m.hf]);
    float* dst = t.data.data() + (m.layer < 0 ? 0 : static_cast<size_t>(m.layer) * src.size());
    if (m.transpose) transpose_into(src.data(), m.hf_shape[0], m.hf_shape[1], dst);
    else std::copy(src.begin(), src.end(), dst);
  }
  if (has_head) {
    const std::vector<float> head = st.read_f32(key_of["lm_head.weight"]);
    const std::vector<float>& wte = out["wte"].data;
    require(std::memcmp(head.data(), wte.data(), head.size() * sizeof(float)) == 0,
            "tensor " + key_of["lm_head.weight"] + " in " + file + " differs from " + key_of["wte.weight"] +
                ": the model's output head is not tied to its token embedding, and mom's GPT-2 always ties "
                "them, so it cannot be converted");
  }
  return out;
}

HfGpt2Dir read_hf_gpt2_dir(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  require(fs::is_directory(dir, ec), "Hugging Face model folder " + dir.string() +
                                         " does not exist or is not a folder; pass the folder holding "
                                         "config.json and model.safetensors");
  const fs::path config_path = dir / "config.json", weights = dir / "model.safetensors";
  require(fs::exists(config_path, ec), "Hugging Face model folder " + dir.string() +
                                           " has no config.json; download it with the model");
  if (!fs::exists(weights, ec)) {
    std::string hint = "download the model's model.safetensors";
    if (fs::exists(dir / "model.safetensors.index.json", ec))
      hint = "the model is split into shards, which mom does not read; save it unsharded "
             "(save_pretrained(..., max_shard_size=\"100GB\"))";
    else if (fs::exists(dir / "pytorch_model.bin", ec))
      hint = "it holds only pytorch_model.bin; save it as safetensors (save_pretrained(..., safe_serialization=True))";
    throw UserError("Hugging Face model folder " + dir.string() + " has no model.safetensors; " + hint);
  }
  const nlohmann::json j = nlohmann::json::parse(read_whole_file(config_path), nullptr, false);
  require(!j.is_discarded(), config_path.string() + " is not valid JSON; download it again");
  HfGpt2Dir out;
  out.config = hf_gpt2_config_from_json(j, config_path.string());
  const SafetensorsReader st(weights);
  out.params = hf_gpt2_params_from_safetensors(st, out.config);
  const fs::path vocab = dir / "vocab.json", merges = dir / "merges.txt";
  out.has_tokenizer = fs::exists(vocab, ec) && fs::exists(merges, ec);
  if (out.has_tokenizer) {
    out.vocab_json = read_whole_file(vocab);
    out.merges_txt = read_whole_file(merges);
  }
  return out;
}

void write_hf_gpt2_dir(const std::filesystem::path& dir, const Gpt2Config& c, const HostTensors& params,
                       bool has_tokenizer, const std::string& vocab_json, const std::string& merges_txt,
                       bool overwrite) {
  namespace fs = std::filesystem;
  std::vector<std::string> files = {"config.json", "model.safetensors"};
  if (has_tokenizer) files.insert(files.end(), {"vocab.json", "merges.txt"});
  std::error_code ec;
  if (!overwrite) {
    std::vector<std::string> existing;
    for (const auto& f : files)
      if (fs::exists(dir / f, ec)) existing.push_back((dir / f).string());
    require(existing.empty(), "not replacing " + join(existing) + "; pass --force to overwrite");
  }
  fs::create_directories(dir, ec);
  require(fs::is_directory(dir, ec), "cannot create the folder " + dir.string() + "; check the path and permissions");

  // Our tensors -> one F32 buffer per HF tensor, in the layout GPT2LMHeadModel saves.
  const auto mapping = hf_gpt2_name_map(c);
  std::vector<std::vector<float>> buffers;
  buffers.reserve(mapping.size());
  std::vector<StTensorView> views;
  for (const auto& m : mapping) {
    const auto it = params.find(m.ours);
    if (it == params.end()) throw std::invalid_argument("write_hf_gpt2_dir: no parameter '" + m.ours + "'");
    const size_t n = static_cast<size_t>(numel(m.hf_shape));
    const float* src = it->second.data.data() + (m.layer < 0 ? 0 : static_cast<size_t>(m.layer) * n);
    if (it->second.data.size() < (m.layer < 0 ? 1 : static_cast<size_t>(m.layer) + 1) * n)
      throw std::invalid_argument("write_hf_gpt2_dir: parameter '" + m.ours + "' is smaller than the config says");
    std::vector<float>& b = buffers.emplace_back(n);
    // Ours is [out, in] = the transpose of HF's [in, out].
    if (m.transpose) transpose_into(src, m.hf_shape[1], m.hf_shape[0], b.data());
    else std::copy(src, src + n, b.begin());
    views.push_back({kPrefix + m.hf, StDType::F32, m.hf_shape,
                     std::as_bytes(std::span<const float>(b.data(), b.size()))});
  }
  write_file_atomic(dir / "config.json", hf_gpt2_config_to_json(c).dump(2) + "\n");
  // transformers refuses safetensors files whose metadata lacks format "pt".
  write_safetensors(dir / "model.safetensors", views, {{"format", "pt"}}, true);
  if (has_tokenizer) {
    write_file_atomic(dir / "vocab.json", vocab_json);
    write_file_atomic(dir / "merges.txt", merges_txt);
  }
}

}  // namespace mom::io
