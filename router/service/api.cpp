#include "router/service/api.h"

#include <set>

namespace mom::service {

using nlohmann::json;

json ApiError::body() const {
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param.empty() ? json() : json(param)},
            {"code", code.empty() ? json() : json(code)}}}};
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

size_t complete_utf8_prefix(const std::string& text) {
  // Walk back over at most 3 continuation bytes to the last lead byte; keep it only when
  // its whole sequence is there.
  const size_t n = text.size();
  size_t i = n, back = 0;
  while (i > 0 && back < 4 && (static_cast<unsigned char>(text[i - 1]) & 0xC0) == 0x80) --i, ++back;
  if (i == 0) return n;
  const unsigned char lead = static_cast<unsigned char>(text[i - 1]);
  const size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
  return need > 1 && back + 1 < need ? i - 1 : n;
}

namespace {

ApiError bad(const std::string& param, const std::string& message, const std::string& code = "invalid_value") {
  return {400, message, "invalid_request_error", param, code};
}

json parse_body(const std::string& body) {
  try {
    json j = json::parse(body);
    if (!j.is_object()) throw bad("", "the request body must be a JSON object", "invalid_json");
    return j;
  } catch (const json::parse_error& e) {
    throw bad("", std::string("the request body is not valid JSON (") + e.what() + ")", "invalid_json");
  }
}

// The fields of one body: typed getters that name the field in every error, and a final check
// that no field went unread.
class Fields {
 public:
  explicit Fields(const json& j) : j_(j) {}
  const json* get(const std::string& name) {
    seen_.insert(name);
    const auto it = j_.find(name);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  std::optional<int64_t> integer(const std::string& name, int64_t lo, int64_t hi) {
    const json* v = get(name);
    if (!v) return std::nullopt;
    if (!v->is_number_integer())
      throw bad(name, "'" + name + "' must be an integer, got " + dump(*v).substr(0, 40), "invalid_type");
    const int64_t x = v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)
                          ? INT64_MAX
                          : v->get<int64_t>();
    if (x < lo || x > hi)
      throw bad(name, "'" + name + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi) + ", got " +
                          dump(*v));
    return x;
  }
  std::optional<double> number(const std::string& name, double lo, double hi, bool lo_open = false) {
    const json* v = get(name);
    if (!v) return std::nullopt;
    if (!v->is_number())
      throw bad(name, "'" + name + "' must be a number, got " + dump(*v).substr(0, 40), "invalid_type");
    const double x = v->get<double>();
    if (!(lo_open ? x > lo : x >= lo) || !(x <= hi))
      throw bad(name, "'" + name + "' must be " + (lo_open ? "above " : "at least ") + json(lo).dump() +
                          " and at most " + json(hi).dump() + ", got " + dump(*v));
    return x;
  }
  std::optional<bool> boolean(const std::string& name) {
    const json* v = get(name);
    if (!v) return std::nullopt;
    if (!v->is_boolean())
      throw bad(name, "'" + name + "' must be true or false, got " + dump(*v).substr(0, 40), "invalid_type");
    return v->get<bool>();
  }
  std::optional<std::string> string(const std::string& name) {
    const json* v = get(name);
    if (!v) return std::nullopt;
    if (!v->is_string())
      throw bad(name, "'" + name + "' must be a string, got " + dump(*v).substr(0, 40), "invalid_type");
    return v->get<std::string>();
  }
  void no_unknown() const {
    for (auto it = j_.begin(); it != j_.end(); ++it)
      if (!seen_.count(it.key())) throw bad(it.key(), "unknown field '" + it.key() + "'", "unknown_field");
  }

 private:
  const json& j_;
  std::set<std::string> seen_;
};

std::vector<int32_t> token_ids(const json& a, const std::string& param, const ModelLimits& limits) {
  std::vector<int32_t> out;
  for (const auto& t : a) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= limits.vocab_size)
      throw bad(param, "token ids in '" + param + "' must be integers from 0 to " +
                           std::to_string(limits.vocab_size - 1) + ", got " + dump(t).substr(0, 40));
    out.push_back(t.get<int32_t>());
  }
  return out;
}

