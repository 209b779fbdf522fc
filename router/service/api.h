// The routing service's request bodies and errors (../shared/spec/SERVICE.md, docs/serving.md):
// parsing and validation of /v1/completions, /v1/route, /tokenize and /detokenize bodies, and
// the OpenAI error object.
//
// Why apart from the HTTP layer: every rule a client can break (a wrong type, an unknown
// field, a value out of range, a prompt over the context) is decided here, on a string, with
// no socket involved, so the rules are tested directly and the server only maps ApiError to
// its status. A message always names the field and the limit.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "io/tokenizer.h"

namespace mom::service {

// A client's mistake (or a refusal), answered with `status` and OpenAI's error body.
struct ApiError {
  int status = 400;
  std::string message, type = "invalid_request_error", param, code;
  nlohmann::json body() const;
};

// What requests are checked against.
struct ModelLimits {
  int vocab_size = 0, n_ctx = 0;
  const io::Gpt2Tokenizer* tokenizer = nullptr;  // null: text prompts are refused (token ids only)
};

enum class RoutingDetail { None, Summary, Tokens };

struct CompletionRequest {
  std::vector<std::vector<int32_t>> prompts;  // one per prompt, tokenised
  int max_tokens = 16;
  double temperature = 1.0, top_p = 1.0;
  int top_k = 0;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;  // up to 4 strings
  int n = 1;
  bool stream = false, include_usage = false, echo = false;
  int logprobs = -1;  // -1: none; 0..5 alternatives
  RoutingDetail routing = RoutingDetail::None;
};

// A body of /v1/completions. Throws ApiError.
CompletionRequest parse_completion(const std::string& body, const ModelLimits& limits);

// A body of /v1/route: {"prompt": text or token ids, "routing"?: "tokens" (default) | "summary"
// | "none"}; at least two tokens, at most n_ctx + 1.
struct RouteRequest {
  std::vector<int32_t> tokens;
  RoutingDetail routing = RoutingDetail::Tokens;
};
RouteRequest parse_route(const std::string& body, const ModelLimits& limits);

// /tokenize {"prompt": text} -> tokens; /detokenize {"tokens": [...]} -> text.
std::vector<int32_t> parse_tokenize(const std::string& body, const ModelLimits& limits);
std::vector<int32_t> parse_detokenize(const std::string& body, const ModelLimits& limits);

// The longest prefix of `text` that does not end inside a UTF-8 sequence (a token's bytes may
// stop half-way through a character; the rest arrives with the next token).
size_t complete_utf8_prefix(const std::string& text);
// JSON text of `j`, replacing invalid UTF-8 (a model can emit any bytes) instead of throwing.
std::string dump(const nlohmann::json& j);

}  // namespace mom::service
