// `mom convert hf-gpt2` / `mom convert to-hf` through the `mom` binary.
//
// The Hugging Face files come from tests/ref/hf_make_gpt2.py (a hand-written safetensors
// writer, independent of ours) and the reference logits from tests/ref/hf_reference_logits.py
// (a float64 PyTorch GPT-2 reading the same file with Conv1D semantics), so a naming,
// slicing or transpose mistake in the converter shows up as different logits. Round trips
// must be bit-identical; half inputs must widen to numpy's exact float32 values; bad input
// must end in one message (exit 2) naming every offending tensor or key.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>

#include "core/backend.h"
#include "core/checkpointing.h"
#include "core/error.h"
#include "io/checkpoint_file.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "io/tokenizer.h"
#include "tests/support.h"

namespace mom::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kB = 2, kT = 16, kVocab = 1000;

std::string ref_script(const std::string& name) { return shell_quote(source_dir() + "/tests/ref/" + name); }

std::string bare(const std::string& key) {
  return key.rfind("transformer.", 0) == 0 ? key.substr(std::strlen("transformer.")) : key;
}

bool is_mask_buffer(const std::string& key) {
  const std::string b = bare(key);
  return b.ends_with(".attn.bias") || b.ends_with(".attn.masked_bias");
}

std::vector<double> read_f64(const std::string& path) {
  const std::string bytes = read_file(path);
  std::vector<double> v(bytes.size() / sizeof(double));
  std::memcpy(v.data(), bytes.data(), v.size() * sizeof(double));
  return v;
}

// Rewrites a safetensors file's JSON header with `edit`, keeping its data area.
void edit_header(const std::string& src, const std::string& dst, const std::function<void(json&)>& edit) {
  const std::string bytes = read_file(src);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  json header = json::parse(bytes.substr(8, n));
  edit(header);
  std::string text = header.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');
  const uint64_t len = text.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &len, 8);
  write_file(dst, out + text + bytes.substr(8 + n));
}

