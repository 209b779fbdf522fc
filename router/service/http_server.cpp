#include "router/service/http_server.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <sstream>

#include "core/error.h"

namespace mom::service {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

const char* const kEndpoints[] = {"/v1/completions", "/v1/route", "/tokenize", "/detokenize",
                                  "/v1/models",      "/health",   "/metrics"};

std::string endpoint_label(const std::string& path) {
  for (const char* e : kEndpoints)
    if (path == e) return e;
  return "other";
}

// Prometheus histogram with fixed buckets (seconds).
struct Histogram {
  static constexpr double kBounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  std::vector<int64_t> counts = std::vector<int64_t>(std::size(kBounds) + 1, 0);
  double sum = 0;
  void add(double s) {
    size_t i = 0;
    while (i < std::size(kBounds) && s > kBounds[i]) ++i;
    ++counts[i], sum += s;
  }
  void write(std::ostringstream& o, const std::string& name, const std::string& labels) const {
    int64_t cum = 0;
    const std::string sep = labels.empty() ? "" : labels + ",";
    for (size_t i = 0; i < counts.size(); ++i) {
      cum += counts[i];
      o << name << "_bucket{" << sep << "le=\"" << (i < std::size(kBounds) ? json(kBounds[i]).dump() : "+Inf") << "\"} "
        << cum << "\n";
    }
    o << name << "_sum" << (labels.empty() ? "" : "{" + labels + "}") << " " << sum << "\n";
    o << name << "_count" << (labels.empty() ? "" : "{" + labels + "}") << " " << cum << "\n";
  }
};

std::string random_id() {
  static std::mutex mu;
  static std::mt19937_64 gen(std::random_device{}());
  std::lock_guard<std::mutex> lock(mu);
  char buf[32];
  std::snprintf(buf, sizeof buf, "cmpl-%016llx", static_cast<unsigned long long>(gen()));
  return buf;
}

uint64_t random_seed() {
  static std::mutex mu;
  static std::mt19937_64 gen(std::random_device{}());
  std::lock_guard<std::mutex> lock(mu);
  return gen();
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Per stage, step and router: how many of these tokens went to each module ("skip": SKIP).
json routing_summary(const std::vector<const json*>& traces) {
  json out = json::object();
  for (const json* t : traces)
    for (auto& [stage, steps] : t->items())
      for (size_t h = 0; h < steps.size(); ++h)
        for (auto& [router, d] : steps[h].items()) {
          json& s = out[stage]["steps"];
          while (s.size() <= h) s.push_back(json::object());
          json& counts = s[h][router];
          if (counts.is_null()) counts = json::object();
          for (const auto& m : d["modules"]) {
            const std::string key = m.get<int>() < 0 ? "skip" : std::to_string(m.get<int>());
            counts[key] = counts.value(key, 0) + 1;
          }
        }
  return out;
}

}  // namespace

struct HttpServer::Metrics {
  std::mutex mu;
  std::map<std::pair<std::string, int>, int64_t> requests;
  std::map<std::string, Histogram> latency;
  Histogram ttft;
  int64_t prompt_tokens = 0, completion_tokens = 0;
};

// One /v1/completions request in flight: its choices as the engine fills them.
struct HttpServer::Completion {
  struct Choice {
    int index = 0, prompt = 0;
    std::vector<int32_t> tokens;
    std::vector<double> logprobs;
    std::vector<json> top, routing;
    json prompt_routing;
    std::string bytes;                 // the completion's text so far (cut at a stop string)
    std::vector<size_t> ends;          // [token] where its bytes end in `bytes` (before a cut)
    size_t sent = 0, tokens_sent = 0;  // streamed so far
    bool finished = false, stopped = false, started = false, closed = false;
    std::string reason;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Choice> choices;
  std::atomic<bool> cancel{false};
  int finished = 0;
  CompletionRequest req;
  const io::Gpt2Tokenizer* tok = nullptr;
  size_t max_stop = 0;
  Clock::time_point start = Clock::now();
  bool first_token = false;
  std::string id = random_id();
  int64_t created = unix_now();

