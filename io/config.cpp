#include "io/config.h"

#include <algorithm>
#include <fstream>
#include <functional>
#include <sstream>

#include "core/error.h"
#include "router/dispatch_plan.h"
#include "router/router_net.h"

namespace mom::io {

using nlohmann::json;

json default_config_json() {
  const RunConfig d;
  const Gpt2Config& m = d.model;
  const TrainConfig& t = d.train;
  return json{
      {"model",
       {{"vocab_size", m.vocab_size},
        {"n_ctx", 256},
        {"n_layer", 4},
        {"n_head", 4},
        {"n_embd", 256},
        {"ln_eps", m.ln_eps},
        {"decay_embeddings", m.decay_embeddings},
        {"stack", json::array()},
        {"altup", nullptr}}},
      {"data", {{"train", d.data.train}, {"val", d.data.val}, {"format", d.data.format}}},
      {"train",
       {{"device", t.device},
        {"matmul_precision", t.matmul_precision},
        {"threads", t.threads},
        {"batch_size", t.batch_size},
        {"seq_len", t.seq_len},
        {"grad_accum", t.grad_accum},
        {"steps", t.steps},
        {"lr", t.lr},
        {"min_lr", t.min_lr},
        {"warmup_steps", t.warmup_steps},
        {"weight_decay", t.weight_decay},
        {"beta1", t.beta1},
        {"beta2", t.beta2},
        {"eps", t.eps},
        {"grad_clip", t.grad_clip},
        {"seed", t.seed},
        {"eval_every", t.eval_every},
        {"eval_batches", t.eval_batches},
        {"save_every", t.save_every},
        {"ep_size", t.ep_size},
        {"keep_last", t.keep_last},
        {"keep_every", t.keep_every}}},
      {"run_dir", d.run_dir},
  };
}

namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

void collect_keys(const json& j, const std::string& prefix, std::vector<std::string>& out) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string k = prefix.empty() ? it.key() : prefix + "." + it.key();
    if (it->is_object())
      collect_keys(*it, k, out);
    else
      out.push_back(k);
  }
}

std::string suggestion(const std::string& key) {
  std::vector<std::string> known;
  collect_keys(default_config_json(), "", known);
  std::string best;
  size_t best_d = 4;
  for (const auto& k : known) {
    const size_t d = edit_distance(key, k);
    if (d < best_d) best_d = d, best = k;
  }
  return best.empty() ? "" : " (did you mean '" + best + "'?)";
}

const char* type_name(const json& j) {
  if (j.is_boolean()) return "a boolean";
  if (j.is_number_integer() || j.is_number_unsigned()) return "an integer";
  if (j.is_number()) return "a number";
  if (j.is_string()) return "a string";
  if (j.is_object()) return "an object";
  if (j.is_array()) return "an array";
  return "null";
}

// Every key of an optional section, with its default; null for keys that are not sections.
json optional_section_defaults(const std::string& key) {
  if (key == "model.altup")
    return {{"k", 2},
            {"mode", "recycled"},
            {"active", "alternate"},
            {"layer_input", "activated"},
            {"coefficients", "static"}};
  return nullptr;
}

// Overlays `src` on `dst`, rejecting keys the defaults don't have and values of another type.
void merge_checked(json& dst, const json& src, const std::string& prefix, const std::string& origin) {
  require(src.is_object(), origin + ": '" + (prefix.empty() ? "<root>" : prefix) + "' must be a JSON object");
  for (auto it = src.begin(); it != src.end(); ++it) {
    const std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    require(dst.contains(it.key()), origin + ": unknown key '" + key + "'" + suggestion(key));
    json& d = dst[it.key()];
    // An optional section (null by default, e.g. model.altup): given as an object, it is
    // merged over its own defaults, so its keys are checked like any other.
    if (d.is_null() && it->is_object()) {
      const json defaults = optional_section_defaults(key);
      require(!defaults.is_null(), origin + ": key '" + key + "' takes no object");
      d = defaults;
    }
    if (d.is_null() && it->is_null()) continue;
    require(!d.is_null(), origin + ": key '" + key + "' must be an object (or null), got " + type_name(*it) + " (" +
                              it->dump() + ")");
    if (d.is_object()) {
      merge_checked(d, *it, key, origin);
      continue;
    }
    const bool ok =
        (d.is_array() && it->is_array()) || (d.is_boolean() && it->is_boolean()) ||
        (d.is_string() && it->is_string()) ||
        ((d.is_number_integer() || d.is_number_unsigned()) && (it->is_number_integer() || it->is_number_unsigned())) ||
        (d.is_number_float() && it->is_number());
    require(ok, origin + ": key '" + key + "' must be " + type_name(d) + ", got " + type_name(*it) + " (" + it->dump() +
                    ")");
    d = (d.is_number_float() ? json(it->get<double>()) : *it);
  }
}