class HfConvert : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir("hf-convert");
    make("f32", "");
    make("hub", "--no-prefix --lm-head --seed 1");
    make("f16", "--dtype f16 --seed 2 --expected-f32 " + shell_quote(*dir_ / "f16.expected.safetensors"));
    make("bf16", "--dtype bf16 --no-prefix --lm-head --seed 3 --expected-f32 " +
                     shell_quote(*dir_ / "bf16.expected.safetensors"));
    std::mt19937 gen(7);
    for (int i = 0; i < kB * kT; ++i) tokens_.push_back(static_cast<int32_t>(gen() % kVocab));
  }
  static void TearDownTestSuite() { delete dir_; }

  static void make(const std::string& name, const std::string& options) {
    const RunResult r =
        run(reference_python() + " " + ref_script("hf_make_gpt2.py") + " " + shell_quote(*dir_ / name) + " " + options);
    if (r.exit_code != 0) throw std::runtime_error("hf_make_gpt2.py failed:\n" + r.output);
  }

  static std::string token_args() {
    std::string s;
    for (int32_t t : tokens_) {
      s += ' ';
      s += std::to_string(t);
    }
    return s;
  }

  // Runs mom and expects success.
  static void mom_ok(const std::string& args) {
    const RunResult r = run_mom(args);
    ASSERT_EQ(r.exit_code, 0) << "mom " << args << "\n" << r.output;
  }

  // Runs mom, expects exit 2 and every needle in the message.
  static void expect_user_error(const std::string& args, std::initializer_list<std::string> needles) {
    const RunResult r = run_mom(args);
    EXPECT_EQ(r.exit_code, 2) << "mom " << args << "\n" << r.output;
    EXPECT_EQ(r.output.find("internal error"), std::string::npos) << r.output;
    for (const auto& n : needles)
      EXPECT_NE(r.output.find(n), std::string::npos) << "missing '" << n << "' in:\n" << r.output;
  }

  // A copy of the folder `name` with its model.safetensors replaced by `weights` (when given)
  // and its config.json edited by `edit_config` (when given).
  static std::string variant(const std::string& name, const std::string& label, const std::string& weights,
                             const std::function<void(json&)>& edit_config = {}) {
    const fs::path out = dir_->path() / label;
    fs::create_directories(out);
    fs::copy_file(dir_->path() / name / "config.json", out / "config.json", fs::copy_options::overwrite_existing);
    fs::copy_file(weights.empty() ? (dir_->path() / name / "model.safetensors").string() : weights,
                  out / "model.safetensors", fs::copy_options::overwrite_existing);
    if (edit_config) {
      json c = json::parse(read_file(out / "config.json"));
      edit_config(c);
      write_file(out / "config.json", c.dump(2));
    }
    return out.string();
  }

  // Our logits [B·T, V] for a converted checkpoint, through the public model API.
  static std::vector<double> our_logits(const std::string& ckpt, const std::vector<int32_t>& tokens, int B, int T) {
    const io::RunConfig cfg = io::config_from_json(read_checkpoint_config(ckpt), ckpt);
    Gpt2 model(cfg.model, backend_for(Device::CPU));
    load_checkpoint(ckpt, model, nullptr, nullptr);
    std::vector<double> logits;
    model.logits(tokens.data(), B, T, logits);
    return logits;
  }

  // max |ours - ref| / max |ref|.
  static double relative_error(const std::vector<double>& ours, const std::vector<double>& ref) {
    EXPECT_EQ(ours.size(), ref.size());
    double diff = 0, scale = 0;
    for (size_t i = 0; i < std::min(ours.size(), ref.size()); ++i) {
      diff = std::max(diff, std::abs(ours[i] - ref[i]));
      scale = std::max(scale, std::abs(ref[i]));
    }
    return diff / scale;
  }

  // Every weight of `hf_in` (mask buffers and lm_head aside) has the same shape and the
  // same bytes, as F32, in `hf_out` under its "transformer." key; nothing else is there.
  static void expect_same_tensors(const std::string& hf_in, const std::string& hf_out) {
    const io::SafetensorsReader in(hf_in), out(hf_out);
    size_t compared = 0;
    for (const auto& key : in.names()) {
      if (is_mask_buffer(key) || key == "lm_head.weight") continue;
      const std::string out_key = "transformer." + bare(key);
      ASSERT_TRUE(out.has(out_key)) << out_key;
      ASSERT_EQ(in.info(key).shape, out.info(out_key).shape) << key;
      ASSERT_EQ(in.info(key).dtype, io::StDType::F32) << key;
      ASSERT_EQ(out.info(out_key).dtype, io::StDType::F32) << key;
      const auto a = in.bytes(key), b = out.bytes(out_key);
      ASSERT_EQ(a.size(), b.size()) << key;
      EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size()), 0) << key << " differs";
      ++compared;
    }
    EXPECT_EQ(compared, out.names().size()) << "the export holds tensors the input did not";
    EXPECT_EQ(compared, 4u + 12u * 2u);
  }

  static ScratchDir* dir_;
  static std::vector<int32_t> tokens_;
};
ScratchDir* HfConvert::dir_ = nullptr;
std::vector<int32_t> HfConvert::tokens_;

TEST_F(HfConvert, LogitsMatchIndependentReference) {
  for (const std::string name : {"f32", "hub", "bf16"}) {
    SCOPED_TRACE(name);
    const std::string ckpt = *dir_ / (name + ".h5"), ref = *dir_ / (name + ".logits.f64");
    mom_ok("convert hf-gpt2 " + shell_quote(*dir_ / name) + " " + shell_quote(ckpt));
    const RunResult r =
        run(reference_python() + " " + ref_script("hf_reference_logits.py") + " " + shell_quote(*dir_ / name) + " " +
            shell_quote(ref) + token_args() + " --batch " + std::to_string(kB));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const double err = relative_error(our_logits(ckpt, tokens_, kB, kT), read_f64(ref));
    std::string ref_note = r.output;
    while (!ref_note.empty() && ref_note.back() == '\n') ref_note.pop_back();
    std::printf("[%s] logits: max |ours - reference| / max |reference| = %.3g (limit 1e-5; reference %s)\n",
                name.c_str(), err, ref_note.c_str());
    EXPECT_LT(err, 1e-5);
  }
}

