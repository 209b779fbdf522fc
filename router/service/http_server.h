// The routing service's HTTP side (../shared/spec/SERVICE.md, docs/serving.md): OpenAI's
// /v1/completions (with SSE streaming), /v1/route, /tokenize, /detokenize, /v1/models,
// /health and Prometheus /metrics, over cpp-httplib, in front of one Engine.
//
// Why this shape: cpp-httplib parses HTTP (no hand-written parsing) and runs each connection
// on a pool thread; a handler turns the body into a request (router/service/api.h, where every
// rule a client can break lives), hands it to the engine and waits for the tokens, writing
// them as they come when streaming. The server listens before the model is loaded (/health
// answers 503 meanwhile), every handler catches everything (a request can end in a 4xx or,
// for a bug, a 500, never in a crash), and shutting down drains the engine before the
// listener closes.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "router/service/api.h"
#include "router/service/engine.h"

namespace httplib {
class Server;
class Request;
struct Response;
}  // namespace httplib

namespace mom::service {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;            // 0: any free port (bind() says which)
  std::string api_key;        // empty: no key needed
  size_t max_body = 1 << 20;  // bytes; larger bodies get 413
  double timeout_s = 600;     // a request still running after this is cancelled (504)
  int http_threads = 32;      // connections served at once
  int64_t max_requests = 0;   // > 0: shut down after answering this many (tests)
  std::string model_id = "mom";
};

class HttpServer {
 public:
  explicit HttpServer(const ServerOptions& options);
  ~HttpServer();
  // Binds the listener; returns the port. UserError when the address cannot be bound.
  int bind();
  // Serves until shutdown() (call from its own thread).
  void run();
  // The model is loaded: from now on requests go to `engine` (until then: 503).
  void set_ready(Engine* engine, const io::Gpt2Tokenizer* tokenizer, nlohmann::json model_card);
  // Stops accepting new work, drains the engine for up to `drain_s`, closes the listener.
  void shutdown(double drain_s);
  // Blocks until a shutdown is due (max_requests answered) or `wake()` is called.
  void wait_for_shutdown_request();
  void wake();

 private:
  struct Metrics;
  struct Completion;
  void routes();
  bool authorised(const httplib::Request& req, httplib::Response& res) const;
  void reply(httplib::Response& res, int status, const nlohmann::json& body) const;
  void error(httplib::Response& res, const ApiError& e) const;
  void completions(const httplib::Request& req, httplib::Response& res);
  void route(const httplib::Request& req, httplib::Response& res);
  ModelLimits limits() const;

  ServerOptions opt_;
  std::unique_ptr<httplib::Server> http_;
  std::unique_ptr<Metrics> metrics_;
  std::atomic<Engine*> engine_{nullptr};
  const io::Gpt2Tokenizer* tokenizer_ = nullptr;
  nlohmann::json model_card_;
  int vocab_size_ = 0, n_ctx_ = 0;
  std::atomic<int64_t> answered_{0};
  std::atomic<bool> closing_{false};
  std::mutex wait_mu_;
  std::condition_variable wait_cv_;
  bool wake_ = false;
};

}  // namespace mom::service