  std::string piece(int32_t token) const {
    return tok && token < tok->vocab_size() ? tok->decode_one(token) : std::string();
  }

  Sink sink(size_t c, Metrics& metrics) {
    return {[this, c](const json& p) {
              std::lock_guard<std::mutex> lock(mu);
              choices[c].prompt_routing = p;
            },
            [this, c, &metrics](const TokenEvent& e) {
              if (cancel) return false;
              std::lock_guard<std::mutex> lock(mu);
              {  // counted as generated, also when the client hangs up before it is sent
                std::lock_guard<std::mutex> m(metrics.mu);
                ++metrics.completion_tokens;
                if (!first_token) metrics.ttft.add(std::chrono::duration<double>(Clock::now() - start).count());
                first_token = true;
              }
              Choice& ch = choices[c];
              ch.tokens.push_back(e.token);
              ch.logprobs.push_back(e.logprob);
              json top = json::object();
              for (const auto& [t, lp] : e.top) top[piece(t)] = lp;
              ch.top.push_back(top);
              ch.routing.push_back(e.routing);
              const size_t before = ch.bytes.size();
              ch.bytes += piece(e.token);
              ch.ends.push_back(ch.bytes.size());
              bool stop = false;
              const size_t from = before > max_stop ? before - max_stop : 0;
              size_t cut = std::string::npos;
              for (const auto& s : req.stop) cut = std::min(cut, ch.bytes.find(s, from));
              if (cut != std::string::npos) ch.bytes.resize(cut), ch.stopped = stop = true;
              cv.notify_all();
              return !stop;
            },
            [this, c](const std::string& reason) {
              std::lock_guard<std::mutex> lock(mu);
              Choice& ch = choices[c];
              ch.reason = ch.stopped ? "stop" : reason.rfind("error", 0) == 0 ? "error" : reason;
              ch.finished = true;
              ++finished;
              cv.notify_all();
            }};
  }

  // Bytes of a choice that may go out now: complete characters, and (while running) not the
  // last max_stop − 1 bytes, which might still become a stop string.
  size_t ready(const Choice& ch) const {
    if (ch.finished) return ch.bytes.size();
    size_t n = ch.bytes.size();
    if (max_stop > 1) n = n > max_stop - 1 ? n - (max_stop - 1) : 0;
    return complete_utf8_prefix(ch.bytes.substr(0, n));
  }