TEST_F(HfConvert, RoundTripIsBitIdentical) {
  for (const std::string name : {"f32", "hub"}) {
    SCOPED_TRACE(name);
    const std::string ckpt = *dir_ / (name + ".rt.h5"), out = *dir_ / (name + ".rt");
    mom_ok("convert hf-gpt2 " + shell_quote(*dir_ / name) + " " + shell_quote(ckpt));
    mom_ok("convert to-hf " + shell_quote(ckpt) + " " + shell_quote(out));
    expect_same_tensors(*dir_ / name + "/model.safetensors", out + "/model.safetensors");
    // The independent reader computes bit-identical logits from the export.
    const std::string a = *dir_ / (name + ".rt.in.f64"), b = *dir_ / (name + ".rt.out.f64");
    for (const auto& [folder, file] : {std::pair{*dir_ / name, a}, std::pair{out, b}}) {
      const RunResult r = run(reference_python() + " " + ref_script("hf_reference_logits.py") + " " +
                              shell_quote(folder) + " " + shell_quote(file) + " 1 2 3 4 5");
      ASSERT_EQ(r.exit_code, 0) << r.output;
    }
    EXPECT_EQ(read_file(a), read_file(b));
  }
}

TEST_F(HfConvert, HalfInputsWidenExactly) {
  for (const std::string name : {"f16", "bf16"}) {
    SCOPED_TRACE(name);
    const std::string ckpt = *dir_ / (name + ".h5"), out = *dir_ / (name + ".out");
    mom_ok("convert hf-gpt2 --force " + shell_quote(*dir_ / name) + " " + shell_quote(ckpt));
    mom_ok("convert to-hf " + shell_quote(ckpt) + " " + shell_quote(out));
    expect_same_tensors(*dir_ / (name + ".expected.safetensors"), out + "/model.safetensors");
  }
}

TEST_F(HfConvert, ExportedConfigIsHuggingFaceGpt2) {
  const std::string ckpt = *dir_ / "cfg.h5", out = *dir_ / "cfg.out";
  mom_ok("convert hf-gpt2 " + shell_quote(*dir_ / "f32") + " " + shell_quote(ckpt));
  const json stored = read_checkpoint_config(ckpt);
  EXPECT_EQ(stored["model"]["n_ctx"], 64);
  EXPECT_EQ(stored["model"]["vocab_size"], kVocab);
  EXPECT_EQ(stored["train"]["seq_len"], 64) << "capped at the model's context";
  mom_ok("convert to-hf " + shell_quote(ckpt) + " " + shell_quote(out));
  const json c = json::parse(read_file(out + "/config.json"));
  EXPECT_EQ(c["model_type"], "gpt2");
  EXPECT_EQ(c["architectures"], json::array({"GPT2LMHeadModel"}));
  EXPECT_EQ(c["activation_function"], "gelu_new");
  EXPECT_EQ(c["n_layer"], 2);
  EXPECT_EQ(c["n_head"], 4);
  EXPECT_EQ(c["n_embd"], 64);
  EXPECT_EQ(c["n_positions"], 64);
  EXPECT_EQ(c["n_ctx"], 64);
  EXPECT_EQ(c["vocab_size"], kVocab);
  EXPECT_EQ(c["layer_norm_epsilon"], 1e-5);
  EXPECT_EQ(c["eos_token_id"], 50256);
  EXPECT_EQ(c["resid_pdrop"], 0.0);
  EXPECT_EQ(c["tie_word_embeddings"], true);
  EXPECT_EQ(io::SafetensorsReader(out + "/model.safetensors").metadata().at("format"), "pt");
  EXPECT_FALSE(fs::exists(out + "/vocab.json"));
}