json parse_override(const std::string& text) {
  const size_t eq = text.find('=');
  require(eq != std::string::npos && eq > 0,
          "override '" + text + "' must look like key.path=value (for example train.lr=3e-4)");
  const std::string path = text.substr(0, eq), raw = text.substr(eq + 1);
  json value = json::parse(raw, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = raw;  // a bare word is a string
  json root = json::object();
  json* cur = &root;
  std::stringstream ss(path);
  std::string part;
  std::vector<std::string> parts;
  while (std::getline(ss, part, '.')) parts.push_back(part);
  for (size_t i = 0; i + 1 < parts.size(); ++i) cur = &(*cur)[parts[i]];
  (*cur)[parts.back()] = value;
  return root;
}

// Every key a stack entry of each type may have, with its default.
json stack_entry_defaults(const std::string& type) {
  if (type == "dense") return {{"type", "dense"}, {"count", 1}};
  if (type == "mom")
    return {{"type", "mom"},         {"attn_modules", 4}, {"ffn_modules", 4},
            {"skip", true},          {"steps", 4},        {"top_k", 2},
            {"router", "mlp"},       {"router_dim", 256}, {"temperature", 1.0},
            {"weighted_qkv", false}, {"anchor", false},   {"balance_coef", 0.01}};
  if (type == "sas" || type == "sas_p") return {{"type", type}, {"count", 1}, {"norm", "rms"}, {"beta_ff_init", 0.1}};
  if (type == "moe")
    return {{"type", "moe"},         {"experts", 8},           {"top_k", 2},
            {"gate", "softmax"},     {"renormalise", true},    {"aux_coef", 0.01},
            {"z_coef", 0.001},       {"capacity_factor", 0.0}, {"drop_policy", "position"},
            {"shared_expert", false}};
  return nullptr;
}

constexpr const char* kStackTypes = "\"dense\", \"mom\", \"moe\", \"sas\" or \"sas_p\"";

// model.stack -> StackItems; every entry merged over its type's defaults and checked.
std::vector<StackItem> parse_stack(const json& stack, const std::string& origin) {
  std::vector<StackItem> items;
  for (size_t i = 0; i < stack.size(); ++i) {
    const std::string key = "model.stack[" + std::to_string(i) + "]";
    const json& e = stack[i];
    require(e.is_object() && e.contains("type") && e["type"].is_string(),
            origin + ": '" + key + "' must be an object with a \"type\" of " + kStackTypes);
    const std::string type = e["type"];
    json d = stack_entry_defaults(type);
    require(!d.is_null(), origin + ": '" + key + ".type' must be " + kStackTypes + ", got \"" + type + "\"");
    for (auto k = e.begin(); k != e.end(); ++k)
      if (!d.contains(k.key())) {
        std::string keys;
        for (auto dk = d.begin(); dk != d.end(); ++dk) keys += (keys.empty() ? "" : ", ") + dk.key();
        throw UserError(origin + ": unknown key '" + key + "." + k.key() + "': a \"" + type + "\" entry takes " + keys);
      }
    merge_checked(d, e, key, origin);
    auto at_least = [&](const char* k, int64_t lo) {
      require(d[k].get<int64_t>() >= lo, origin + ": '" + key + "." + k + "' must be >= " + std::to_string(lo));
    };
    auto non_negative = [&](const char* k) {
      require(d[k].get<double>() >= 0, origin + ": '" + key + "." + k + "' must be >= 0");
    };
    StackItem item;
    if (type == "dense") {
      at_least("count", 1);
      item.count = d["count"];
      items.push_back(item);
      continue;
    }
    if (type == "sas" || type == "sas_p") {
      at_least("count", 1);
      item.type = type == "sas" ? BlockType::Sas : BlockType::SasP;
      item.count = d["count"];
      const std::string norm = d["norm"];
      require(norm == "rms" || norm == "none", origin + ": '" + key +
                                                   ".norm' must be \"rms\" (RMSNorm) or \"none\" "
                                                   "(no norm; a LayerNorm in the entry's first block), got \"" +
                                                   norm + "\"");
      item.simplified.rms_norm = norm == "rms";
      item.simplified.beta_ff_init = d["beta_ff_init"];
      items.push_back(item);
      continue;
    }
    item.type = BlockType::Routed;
    RoutedStageConfig& st = item.stage;
    st.top_k = d["top_k"];
    at_least("top_k", 1);
    if (type == "mom") {
      for (const char* k : {"attn_modules", "ffn_modules", "steps", "router_dim"}) at_least(k, 1);
      st.attn_modules = d["attn_modules"], st.ffn_modules = d["ffn_modules"], st.skip = d["skip"];
      st.steps = d["steps"], st.router_dim = d["router_dim"], st.temperature = d["temperature"];
      st.weighted_qkv = d["weighted_qkv"], st.balance_coef = d["balance_coef"];
      non_negative("balance_coef");
      require(st.temperature > 0, origin + ": '" + key + ".temperature' must be > 0");
      const std::string router = d["router"];
      if (router == "forced") {
        st.attn_routing = st.ffn_routing = RoutingMode::Forced;
        require(st.top_k == 1 && !st.skip, origin + ": '" + key + ".router' \"forced\" needs top_k 1 and skip false");
      } else {
        require(router == "mlp" || router == "gru" || router == "linear",
                origin + ": '" + key + ".router' must be \"mlp\", \"gru\", \"linear\" or \"forced\", got \"" + router +
                    "\"");
        st.router = router::parse_router_kind(router);
      }
      const int classes_a = st.attn_modules + (st.skip ? 1 : 0), classes_f = st.ffn_modules + (st.skip ? 1 : 0);
      require(st.top_k <= std::min(classes_a, classes_f),
              origin + ": '" + key + ".top_k' (" + std::to_string(st.top_k) +
                  ") exceeds the classes a router can pick (" + std::to_string(std::min(classes_a, classes_f)) +
                  ": modules plus SKIP)");
      items.push_back(item);
      if (d["anchor"].get<bool>()) {
        StackItem anchor;  // a one-block dense run
        items.push_back(anchor);
      }
      continue;
    }
    // moe: one dense attention module, E experts behind a linear gate without bias, one step.
    st.moe = true;
    at_least("experts", 1);
    st.attn_modules = 1, st.attn_routing = RoutingMode::Single, st.ffn_modules = d["experts"], st.steps = 1;
    st.router = router::RouterKind::Linear, st.router_bias = false;
    const std::string gate = d["gate"];
    require(gate == "softmax" || gate == "sigmoid",
            origin + ": '" + key + ".gate' must be \"softmax\" or \"sigmoid\", got \"" + gate + "\"");
    st.sigmoid = gate == "sigmoid", st.renormalise = d["renormalise"];
    st.balance_coef = d["aux_coef"], st.z_coef = d["z_coef"];
    non_negative("aux_coef");
    non_negative("z_coef");
    non_negative("capacity_factor");
    st.capacity.factor = d["capacity_factor"];
    st.capacity.policy = router::parse_drop_policy(d["drop_policy"]);
    st.shared_expert = d["shared_expert"];
    require(st.top_k <= st.ffn_modules, origin + ": '" + key + ".top_k' (" + std::to_string(st.top_k) +
                                            ") must not exceed '" + key + ".experts' (" +
                                            std::to_string(st.ffn_modules) + ")");
    items.push_back(item);
  }
  return items;
}

// model.altup (null: off) -> AltUpConfig, each value checked against its choices.
AltUpConfig parse_altup(const json& a, const std::string& origin) {
  AltUpConfig c;
  if (a.is_null()) return c;
  c.k = a["k"];
  require(c.k >= 1, origin +
                        ": 'model.altup.k' must be >= 1 (the stream's blocks; leave model.altup out to turn "
                        "AltUp off), got " +
                        std::to_string(c.k));
  auto choice = [&](const char* key, const char* a_value, const char* b_value) {
    const std::string v = a[key];
    require(v == a_value || v == b_value, origin + ": 'model.altup." + key + "' must be \"" + a_value + "\" or \"" +
                                              b_value + "\", got \"" + v + "\"");
    return v == b_value;
  };
  c.wide = choice("mode", "recycled", "wide");
  c.first = choice("active", "alternate", "first");
  c.predicted_input = choice("layer_input", "activated", "predicted");
  c.input_dependent = choice("coefficients", "static", "input_dependent");
  return c;
}

// Value checks beyond types: each names its key.
void validate(const RunConfig& c, const std::string& origin) {
  auto positive = [&](const char* key, double v) {
    require(v > 0, origin + ": key '" + key + "' must be > 0, got " + std::to_string(v));
  };
  const Gpt2Config& m = c.model;
  positive("model.vocab_size", m.vocab_size);
  positive("model.n_ctx", m.n_ctx);
  require(m.n_layer > 0 || !m.stack.empty(), origin + ": key 'model.n_layer' must be > 0");
  positive("model.n_head", m.n_head);
  positive("model.n_embd", m.n_embd);
  positive("model.ln_eps", m.ln_eps);
  require(m.n_embd % m.n_head == 0, origin + ": key 'model.n_embd' (" + std::to_string(m.n_embd) +
                                        ") must be divisible by 'model.n_head' (" + std::to_string(m.n_head) + ")");
  require(m.vocab_size <= 65536,
          origin + ": key 'model.vocab_size' must be at most 65536 (tokens are stored as uint16)");
  const TrainConfig& t = c.train;
  require(t.device == "cpu" || t.device == "cuda",
          origin + ": key 'train.device' must be \"cpu\" or \"cuda\", got \"" + t.device + "\"");
  require(t.matmul_precision == "highest" || t.matmul_precision == "high" || t.matmul_precision == "medium",
          origin +
              ": key 'train.matmul_precision' must be \"highest\" (f32), \"high\" (TF32) or \"medium\" (bf16), got \"" +
              t.matmul_precision + "\"");
  require(t.matmul_precision == "highest" || t.device == "cuda",
          origin + ": key 'train.matmul_precision' \"" + t.matmul_precision +
              "\" needs train.device \"cuda\" (the CPU backend computes in f32 only); use \"highest\" on the CPU");
  require(t.threads >= 0, origin + ": key 'train.threads' must be >= 0 (0 means all cores)");
  positive("train.batch_size", t.batch_size);
  positive("train.seq_len", t.seq_len);
  require(t.seq_len <= m.n_ctx, origin + ": key 'train.seq_len' (" + std::to_string(t.seq_len) +
                                    ") must not exceed 'model.n_ctx' (" + std::to_string(m.n_ctx) + ")");
  positive("train.grad_accum", t.grad_accum);
  positive("train.ep_size", t.ep_size);
  positive("train.steps", static_cast<double>(t.steps));
  positive("train.lr", t.lr);
  require(t.min_lr >= 0 && t.min_lr <= t.lr, origin + ": key 'train.min_lr' must be between 0 and 'train.lr'");
  require(t.warmup_steps >= 0 && t.warmup_steps <= t.steps,
          origin + ": key 'train.warmup_steps' must be between 0 and 'train.steps'");
  require(t.weight_decay >= 0, origin + ": key 'train.weight_decay' must be >= 0");
  require(t.beta1 >= 0 && t.beta1 < 1, origin + ": key 'train.beta1' must be in [0, 1)");
  require(t.beta2 >= 0 && t.beta2 < 1, origin + ": key 'train.beta2' must be in [0, 1)");
  positive("train.eps", t.eps);
  require(t.grad_clip >= 0, origin + ": key 'train.grad_clip' must be >= 0 (0 turns clipping off)");
  require(t.eval_every >= 0 && t.eval_batches >= 0 && t.save_every >= 0,
          origin + ": keys 'train.eval_every', 'train.eval_batches' and 'train.save_every' must be >= 0");
  require(t.keep_last >= 0 && t.keep_every >= 0,
          origin + ": keys 'train.keep_last' and 'train.keep_every' must be >= 0 (0: keep every checkpoint)");
  require(c.data.format == "auto" || c.data.format == "llmc" || c.data.format == "nanogpt",
          origin + ": key 'data.format' must be \"auto\", \"llmc\" or \"nanogpt\"");
  require(!c.run_dir.empty(), origin + ": key 'run_dir' must not be empty");
}

}  // namespace