  json logprobs_of(const Choice& ch, size_t from, size_t to, size_t text_offset) const {
    json l = {{"tokens", json::array()},
              {"token_logprobs", json::array()},
              {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
    size_t offset = text_offset;
    for (size_t i = from; i < to; ++i) {
      const std::string p = piece(ch.tokens[i]);
      l["tokens"].push_back(p);
      l["token_logprobs"].push_back(ch.logprobs[i]);
      l["top_logprobs"].push_back(req.logprobs > 0 ? ch.top[i] : json());
      l["text_offset"].push_back(offset);
      offset += p.size();
    }
    return l;
  }

  json routing_of(const Choice& ch, size_t from, size_t to, bool with_prompt) const {
    if (req.routing == RoutingDetail::Tokens) {
      json r = {{"completion", json(std::vector<json>(ch.routing.begin() + from, ch.routing.begin() + to))}};
      if (with_prompt) r["prompt"] = ch.prompt_routing;
      return r;
    }
    std::vector<const json*> all;
    for (const auto& t : ch.prompt_routing) all.push_back(&t);
    for (const auto& t : ch.routing) all.push_back(&t);
    return {{"summary", routing_summary(all)}};
  }
};

HttpServer::HttpServer(const ServerOptions& options)
    : opt_(options), http_(std::make_unique<httplib::Server>()), metrics_(std::make_unique<Metrics>()) {
  http_->new_task_queue = [n = opt_.http_threads] { return new httplib::ThreadPool(static_cast<size_t>(n)); };
  http_->set_payload_max_length(opt_.max_body);
  http_->set_read_timeout(10, 0);
  http_->set_write_timeout(10, 0);
  routes();
}

HttpServer::~HttpServer() = default;

int HttpServer::bind() {
  const int port = opt_.port == 0 ? http_->bind_to_any_port(opt_.host)
                                  : (http_->bind_to_port(opt_.host, opt_.port) ? opt_.port : -1);
  require(port > 0, "mom serve: cannot listen on " + opt_.host + ":" + std::to_string(opt_.port) +
                        " (in use, or not an address of this machine); choose another --port or --host");
  return port;
}

void HttpServer::run() { http_->listen_after_bind(); }

void HttpServer::set_ready(Engine* engine, const io::Gpt2Tokenizer* tokenizer, json model_card) {
  tokenizer_ = tokenizer;
  model_card_ = std::move(model_card);
  vocab_size_ = engine->model().config().vocab_size;
  n_ctx_ = engine->model().config().n_ctx;
  engine_ = engine;
}

void HttpServer::shutdown(double drain_s) {
  closing_ = true;
  if (Engine* e = engine_.load()) {
    std::fprintf(stderr, "mom serve: draining: %d running, %d queued (at most %g s)\n", e->running(), e->queued(),
                 drain_s);
    if (const int cancelled = e->drain(drain_s))
      std::fprintf(stderr, "mom serve: %d requests cancelled after the drain time\n", cancelled);
  }
  http_->stop();
}

void HttpServer::wait_for_shutdown_request() {
  std::unique_lock<std::mutex> lock(wait_mu_);
  wait_cv_.wait(lock, [&] { return wake_; });
}

void HttpServer::wake() {
  std::lock_guard<std::mutex> lock(wait_mu_);
  wake_ = true;
  wait_cv_.notify_all();
}

ModelLimits HttpServer::limits() const { return {vocab_size_, n_ctx_, tokenizer_}; }

void HttpServer::reply(httplib::Response& res, int status, const json& body) const {
  res.status = status;
  res.set_content(dump(body), "application/json");
}

void HttpServer::error(httplib::Response& res, const ApiError& e) const {
  reply(res, e.status, e.body());
  if (e.status == 429 || e.status == 503) res.set_header("Retry-After", "1");
}

bool HttpServer::authorised(const httplib::Request& req, httplib::Response& res) const {
  if (opt_.api_key.empty()) return true;
  const std::string want = "Bearer " + opt_.api_key, got = req.get_header_value("Authorization");
  // Compared in time independent of where the strings differ.
  bool same = got.size() == want.size();
  unsigned char diff = 0;
  for (size_t i = 0; i < want.size(); ++i) diff |= static_cast<unsigned char>(i < got.size() ? got[i] ^ want[i] : 1);
  if (same && diff == 0) return true;
  error(res, {401, got.empty() ? "missing API key: send 'Authorization: Bearer KEY'" : "invalid API key",
              "authentication_error", "", "invalid_api_key"});
  res.set_header("WWW-Authenticate", "Bearer");
  return false;
}

void HttpServer::routes() {
  httplib::Server& s = *http_;
  // Every handler runs inside this: the key, readiness, a catch-all (a bug answers 500, the
  // server goes on), and the latency metric.
  auto handle = [this](bool needs_model, auto body) {
    return [this, needs_model, body](const httplib::Request& req, httplib::Response& res) {
      const auto t0 = Clock::now();
      try {
        if (!authorised(req, res)) return;
        if (needs_model && !engine_.load())
          return error(res, {503, "the model is still loading; retry shortly", "server_error", "", "loading"});
        if (closing_ && needs_model)
          return error(res, {503, "the server is shutting down", "server_error", "", "shutting_down"});
        body(req, res);
      } catch (const ApiError& e) {
        error(res, e);
      } catch (const UserError& e) {
        error(res, {400, e.what(), "invalid_request_error", "", "invalid_value"});
      } catch (const std::exception& e) {
        error(res, {500, std::string("internal error: ") + e.what(), "server_error", "", "internal"});
      }
      if (req.path != "/v1/completions") {  // completions time themselves (streams end later)
        std::lock_guard<std::mutex> lock(metrics_->mu);
        metrics_->latency[endpoint_label(req.path)].add(std::chrono::duration<double>(Clock::now() - t0).count());
      }
    };
  };
  s.Post("/v1/completions",
         handle(true, [this](const httplib::Request& q, httplib::Response& r) { completions(q, r); }));
  s.Post("/v1/route", handle(true, [this](const httplib::Request& q, httplib::Response& r) { route(q, r); }));
  s.Post("/tokenize", handle(true, [this](const httplib::Request& q, httplib::Response& r) {
           const auto t = parse_tokenize(q.body, limits());
           reply(r, 200, {{"tokens", t}, {"count", t.size()}});
         }));
  s.Post("/detokenize", handle(true, [this](const httplib::Request& q, httplib::Response& r) {
           const auto t = parse_detokenize(q.body, limits());
           reply(r, 200, {{"prompt", tokenizer_->decode(t)}});
         }));
  s.Get("/v1/models", handle(true, [this](const httplib::Request&, httplib::Response& r) {
          reply(r, 200, {{"object", "list"}, {"data", json::array({model_card_})}});
        }));
  s.Get("/health", [this](const httplib::Request&, httplib::Response& r) {
    if (engine_.load() && !closing_) return reply(r, 200, {{"status", "ok"}});
    reply(r, 503, {{"status", closing_ ? "shutting down" : "loading"}});
  });
  s.Get("/metrics", handle(false, [this](const httplib::Request&, httplib::Response& r) {
          std::ostringstream o;
          Engine* e = engine_.load();
          {
            std::lock_guard<std::mutex> lock(metrics_->mu);
            o << "# HELP mom_requests_total Requests answered, by endpoint and status.\n"
                 "# TYPE mom_requests_total counter\n";
            for (const auto& [k, n] : metrics_->requests)
              o << "mom_requests_total{endpoint=\"" << k.first << "\",status=\"" << k.second << "\"} " << n << "\n";
            o << "# HELP mom_prompt_tokens_total Prompt tokens of completion requests.\n"
                 "# TYPE mom_prompt_tokens_total counter\nmom_prompt_tokens_total "
              << metrics_->prompt_tokens << "\n";
            o << "# HELP mom_completion_tokens_total Tokens generated.\n"
                 "# TYPE mom_completion_tokens_total counter\nmom_completion_tokens_total "
              << metrics_->completion_tokens << "\n";
            o << "# HELP mom_request_seconds Request latency, from the body read to the last byte.\n"
                 "# TYPE mom_request_seconds histogram\n";
            for (const auto& [ep, h] : metrics_->latency) h.write(o, "mom_request_seconds", "endpoint=\"" + ep + "\"");
            o << "# HELP mom_time_to_first_token_seconds Completion requests: time to the first token.\n"
                 "# TYPE mom_time_to_first_token_seconds histogram\n";
            metrics_->ttft.write(o, "mom_time_to_first_token_seconds", "");
          }
          o << "# HELP mom_queue_depth Requests waiting for a decoding slot.\n# TYPE mom_queue_depth gauge\n"
            << "mom_queue_depth " << (e ? e->queued() : 0) << "\n";
          o << "# HELP mom_running_requests Requests decoding now.\n# TYPE mom_running_requests gauge\n"
            << "mom_running_requests " << (e ? e->running() : 0) << "\n";
          o << "# HELP mom_routed_tokens_total Tokens routed to each module (module=\"skip\": SKIP) since start, "
               "by routed stage, assembly step and router.\n# TYPE mom_routed_tokens_total counter\n";
          const json routed = e ? e->routing_counts() : json::object();  // kept alive for items()
          for (auto& [stage, st] : routed.items())
            for (size_t h = 0; h < st["steps"].size(); ++h)
              for (auto& [router, counts] : st["steps"][h].items())
                for (auto& [module, n] : counts.items())
                  o << "mom_routed_tokens_total{stage=\"" << stage << "\",step=\"" << h << "\",router=\"" << router
                    << "\",module=\"" << module << "\"} " << n.get<int64_t>() << "\n";
          r.set_content(o.str(), "text/plain; version=0.0.4");
        }));
  // Known paths with another method: 405, naming the one allowed.
  for (const char* p : kEndpoints) {
    const std::string allow =
        std::string(p) == "/v1/models" || std::string(p) == "/health" || std::string(p) == "/metrics" ? "GET" : "POST";
    auto not_allowed = [this, allow](const httplib::Request& q, httplib::Response& r) {
      r.set_header("Allow", allow);
      error(r, {405, q.method + " is not allowed on " + q.path + "; use " + allow, "invalid_request_error", "",
                "method_not_allowed"});
    };
    if (allow == "GET")
      s.Post(p, not_allowed);
    else
      s.Get(p, not_allowed);
    s.Put(p, not_allowed);
    s.Delete(p, not_allowed);
    s.Patch(p, not_allowed);
  }
  // Whatever httplib answers by itself (unknown path, body over the limit, a bad request
  // line) gets the same JSON error body.
  s.set_error_handler([this](const httplib::Request& q, httplib::Response& r) {
    if (!r.body.empty()) return;
    const int st = r.status;
    const std::string msg = st == 404 ? "no such endpoint: " + q.method + " " + q.path.substr(0, 200)
                            : st == 413
                                ? "the request body is over the limit of " + std::to_string(opt_.max_body) + " bytes"
                                : std::string("HTTP ") + std::to_string(st);
    error(r, {st, msg, st >= 500 ? "server_error" : "invalid_request_error", "",
              st == 404   ? "not_found"
              : st == 413 ? "body_too_large"
                          : "bad_request"});
  });
  s.set_logger([this](const httplib::Request& q, const httplib::Response& r) {
    {
      std::lock_guard<std::mutex> lock(metrics_->mu);
      ++metrics_->requests[{endpoint_label(q.path), r.status}];
    }
    if (opt_.max_requests > 0 && ++answered_ >= opt_.max_requests) wake();
  });
}

void HttpServer::route(const httplib::Request& req, httplib::Response& res) {
  const RouteRequest r = parse_route(req.body, limits());
  const ScoreResult s = engine_.load()->score(r.tokens);
  json lps = json::array({nullptr});
  for (double lp : s.logprobs) lps.push_back(lp);
  json out = {{"object", "route"},
              {"model", opt_.model_id},
              {"tokens", r.tokens},
              {"token_logprobs", lps},
              {"mean_loss", s.mean_loss}};
  if (tokenizer_) {
    json strs = json::array();
    for (int32_t t : r.tokens) strs.push_back(t < tokenizer_->vocab_size() ? tokenizer_->decode_one(t) : "");
    out["token_strings"] = strs;
  }
  if (r.routing == RoutingDetail::Tokens) out["routing"] = s.trace;
  if (r.routing == RoutingDetail::Summary) {
    std::vector<const json*> all;
    for (const auto& t : s.trace) all.push_back(&t);
    out["routing"] = {{"summary", routing_summary(all)}};
  }
  reply(res, 200, out);
}

void HttpServer::completions(const httplib::Request& req, httplib::Response& res) {
  auto c = std::make_shared<Completion>();
  c->req = parse_completion(req.body, limits());
  c->tok = tokenizer_;
  for (const auto& s : c->req.stop) c->max_stop = std::max(c->max_stop, s.size());
  const CompletionRequest& q = c->req;
  const size_t n_choices = q.prompts.size() * static_cast<size_t>(q.n);
  c->choices.resize(n_choices);
  Engine& engine = *engine_.load();
  // Echo with logprobs: the prompt's own log-probabilities, scored first.
  std::vector<std::vector<double>> prompt_logprobs(q.prompts.size());
  if (q.echo && q.logprobs >= 0)
    for (size_t i = 0; i < q.prompts.size(); ++i)
      if (q.prompts[i].size() >= 2) prompt_logprobs[i] = engine.score(q.prompts[i]).logprobs;
  const uint64_t base_seed = q.seed ? *q.seed : random_seed();
  std::vector<Engine::Submission> group;
  for (size_t k = 0; k < n_choices; ++k) {
    Completion::Choice& ch = c->choices[k];
    ch.index = static_cast<int>(k), ch.prompt = static_cast<int>(k / static_cast<size_t>(q.n));
    GenerateRequest g;
    g.prompt = q.prompts[static_cast<size_t>(ch.prompt)];
    g.max_tokens = q.max_tokens;
    g.sampling = {q.temperature, q.top_k, q.top_p};
    g.seed = base_seed + k;
    g.logprobs = q.logprobs;  // -1 when not asked for: the engine then skips the log-softmax
    g.trace = q.routing != RoutingDetail::None;
    g.stop_token = tokenizer_ ? tokenizer_->eot() : -1;
    group.push_back({std::move(g), c->sink(k, *metrics_)});
  }
  // All the choices enter the queue together, or the request is refused whole.
  const Engine::Admission a = engine.submit(std::move(group));
  if (!a.accepted)
    throw ApiError{a.queue_full ? (closing_ ? 503 : 429) : 400, a.message,
                   a.queue_full ? "server_error" : "invalid_request_error", a.queue_full ? "" : "n",
                   a.queue_full ? "queue_full" : "invalid_value"};
  {
    std::lock_guard<std::mutex> lock(metrics_->mu);
    for (const auto& p : q.prompts) metrics_->prompt_tokens += static_cast<int64_t>(p.size());
  }
  auto prompt_text = [this, c](int p) {
    return tokenizer_ ? tokenizer_->decode(c->req.prompts[static_cast<size_t>(p)]) : std::string();
  };
  auto usage = [c] {
    int64_t prompt = 0, completion = 0;
    for (const auto& p : c->req.prompts) prompt += static_cast<int64_t>(p.size());
    for (const auto& ch : c->choices) completion += static_cast<int64_t>(ch.tokens.size());
    return json{{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
  };
  auto time_completion = [this, c] {
    std::lock_guard<std::mutex> lock(metrics_->mu);
    metrics_->latency["/v1/completions"].add(std::chrono::duration<double>(Clock::now() - c->start).count());
  };
  const double timeout = opt_.timeout_s;

  if (!q.stream) {
    std::unique_lock<std::mutex> lock(c->mu);
    const bool done = c->cv.wait_for(lock, std::chrono::duration<double>(timeout),
                                     [&] { return c->finished == static_cast<int>(n_choices); });
    if (!done) {
      c->cancel = true;
      throw ApiError{504, "the request ran past the server's timeout of " + json(timeout).dump() + " s", "server_error",
                     "", "timeout"};
    }
    json choices = json::array();
    for (const auto& ch : c->choices) {
      if (ch.reason == "error") throw ApiError{500, "generation failed", "server_error", "", "internal"};
      const std::string head = q.echo ? prompt_text(ch.prompt) : "";
      json j = {{"index", ch.index}, {"text", head + ch.bytes}, {"finish_reason", ch.reason}};
      // Completion tokens that fall inside the text (a stop string cuts the tail).
      size_t covered = 0, len = 0;
      while (covered < ch.tokens.size() && len < ch.bytes.size()) len += c->piece(ch.tokens[covered++]).size();
      if (q.logprobs >= 0) {
        json l = c->logprobs_of(ch, 0, covered, head.size());
        if (q.echo) {  // the prompt's tokens first (the first has no log-probability)
          json pl = {{"tokens", json::array()},
                     {"token_logprobs", json::array()},
                     {"top_logprobs", json::array()},
                     {"text_offset", json::array()}};
          size_t off = 0;
          const auto& pt = q.prompts[static_cast<size_t>(ch.prompt)];
          for (size_t i = 0; i < pt.size(); ++i) {
            const std::string piece = c->piece(pt[i]);
            pl["tokens"].push_back(piece);
            pl["token_logprobs"].push_back(i == 0 ? json()
                                                  : json(prompt_logprobs[static_cast<size_t>(ch.prompt)][i - 1]));
            pl["top_logprobs"].push_back(nullptr);
            pl["text_offset"].push_back(off);
            off += piece.size();
          }
          for (const char* k : {"tokens", "token_logprobs", "top_logprobs", "text_offset"})
            for (const auto& v : l[k]) pl[k].push_back(v);
          l = pl;
        }
        j["logprobs"] = l;
      } else {
        j["logprobs"] = nullptr;
      }
      if (q.routing != RoutingDetail::None) j["routing"] = c->routing_of(ch, 0, ch.routing.size(), true);
      choices.push_back(j);
    }
    lock.unlock();
    time_completion();
    return reply(res, 200,
                 {{"id", c->id},
                  {"object", "text_completion"},
                  {"created", c->created},
                  {"model", opt_.model_id},
                  {"choices", choices},
                  {"usage", usage()}});
  }

  // Streaming: one `data:` event per batch of new tokens of a choice, then its final chunk,
  // an optional usage chunk, and [DONE]. A failed write means the client left: generation stops.
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, c, prompt_text, usage, time_completion, timeout](size_t, httplib::DataSink& sink) {
        const CompletionRequest& q = c->req;
        auto send = [&](const json& j) {
          const std::string ev = "data: " + dump(j) + "\n\n";
          return sink.write(ev.data(), ev.size());
        };
        auto chunk = [&](const json& choice) {
          return json{{"id", c->id},
                      {"object", "text_completion"},
                      {"created", c->created},
                      {"model", opt_.model_id},
                      {"choices", json::array({choice})}};
        };
        std::unique_lock<std::mutex> lock(c->mu);
        const auto deadline =
            c->start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout));
        // One event per token (its text: the bytes that became final with it, which a
        // possible stop string or a split character may hold back to a later event), and a
        // choice's last event carries its finish_reason.
        auto pending = [&](const Completion::Choice& ch) {
          return ch.tokens.size() > ch.tokens_sent || (ch.finished && !ch.closed);
        };
        for (;;) {
          bool all_closed = true, wrote = false;
          for (auto& ch : c->choices) {
            all_closed = all_closed && ch.closed;
            if (!pending(ch)) continue;
            const size_t t0 = ch.tokens_sent, t1 = std::min(ch.tokens.size(), t0 + 1);
            const bool first = !ch.started, closing = ch.finished && t1 == ch.tokens.size();
            const size_t upto = closing ? c->ready(ch) : std::min(c->ready(ch), t1 > 0 ? ch.ends[t1 - 1] : 0);
            json choice = {{"index", ch.index},
                           {"text", (first && q.echo ? prompt_text(ch.prompt) : "") +
                                        ch.bytes.substr(ch.sent, upto > ch.sent ? upto - ch.sent : 0)},
                           {"logprobs", nullptr},
                           {"finish_reason", nullptr}};
            if (q.logprobs >= 0 && t1 > t0)
              choice["logprobs"] = c->logprobs_of(ch, t0, t1, t0 > 0 ? ch.ends[t0 - 1] : 0);
            if (q.routing == RoutingDetail::Tokens && (t1 > t0 || first))
              choice["routing"] = c->routing_of(ch, t0, t1, first);
            if (closing) {
              choice["finish_reason"] = ch.reason == "error" ? "stop" : ch.reason;
              if (q.routing == RoutingDetail::Summary) choice["routing"] = c->routing_of(ch, 0, t1, true);
            }
            ch.sent = std::max(ch.sent, upto), ch.tokens_sent = t1, ch.started = true, ch.closed = closing;
            lock.unlock();
            const bool ok = send(chunk(choice));
            lock.lock();
            if (!ok) {
              c->cancel = true;
              return false;
            }
            wrote = true;
          }
          if (all_closed) break;
          if (wrote) continue;  // look again before waiting: more may have come while writing
          const bool woke = c->cv.wait_until(lock, deadline, [&] {
            for (const auto& ch : c->choices)
              if (pending(ch)) return true;
            return false;
          });
          if (!woke) {
            c->cancel = true;
            lock.unlock();
            send(ApiError{504, "the request ran past the server's timeout", "server_error", "", "timeout"}.body());
            sink.done();
            return true;
          }
        }
        lock.unlock();
        if (q.include_usage) {
          json u = chunk(json::object());
          u["choices"] = json::array();
          u["usage"] = usage();
          if (!send(u)) return false;
        }
        const std::string done = "data: [DONE]\n\n";
        if (!sink.write(done.data(), done.size())) return false;
        time_completion();
        sink.done();
        return true;
      },
      [c](bool) { c->cancel = true; });
}

}  // namespace mom::service