// `mom generate` and `mom serve` read a converted checkpoint with the tokenizer it carries,
// not GPT-2's default: here a byte-level vocabulary (the 256 bytes, <|endoftext|> and one
// merge, "hi" = 257); GPT-2's would make "hi" token 5303, outside this model's vocabulary of
// 1000.
TEST_F(HfConvert, GenerateUsesTheTokenizerTheCheckpointCarries) {
  const std::string src = variant("f32", "byte-tok", "");
  // GPT-2's byte-to-character map: printable Latin-1 to itself, the other bytes to 256 + n.
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0, extra = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const char32_t c = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++);
    std::string utf8;
    if (c < 0x80) {
      utf8 = std::string(1, static_cast<char>(c));
    } else {
      utf8 = {static_cast<char>(0xC0 | (c >> 6)), static_cast<char>(0x80 | (c & 0x3F))};
    }
    vocab[utf8] = b;
  }
  vocab["<|endoftext|>"] = 256;
  vocab["hi"] = 257;
  write_file(src + "/vocab.json", vocab.dump());
  write_file(src + "/merges.txt", "#version: 0.2\nh i\n");
  const std::string ckpt = *dir_ / "byte-tok.h5";
  mom_ok("convert hf-gpt2 " + shell_quote(src) + " " + shell_quote(ckpt));
  const RunResult r =
      run_mom("generate " + shell_quote(ckpt) + " --prompt hi --max-tokens 4 --temperature 0 --threads 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.rfind("hi", 0), 0u) << r.output;
  // And the same model with GPT-2's tokenizer given explicitly is refused: "hi" is out of range.
  const RunResult gpt2 = run_mom("generate " + shell_quote(ckpt) + " --prompt hi --max-tokens 4 --temperature 0 " +
                                 "--tokenizer " + shell_quote(io::Gpt2Tokenizer::default_dir().string()));
  EXPECT_EQ(gpt2.exit_code, 2) << gpt2.output;
  EXPECT_NE(gpt2.output.find("prompt token 5303 is outside the model's vocabulary"), std::string::npos) << gpt2.output;
}

TEST_F(HfConvert, TokenizerFilesTravelThroughTheCheckpoint) {
  const std::string src = variant("f32", "with-tok", "");
  const std::string vocab = "{\"hello\": 0, \"\\u0120world\": 1}\n", merges = "#version: 0.2\nh e\n";
  write_file(src + "/vocab.json", vocab);
  write_file(src + "/merges.txt", merges);
  const std::string ckpt = *dir_ / "with-tok.h5", out = *dir_ / "with-tok.out";
  mom_ok("convert hf-gpt2 " + shell_quote(src) + " " + shell_quote(ckpt));
  const io::CheckpointReader reader(ckpt);
  EXPECT_EQ(reader.read_bytes("tokenizer/vocab.json"), vocab);
  EXPECT_EQ(reader.read_bytes("tokenizer/merges.txt"), merges);
  mom_ok("ckpt inspect --verify " + shell_quote(ckpt));
  mom_ok("convert to-hf " + shell_quote(ckpt) + " " + shell_quote(out));
  EXPECT_EQ(read_file(out + "/vocab.json"), vocab);
  EXPECT_EQ(read_file(out + "/merges.txt"), merges);
}

TEST_F(HfConvert, EveryTensorProblemIsListedInOneMessage) {
  // Drop one tensor, add a stranger, and give one the wrong shape, all in one file.
  const io::SafetensorsReader good(*dir_ / "f32/model.safetensors");
  const std::vector<float> short_ln(32, 1.0f), rotary(8, 0.0f);
  std::vector<io::StTensorView> views;
  for (const auto& key : good.names()) {
    const auto& info = good.info(key);
    if (key == "transformer.h.1.mlp.c_fc.bias") continue;
    if (key == "transformer.ln_f.weight") {
      views.push_back({key, io::StDType::F32, {32}, std::as_bytes(std::span(short_ln))});
      continue;
    }
    views.push_back({key, info.dtype, info.shape, good.bytes(key)});
  }
  views.push_back({"transformer.h.0.attn.rotary", io::StDType::F32, {8}, std::as_bytes(std::span(rotary))});
  const std::string weights = *dir_ / "three-problems.safetensors";
  io::write_safetensors(weights, views, {{"format", "pt"}}, false);
  const std::string src = variant("f32", "three-problems", weights);
  expect_user_error("convert hf-gpt2 " + shell_quote(src) + " " + shell_quote(*dir_ / "never.h5"),
                    {"model.safetensors", "missing tensors (1): transformer.h.1.mlp.c_fc.bias",
                     "unexpected tensors (1): transformer.h.0.attn.rotary",
                     "wrong shapes (1): transformer.ln_f.weight is [32], expected [64]"});
  EXPECT_FALSE(fs::exists(*dir_ / "never.h5"));

  // An output head that is not the token embedding cannot be tied.
  std::vector<io::StTensorView> untied;
  const io::SafetensorsReader hub(*dir_ / "hub/model.safetensors");
  std::vector<float> head = hub.read_f32("lm_head.weight");
  head[5] += 1.0f;
  for (const auto& key : hub.names())
    untied.push_back(key == "lm_head.weight"
                         ? io::StTensorView{key, io::StDType::F32, hub.info(key).shape, std::as_bytes(std::span(head))}
                         : io::StTensorView{key, hub.info(key).dtype, hub.info(key).shape, hub.bytes(key)});
  io::write_safetensors(*dir_ / "untied.safetensors", untied, {}, false);
  expect_user_error("convert hf-gpt2 " + shell_quote(variant("hub", "untied", *dir_ / "untied.safetensors")) + " " +
                        shell_quote(*dir_ / "never.h5"),
                    {"lm_head.weight", "not tied"});
}