RunConfig config_from_json(const json& input, const std::string& origin) {
  json j = default_config_json();
  merge_checked(j, input, "", origin);
  RunConfig c;
  const json& m = j["model"];
  c.model.vocab_size = m["vocab_size"];
  c.model.n_ctx = m["n_ctx"];
  c.model.n_layer = m["n_layer"];
  c.model.n_head = m["n_head"];
  c.model.n_embd = m["n_embd"];
  c.model.ln_eps = m["ln_eps"];
  c.model.decay_embeddings = m["decay_embeddings"];
  c.model.stack = parse_stack(m["stack"], origin);
  c.model.altup = parse_altup(m["altup"], origin);
  if (!c.model.stack.empty()) {  // with a stack, n_layer counts its dense blocks (anchors included)
    c.model.n_layer = 0;
    for (const auto& item : c.model.stack) c.model.n_layer += item.type == BlockType::Dense ? item.count : 0;
  }
  const json& d = j["data"];
  c.data.train = d["train"];
  c.data.val = d["val"];
  c.data.format = d["format"];
  const json& t = j["train"];
  c.train.device = t["device"];
  c.train.matmul_precision = t["matmul_precision"];
  c.train.threads = t["threads"];
  c.train.batch_size = t["batch_size"];
  c.train.seq_len = t["seq_len"];
  c.train.grad_accum = t["grad_accum"];
  c.train.ep_size = t["ep_size"];
  c.train.steps = t["steps"];
  c.train.lr = t["lr"];
  c.train.min_lr = t["min_lr"];
  c.train.warmup_steps = t["warmup_steps"];
  c.train.weight_decay = t["weight_decay"];
  c.train.beta1 = t["beta1"];
  c.train.beta2 = t["beta2"];
  c.train.eps = t["eps"];
  c.train.grad_clip = t["grad_clip"];
  c.train.seed = t["seed"];
  c.train.eval_every = t["eval_every"];
  c.train.eval_batches = t["eval_batches"];
  c.train.save_every = t["save_every"];
  c.train.keep_last = t["keep_last"];
  c.train.keep_every = t["keep_every"];
  c.run_dir = j["run_dir"];
  validate(c, origin);
  j["model"]["n_layer"] = c.model.n_layer;
  c.json = j;
  return c;
}

RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  json merged = json::object();
  std::string origin = "default config";
  if (!path.empty()) {
    std::ifstream in(path);
    require(static_cast<bool>(in),
            "config file '" + path + "' cannot be read: check the path (configs live in jobs/configs/)");
    json file = json::parse(in, nullptr, /*allow_exceptions=*/false, /*ignore_comments=*/true);
    require(!file.is_discarded(), "config file '" + path + "' is not valid JSON");
    merged = file;
    origin = "config '" + path + "'";
  }
  // Overrides go through the same checks, so a typo in --set is caught like one in a file.
  json base = default_config_json();
  merge_checked(base, merged, "", origin);
  for (const auto& o : overrides) merge_checked(base, parse_override(o), "", "override '" + o + "'");
  return config_from_json(base, origin);
}

}  // namespace mom::io
