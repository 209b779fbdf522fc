// Engine: generation for many requests at once on one model, with continuous batching, for
// the routing service (docs/serving.md) and anything else that serves a checkpoint.
//
// Why this shape: the model is not thread-safe and a step over many sequences costs little
// more than a step over one (decoding reads every weight once per step, whatever the rows),
// so one worker thread owns the model and runs steps; requests join the running batch
// between steps (their prompt prefilled in a step of its own) and leave it when done. A
// request's text depends only on its prompt, options and seed, never on what else is
// running: a prefill runs alone, decoding steps run in batch-invariant mode (each row's
// numbers independent of the other rows), and each request samples from its own Rng.
//
// Routing: every step's router decisions (Gpt2::routing_trace) are counted per stage, step,
// router and module (SKIP included) for the metrics, and, for a request that asks, returned
// token by token: the trace of a token is how the routers sent it when it was processed, so a
// completion token's trace is known one step after the token was chosen (its event waits for
// it; the last token gets one extra step).
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "core/gpt2.h"
#include "core/sampling.h"

namespace mom::service {

struct GenerateRequest {
  std::vector<int32_t> prompt;  // 1 .. n_ctx tokens
  int max_tokens = 16;          // prompt + max_tokens must fit the context (checked by submit)
  SamplingParams sampling;
  uint64_t seed = 0;
  int logprobs = 0;         // -1: none; 0: the chosen token's log-probability; n: and the n most likely
  bool trace = false;       // the routing trace of every token, prompt and completion
  int32_t stop_token = -1;  // ends the completion without being part of it (-1: none)
};

struct TokenEvent {
  int32_t token = 0;
  double logprob = 0;                           // log p(token) under the model (temperature 1)
  std::vector<std::pair<int32_t, double>> top;  // the `logprobs` most likely alternatives
  nlohmann::json routing;                       // this token's trace (request.trace), else null
};

// A request's consumer, called on the engine's thread. on_token returns false to end the
// request early (the client went away, or saw a stop string); on_finish comes last, once,
// with "stop", "length", "cancelled" or "error: <message>".
struct Sink {
  std::function<void(const nlohmann::json& prompt_routing)> on_prompt;  // trace requests: [token][stage]...
  std::function<bool(const TokenEvent&)> on_token;
  std::function<void(const std::string& finish_reason)> on_finish;
};

struct EngineOptions {
  int max_sequences = 8;  // requests decoding together
  int queue_limit = 64;   // requests waiting beyond those; more are refused
  // Serving across ranks: the expert-parallel group the model's pools are sharded over. Its
  // rank 0 runs the Engine; every other rank runs Engine::follow on its own shard.
  Communicator* group = nullptr;
};

// The numbers of /v1/route and `mom route` for one token sequence t_0..t_n: inputs t_0..t_{n-1},
// targets t_1..t_n.
struct ScoreResult {
  std::vector<double> logprobs;  // [n] log p(t_{i+1} | t_0..t_i)
  nlohmann::json trace;          // [n] per-token routing, as TokenEvent::routing
  double mean_loss = 0;
};

class Engine {
 public:
  Engine(Gpt2& model, const EngineOptions& options);
  ~Engine();  // stops the worker; requests still queued or running finish "cancelled"
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request. Not accepted: the queue is full (a server answers 429), or the request
  // does not fit the model (400); `message` says which limit, naming it.
  struct Admission {
    bool accepted = false, queue_full = false;
    std::string message;
  };
  Admission submit(GenerateRequest request, Sink sink);
  // Queues several requests (the choices of one completion) all together or none: they are
  // refused when running + queued + their number would exceed max_sequences + queue_limit.
  struct Submission {
    GenerateRequest request;
    Sink sink;
  };
  Admission submit(std::vector<Submission> group);
  // Scores tokens without generating; runs on the engine's thread between steps and blocks.
  ScoreResult score(const std::vector<int32_t>& tokens);
  // Stops admitting; waits up to `seconds` for running and queued requests; then cancels
  // what is left. Returns the number cancelled.
  int drain(double seconds);

  // A follower rank of opt.group: takes part in every model step the leader's Engine runs
  // (the leader tells it each one; its modules compute the rows routed to them) until the
  // leader's Engine is destroyed. Throws CommTimeout if the leader stops answering.
  static void follow(Gpt2& model, Communicator& group, int max_sequences);

  int queued() const;
  int running() const;
  // Tokens routed to each module since start: {"chunks/0": {"steps": [{"attn": {"0": n, "1": n,
  // "skip": n}, "ffn": {...}}, ...]}}.
  nlohmann::json routing_counts() const;
  const Gpt2& model() const { return model_; }

 private:
  struct Live;
  void loop();
  void admit(Live& r);
  void step();
  // The request's next token: emitted, or parked until its route is known, or the end.
  void accept(Live& r, int32_t token, TokenEvent ev);
  void finish(Live& r, const std::string& reason);
  // The trace of row `row` of the last forward or step, and the routing counts.
  nlohmann::json row_trace(const std::vector<Gpt2::StageTrace>& t, int64_t row) const;
  void count(const std::vector<Gpt2::StageTrace>& t);
  // Tells the followers (if any) what comes next: a model step (in batch-invariant mode or
  // not: the followers' module kernels must be the leader's), a heartbeat, or the end.
  enum class Op : int32_t { Heartbeat = 0, Step = 1, InvariantStep = 2, Stop = 3 };
  void tell(Op op);

  Gpt2& model_;
  EngineOptions opt_;
  mutable std::mutex mu_;
  std::condition_variable wake_, idle_;
  std::deque<std::pair<GenerateRequest, Sink>> queue_;
  std::deque<std::function<void()>> jobs_;   // score() calls, run between steps
  std::vector<std::unique_ptr<Live>> live_;  // by slot; null: free
  int running_ = 0;
  bool stopping_ = false, admitting_ = true;
  // stage -> step -> router -> module id or "skip" -> tokens
  std::map<std::string, std::vector<std::map<std::string, std::map<std::string, int64_t>>>> counts_;
  std::thread worker_;
};

}  // namespace mom::service