TEST_F(HfConvert, DamagedSafetensorsAreUserErrors) {
  const std::string good = *dir_ / "f32/model.safetensors";
  const auto convert = [&](const std::string& label) {
    return "convert hf-gpt2 " + shell_quote(*dir_ / label) + " " + shell_quote(*dir_ / "never.h5");
  };
  const std::string tmp = *dir_ / "edited.safetensors";

  edit_header(good, tmp, [](json& h) { h["transformer.wpe.weight"]["dtype"] = "Q4"; });
  variant("f32", "unknown-dtype", tmp);
  expect_user_error(convert("unknown-dtype"), {"unknown-dtype/model.safetensors", "transformer.wpe.weight", "'Q4'"});

  edit_header(good, tmp, [](json& h) {
    auto& off = h["transformer.ln_f.bias"]["data_offsets"];
    off = {off[0].get<uint64_t>() + 100000000, off[1].get<uint64_t>() + 100000000};
  });
  variant("f32", "out-of-range", tmp);
  expect_user_error(convert("out-of-range"), {"out-of-range/model.safetensors", "transformer.ln_f.bias", "beyond"});

  edit_header(good, tmp, [](json& h) {
    h["transformer.h.0.ln_1.bias"]["data_offsets"] = h["transformer.h.0.ln_1.weight"]["data_offsets"];
  });
  variant("f32", "overlap", tmp);
  expect_user_error(convert("overlap"), {"overlap/model.safetensors", "transformer.h.0.ln_1.bias", "overlap"});

  std::string bytes = read_file(good);
  const uint64_t huge = bytes.size();
  std::memcpy(bytes.data(), &huge, 8);
  write_file(tmp, bytes);
  variant("f32", "long-header", tmp);
  expect_user_error(convert("long-header"), {"long-header/model.safetensors", "header"});

  for (double frac : {0.0, 0.5, 0.99}) {
    const std::string whole = read_file(good);
    write_file(tmp, whole.substr(0, static_cast<size_t>(static_cast<double>(whole.size()) * frac)));
    variant("f32", "truncated", tmp);
    expect_user_error(convert("truncated"), {"truncated/model.safetensors"});
  }
  EXPECT_FALSE(fs::exists(*dir_ / "never.h5"));
}

TEST_F(HfConvert, ForeignConfigsAreNamed) {
  const std::string never = shell_quote(*dir_ / "never.h5");
  expect_user_error("convert hf-gpt2 " +
                        shell_quote(variant("f32", "llama", "",
                                            [](json& c) {
                                              c["model_type"] = "llama";
                                              c["architectures"] = {"LlamaForCausalLM"};
                                            })) +
                        " " + never,
                    {"llama/config.json", "'llama'", "gpt2"});
  expect_user_error(
      "convert hf-gpt2 " +
          shell_quote(variant("f32", "erf-gelu", "", [](json& c) { c["activation_function"] = "gelu"; })) + " " + never,
      {"erf-gelu/config.json", "activation_function", "'gelu'"});
  expect_user_error("convert hf-gpt2 " +
                        shell_quote(variant("f32", "wide-mlp", "", [](json& c) { c["n_inner"] = 100; })) + " " + never,
                    {"wide-mlp/config.json", "n_inner"});
  // config.json and weights of different models: the shapes say so, tensor by tensor.
  expect_user_error("convert hf-gpt2 " +
                        shell_quote(variant("f32", "other-width", "", [](json& c) { c["n_embd"] = 128; })) + " " +
                        never,
                    {"wrong shapes", "transformer.wte.weight is [1000, 64], expected [1000, 128]"});
  const fs::path no_weights = dir_->path() / "no-weights";
  fs::create_directories(no_weights);
  fs::copy_file(dir_->path() / "f32/config.json", no_weights / "config.json", fs::copy_options::overwrite_existing);
  expect_user_error("convert hf-gpt2 " + shell_quote(no_weights.string()) + " " + never, {"no model.safetensors"});
  EXPECT_FALSE(fs::exists(*dir_ / "never.h5"));
}