std::vector<int32_t> encode(const std::string& text, const std::string& param, const ModelLimits& limits) {
  if (!limits.tokenizer)
    throw ApiError{400, "this server has no tokenizer: send '" + param + "' as token ids", "invalid_request_error",
                   param, "no_tokenizer"};
  std::vector<int32_t> t = limits.tokenizer->encode(text);
  for (int32_t id : t)
    if (id >= limits.vocab_size)
      throw bad(param, "'" + param + "' encodes to token " + std::to_string(id) +
                           ", outside the model's vocabulary of " + std::to_string(limits.vocab_size));
  return t;
}

// A prompt: a string, a list of strings, a list of token ids, or a list of such lists. An
// empty text starts a new document, as GPT-2 does: the prompt is <|endoftext|>.
std::vector<std::vector<int32_t>> prompts_of(const json& p, const ModelLimits& limits) {
  auto text = [&](const json& s) {
    std::vector<int32_t> t = encode(s.get<std::string>(), "prompt", limits);
    if (t.empty()) t.push_back(limits.tokenizer->eot());
    return t;
  };
  if (p.is_string()) return {text(p)};
  if (!p.is_array() || p.empty())
    throw bad("prompt", "'prompt' must be a string, a list of strings, a list of token ids or a list of such lists",
              "invalid_type");
  if (p[0].is_number_integer()) return {token_ids(p, "prompt", limits)};
  std::vector<std::vector<int32_t>> out;
  for (const auto& e : p) {
    if (e.is_string())
      out.push_back(text(e));
    else if (e.is_array() && !e.empty())
      out.push_back(token_ids(e, "prompt", limits));
    else
      throw bad("prompt",
                "every entry of a 'prompt' list must be a string or a non-empty list of token ids, got " +
                    dump(e).substr(0, 40),
                "invalid_type");
  }
  return out;
}

RoutingDetail routing_of(Fields& f, RoutingDetail fallback) {
  const auto r = f.string("routing");
  if (!r) return fallback;
  if (*r == "none") return RoutingDetail::None;
  if (*r == "summary") return RoutingDetail::Summary;
  if (*r == "tokens") return RoutingDetail::Tokens;
  throw bad("routing", "'routing' must be \"none\", \"summary\" or \"tokens\", got \"" + r->substr(0, 40) + "\"");
}

}  // namespace

CompletionRequest parse_completion(const std::string& body, const ModelLimits& limits) {
  const json j = parse_body(body);
  Fields f(j);
  CompletionRequest r;
  f.string("model");  // one model per server: any name is this one
  f.string("user");
  const json* p = f.get("prompt");
  if (!p) throw bad("prompt", "'prompt' is required", "missing_field");
  r.prompts = prompts_of(*p, limits);
  r.max_tokens = static_cast<int>(f.integer("max_tokens", 0, limits.n_ctx).value_or(16));
  r.temperature = f.number("temperature", 0, 2).value_or(1.0);
  r.top_p = f.number("top_p", 0, 1, /*lo_open=*/true).value_or(1.0);
  r.top_k = static_cast<int>(f.integer("top_k", 0, limits.vocab_size).value_or(0));
  if (const auto seed = f.integer("seed", 0, INT64_MAX)) r.seed = static_cast<uint64_t>(*seed);
  r.n = static_cast<int>(f.integer("n", 1, 16).value_or(1));
  if (r.prompts.size() * static_cast<size_t>(r.n) > 64)
    throw bad("n", "prompts times 'n' must be at most 64 choices, got " + std::to_string(r.prompts.size() * r.n));
  r.stream = f.boolean("stream").value_or(false);
  if (const json* so = f.get("stream_options")) {
    if (!so->is_object()) throw bad("stream_options", "'stream_options' must be an object", "invalid_type");
    if (!r.stream) throw bad("stream_options", "'stream_options' needs \"stream\": true");
    Fields sf(*so);
    r.include_usage = sf.boolean("include_usage").value_or(false);
    try {
      sf.no_unknown();
    } catch (ApiError& e) {
      e.param = "stream_options." + e.param, e.message = "unknown field 'stream_options." + e.param.substr(15) + "'";
      throw;
    }
  }
  r.logprobs = static_cast<int>(f.integer("logprobs", 0, 5).value_or(-1));
  r.echo = f.boolean("echo").value_or(false);
  if (const json* stop = f.get("stop")) {
    if (stop->is_string())
      r.stop = {stop->get<std::string>()};
    else if (stop->is_array() && stop->size() <= 4) {
      for (const auto& s : *stop) {
        if (!s.is_string()) throw bad("stop", "'stop' must hold strings, got " + dump(s).substr(0, 40), "invalid_type");
        r.stop.push_back(s.get<std::string>());
      }
    } else {
      throw bad("stop", "'stop' must be a string or a list of up to 4 strings");
    }
    for (const auto& s : r.stop)
      if (s.empty()) throw bad("stop", "'stop' strings must not be empty");
  }
  // OpenAI parameters this server has no use for: accepted at their neutral value only.
  for (const char* k : {"presence_penalty", "frequency_penalty"})
    if (const auto v = f.number(k, -2, 2); v && *v != 0)
      throw bad(k, std::string("'") + k + "' is not supported; leave it out or 0", "unsupported");
  if (const auto b = f.integer("best_of", 1, 16); b && *b != r.n)
    throw bad("best_of", "'best_of' is not supported; leave it out or equal to 'n'", "unsupported");
  if (const json* lb = f.get("logit_bias"); lb && !(lb->is_object() && lb->empty()))
    throw bad("logit_bias", "'logit_bias' is not supported; leave it out or {}", "unsupported");
  if (const auto s = f.string("suffix"); s && !s->empty())
    throw bad("suffix", "'suffix' is not supported", "unsupported");
  r.routing = routing_of(f, RoutingDetail::None);
  f.no_unknown();
  for (size_t i = 0; i < r.prompts.size(); ++i) {
    const size_t n = r.prompts[i].size();
    if (n + static_cast<size_t>(r.max_tokens) > static_cast<size_t>(limits.n_ctx))
      throw ApiError{400,
                     "prompt " + std::to_string(i) + " has " + std::to_string(n) + " tokens; with max_tokens " +
                         std::to_string(r.max_tokens) + " that exceeds the model's context of " +
                         std::to_string(limits.n_ctx) + " tokens: shorten the prompt or lower max_tokens",
                     "invalid_request_error", "max_tokens", "context_length_exceeded"};
  }
  return r;
}

RouteRequest parse_route(const std::string& body, const ModelLimits& limits) {
  const json j = parse_body(body);
  Fields f(j);
  f.string("model");
  RouteRequest r;
  const json* p = f.get("prompt");
  if (!p) throw bad("prompt", "'prompt' is required", "missing_field");
  if (p->is_string())
    r.tokens = encode(p->get<std::string>(), "prompt", limits);
  else if (p->is_array())
    r.tokens = token_ids(*p, "prompt", limits);
  else
    throw bad("prompt", "'prompt' must be a string or a list of token ids", "invalid_type");
  r.routing = routing_of(f, RoutingDetail::Tokens);
  f.no_unknown();
  if (r.tokens.size() < 2 || r.tokens.size() > static_cast<size_t>(limits.n_ctx) + 1)
    throw ApiError{400,
                   "'prompt' must hold 2 to " + std::to_string(limits.n_ctx + 1) +
                       " tokens (each token is scored from "
                       "the ones before it), got " +
                       std::to_string(r.tokens.size()),
                   "invalid_request_error", "prompt", "context_length_exceeded"};
  return r;
}

std::vector<int32_t> parse_tokenize(const std::string& body, const ModelLimits& limits) {
  const json j = parse_body(body);
  Fields f(j);
  f.string("model");
  const auto text = f.string("prompt");
  if (!text) throw bad("prompt", "'prompt' is required (a string)", "missing_field");
  f.no_unknown();
  return encode(*text, "prompt", limits);
}

std::vector<int32_t> parse_detokenize(const std::string& body, const ModelLimits& limits) {
  const json j = parse_body(body);
  Fields f(j);
  f.string("model");
  const json* t = f.get("tokens");
  if (!t || !t->is_array()) throw bad("tokens", "'tokens' is required (a list of token ids)", "missing_field");
  f.no_unknown();
  if (!limits.tokenizer)
    throw ApiError{400, "this server has no tokenizer", "invalid_request_error", "tokens", "no_tokenizer"};
  return token_ids(*t, "tokens", limits);
}

}  // namespace mom::service