TEST_F(HfConvert, ExistingOutputsNeedForce) {
  const std::string ckpt = *dir_ / "precious.h5";
  write_file(ckpt, "precious");
  expect_user_error("convert hf-gpt2 " + shell_quote(*dir_ / "f32") + " " + shell_quote(ckpt),
                    {"precious.h5", "--force"});
  EXPECT_EQ(read_file(ckpt), "precious");
  mom_ok("convert hf-gpt2 --force " + shell_quote(*dir_ / "f32") + " " + shell_quote(ckpt));

  const fs::path out = dir_->path() / "precious-hf";
  fs::create_directories(out);
  write_file(out / "config.json", "precious");
  expect_user_error("convert to-hf " + shell_quote(ckpt) + " " + shell_quote(out.string()),
                    {"precious-hf/config.json", "--force"});
  EXPECT_EQ(read_file(out / "config.json"), "precious");
  EXPECT_FALSE(fs::exists(out / "model.safetensors")) << "nothing is written when one file is refused";
  mom_ok("convert to-hf --force " + shell_quote(ckpt) + " " + shell_quote(out.string()));
  EXPECT_NE(read_file(out / "config.json"), "precious");
}

// The real transformers library on both ends: its save_pretrained output converts to the
// same logits, and its from_pretrained loads our export to the same logits.
TEST_F(HfConvert, TransformersRoundTrip) {
  const bool has_transformers = run(reference_python() + " -c 'import transformers' 2>/dev/null").exit_code == 0 ||
                                run("python3 -c 'import transformers' 2>/dev/null").exit_code == 0;
  const bool has_gpu = run("nvidia-smi >/dev/null 2>&1").exit_code == 0;
  if (!has_transformers || !has_gpu)
    GTEST_SKIP() << "needs a GPU machine with Hugging Face transformers (not present here)";
  const std::string python =
      run(reference_python() + " -c 'import transformers' 2>/dev/null").exit_code == 0 ? reference_python() : "python3";
  const std::string hf = *dir_ / "transformers", ckpt = *dir_ / "transformers.h5", out = *dir_ / "transformers.out";
  const std::string ref = *dir_ / "transformers.f64", back = *dir_ / "transformers.back.f64";
  const std::string tokens = " 5 17 3 999 0 42 7 7 100 64 1 2 3 500 250 125";
  RunResult r = run(python + " " + ref_script("hf_transformers_gpt2.py") + " make " + shell_quote(hf) + " " +
                    shell_quote(ref) + tokens);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  mom_ok("convert hf-gpt2 " + shell_quote(hf) + " " + shell_quote(ckpt));
  const std::vector<int32_t> ids = {5, 17, 3, 999, 0, 42, 7, 7, 100, 64, 1, 2, 3, 500, 250, 125};
  const double err = relative_error(our_logits(ckpt, ids, 1, static_cast<int>(ids.size())), read_f64(ref));
  std::printf("transformers -> mom logits: relative error %.3g (limit 1e-4)\n", err);
  EXPECT_LT(err, 1e-4);

  mom_ok("convert to-hf " + shell_quote(ckpt) + " " + shell_quote(out));
  r = run(python + " " + ref_script("hf_transformers_gpt2.py") + " logits " + shell_quote(out) + " " +
          shell_quote(back) + tokens);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const double back_err = relative_error(read_f64(back), read_f64(ref));
  std::printf("mom -> transformers logits: relative error %.3g (limit 1e-4)\n", back_err);
  EXPECT_LT(back_err, 1e-4);
}

// Stage 2 of the two-stage recipe on a converted Hugging Face GPT-2: its layers become a MoM's
// pools (and, upcycled, MoE experts). With forced routing (module h at step h) the MoM is the
// dense model, and an MoE layer with one expert is the dense block: logits equal bit for bit.
TEST_F(HfConvert, TwoStageInitWorksOnConvertedCheckpoints) {
  const std::string dense = *dir_ / "two-stage-dense.h5";
  mom_ok("convert hf-gpt2 " + shell_quote(*dir_ / "f32") + " " + shell_quote(dense));
  json cfg = json::parse(read_file(dir_->path() / "f32" / "config.json"));
  const int layers = cfg["n_layer"];
  auto target = [&](const std::string& name, const json& stack) {
    json c = read_checkpoint_config(dense);
    c["model"]["stack"] = stack;
    write_file(*dir_ / (name + ".json"), c.dump(2));
    return *dir_ / (name + ".json");
  };
  const json forced = json::array({{{"type", "mom"},
                                    {"attn_modules", layers},
                                    {"ffn_modules", layers},
                                    {"skip", false},
                                    {"steps", layers},
                                    {"top_k", 1},
                                    {"router", "forced"}}});
  mom_ok("convert dense-to-mom --config " + shell_quote(target("forced", forced)) + " " + shell_quote(dense) + " " +
         shell_quote(*dir_ / "forced.h5"));
  const auto ref = our_logits(dense, tokens_, kB, kT);
  EXPECT_EQ(our_logits(*dir_ / "forced.h5", tokens_, kB, kT), ref);

  json moe = json::array();
  for (int l = 0; l < layers; ++l) moe.push_back({{"type", "moe"}, {"experts", 1}, {"top_k", 1}});
  mom_ok("convert dense-to-moe --config " + shell_quote(target("moe1", moe)) + " " + shell_quote(dense) + " " +
         shell_quote(*dir_ / "moe1.h5"));
  EXPECT_EQ(our_logits(*dir_ / "moe1.h5", tokens_, kB, kT), ref);

  // A learned-router MoM converts, keeps the tokenizer files, and generates.
  const json learned = json::array({{{"type", "mom"},
                                     {"attn_modules", layers},
                                     {"ffn_modules", layers},
                                     {"skip", true},
                                     {"steps", 3},
                                     {"top_k", 2},
                                     {"router", "gru"},
                                     {"router_dim", 16}}});
  mom_ok("convert dense-to-mom --config " + shell_quote(target("learned", learned)) + " " + shell_quote(dense) + " " +
         shell_quote(*dir_ / "learned.h5"));
  mom_ok("ckpt inspect --verify " + shell_quote(*dir_ / "learned.h5"));
  // Counts that do not add up are refused, naming model.stack.
  const json wrong = json::array(
      {{{"type", "mom"}, {"attn_modules", layers + 1}, {"ffn_modules", layers + 1}, {"steps", 2}, {"top_k", 1}}});
  expect_user_error("convert dense-to-mom --config " + shell_quote(target("wrong", wrong)) + " " + shell_quote(dense) +
                        " " + shell_quote(*dir_ / "wrong.h5"),
                    {"model.stack"});
  EXPECT_FALSE(fs::exists(*dir_ / "wrong.h5"));
}

}  // namespace
}  // namespace mom::test

namespace mom::test {
namespace {

// A converted Hugging Face GPT-2 widened by Recycled-AltUp (K = 2, 3): the logits stay the
// model's within 1e-4 relative (ln_f's eps, which sees the K-fold sum, is the only difference).
TEST_F(HfConvert, RecycledAltUpKeepsConvertedLogits) {
  const std::string dense = *dir_ / "altup-dense.h5";
  mom_ok("convert hf-gpt2 " + shell_quote(*dir_ / "f32") + " " + shell_quote(dense));
  const auto ref = our_logits(dense, tokens_, kB, kT);
  for (const int k : {2, 3}) {
    const std::string out = *dir_ / ("altup-k" + std::to_string(k) + ".h5");
    mom_ok("convert dense-to-altup --k " + std::to_string(k) + " " + shell_quote(dense) + " " + shell_quote(out));
    const double err = relative_error(our_logits(out, tokens_, kB, kT), ref);
    std::printf("Recycled-AltUp K=%d of a converted GPT-2: logits relative error %.3g (limit 1e-4)\n", k, err);
    EXPECT_LT(err, 1e-4);
    mom_ok("ckpt inspect --verify " + shell_quote(out));
  }
}

}  // namespace
}  // namespace mom::test
