#include "router/service/engine.h"

#include <algorithm>
#include <chrono>
#include <optional>

#include "core/error.h"
#include "parallel/communicator.h"

namespace mom::service {

struct Engine::Live {
  GenerateRequest req;
  Sink sink;
  Rng rng;
  int slot = 0;
  std::vector<int32_t> seq;  // prompt, then the completion
  int generated = 0;
  // Trace requests: the chosen token waits for the step that processes it to know its route;
  // `last` marks the final one (finish after that step with `reason`).
  bool waiting = false, last = false;
  std::string reason;
  TokenEvent pending;
};

Engine::Engine(Gpt2& model, const EngineOptions& options) : model_(model), opt_(options) {
  require(opt_.max_sequences >= 1, "engine: max_sequences must be >= 1");
  require(opt_.queue_limit >= 0, "engine: queue_limit must be >= 0");
  if (opt_.group && opt_.group->size() == 1) opt_.group = nullptr;
  require(!opt_.group || opt_.group->rank() == 0, "engine: runs on rank 0 of its group; the others follow()");
  model_.prepare_decode(opt_.max_sequences, model_.config().n_ctx);
  live_.resize(static_cast<size_t>(opt_.max_sequences));
  // OpenMP's thread count is per thread: the worker takes the one its creator set (--threads),
  // not the process default, so that it computes exactly as `mom eval` or `mom generate` would.
  worker_ = std::thread([this, threads = model_.backend().num_threads()] {
    model_.backend().set_num_threads(threads);
    loop();
  });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  worker_.join();
  tell(Op::Stop);
}

void Engine::tell(Op op) {
  if (!opt_.group) return;
  int32_t code = static_cast<int32_t>(op);
  opt_.group->broadcast_bytes(&code, sizeof code, 0);
}

void Engine::follow(Gpt2& model, Communicator& group, int max_sequences) {
  model.prepare_decode(max_sequences, model.config().n_ctx);
  std::vector<float> none;
  for (;;) {
    int32_t code = 0;
    group.broadcast_bytes(&code, sizeof code, 0);
    if (code == static_cast<int32_t>(Op::Stop)) return;
    // The leader's step, whatever kind (a prefill, a batch of tokens, a scored sequence): the
    // same sequence of token exchanges, so a step of no rows of our own mirrors it.
    if (code == static_cast<int32_t>(Op::Heartbeat)) continue;
    std::optional<BatchInvariant> invariant;
    if (code == static_cast<int32_t>(Op::InvariantStep)) invariant.emplace(model.backend());
    model.decode_step(nullptr, nullptr, nullptr, 0, {}, none);
  }
}

Engine::Admission Engine::submit(GenerateRequest request, Sink sink) {
  std::vector<Submission> one;
  one.push_back({std::move(request), std::move(sink)});
  return submit(std::move(one));
}

Engine::Admission Engine::submit(std::vector<Submission> group) {
  const int ctx = model_.config().n_ctx, V = model_.config().vocab_size;
  for (const Submission& s : group) {
    const GenerateRequest& request = s.request;
    const int n = static_cast<int>(request.prompt.size());
    if (n < 1) return {false, false, "the prompt must hold at least one token"};
    if (request.max_tokens < 0) return {false, false, "max_tokens must be >= 0"};
    if (n + request.max_tokens > ctx)
      return {false, false,
              "the prompt (" + std::to_string(n) + " tokens) plus max_tokens (" + std::to_string(request.max_tokens) +
                  ") exceeds the model's context of " + std::to_string(ctx) + " tokens"};
    for (int32_t t : request.prompt)
      if (t < 0 || t >= V)
        return {false, false,
                "token id " + std::to_string(t) + " is outside the vocabulary (0.." + std::to_string(V - 1) + ")"};
  }
  const int k = static_cast<int>(group.size()), capacity = opt_.max_sequences + opt_.queue_limit;
  if (k > capacity)
    return {false, false,
            "the request needs " + std::to_string(k) + " sequences (prompts x n) but the server runs " +
                std::to_string(opt_.max_sequences) + " and queues " + std::to_string(opt_.queue_limit) +
                " at most: lower n, or raise --max-sequences / --queue"};
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!admitting_ || stopping_) return {false, true, "the server is shutting down"};
    if (running_ + static_cast<int>(queue_.size()) + k > capacity)
      return {false, true,
              "the queue is full (" + std::to_string(queue_.size()) + " waiting of " +
                  std::to_string(opt_.queue_limit) + ", " + std::to_string(running_) + " running); retry later"};
    for (Submission& s : group) queue_.emplace_back(std::move(s.request), std::move(s.sink));
  }
  wake_.notify_all();
  return {true, false, ""};
}

ScoreResult Engine::score(const std::vector<int32_t>& tokens) {
  const int ctx = model_.config().n_ctx, V = model_.config().vocab_size;
  const int n = static_cast<int>(tokens.size()) - 1;
  require(n >= 1, "scoring needs at least two tokens (each scored token is predicted from the ones before it)");
  require(n <= ctx, "scoring " + std::to_string(n + 1) + " tokens exceeds the model's context of " +
                        std::to_string(ctx) + " (at most " + std::to_string(ctx + 1) + " tokens)");
  for (int32_t t : tokens)
    require(t >= 0 && t < V,
            "token id " + std::to_string(t) + " is outside the vocabulary (0.." + std::to_string(V - 1) + ")");
  std::packaged_task<ScoreResult()> task([this, &tokens, n] {
    ScoreResult r;
    tell(Op::Step);
    r.mean_loss = model_.forward(tokens.data(), tokens.data() + 1, 1, n);
    std::vector<double> losses;
    model_.token_losses(losses);
    for (double l : losses) r.logprobs.push_back(-l);
    const auto traces = model_.routing_trace();
    count(traces);
    r.trace = nlohmann::json::array();
    for (int64_t i = 0; i < n && !traces.empty(); ++i) r.trace.push_back(row_trace(traces, i));
    return r;
  });
  std::future<ScoreResult> done = task.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    require(!stopping_, "the server is shutting down");
    jobs_.emplace_back([&task] { task(); });
  }
  wake_.notify_all();
  return done.get();
}

int Engine::drain(double seconds) {
  std::unique_lock<std::mutex> lock(mu_);
  admitting_ = false;
  idle_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return running_ == 0 && queue_.empty(); });
  const int left = running_ + static_cast<int>(queue_.size());
  stopping_ = true;
  lock.unlock();
  wake_.notify_all();
  return left;
}

int Engine::queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(queue_.size());
}

int Engine::running() const {
  std::lock_guard<std::mutex> lock(mu_);
  return running_;
}

nlohmann::json Engine::routing_counts() const {
  std::lock_guard<std::mutex> lock(mu_);
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [stage, steps] : counts_) {
    nlohmann::json s = nlohmann::json::array();
    for (const auto& routers : steps) s.push_back(routers);
    out[stage] = {{"steps", s}};
  }
  return out;
}

nlohmann::json Engine::row_trace(const std::vector<Gpt2::StageTrace>& traces, int64_t row) const {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& st : traces) {
    nlohmann::json steps = nlohmann::json::array();
    for (const RouterTrace& t : st.routers) {
      while (static_cast<int>(steps.size()) <= t.step) steps.push_back(nlohmann::json::object());
      const auto at = static_cast<size_t>(row * t.K);
      nlohmann::json& e = steps[static_cast<size_t>(t.step)][t.router];
      e = {{"modules", std::vector<int32_t>(t.modules.begin() + at, t.modules.begin() + at + t.K)},
           {"weights", std::vector<double>(t.weights.begin() + at, t.weights.begin() + at + t.K)}};
      // Only an MoE layer with a capacity drops assignments; the flags come when one was.
      const auto first = t.dropped.begin() + static_cast<std::ptrdiff_t>(at);
      if (std::any_of(first, first + t.K, [](auto d) { return d != 0; }))
        e["dropped"] = std::vector<int>(first, first + t.K);
    }
    std::string name = st.stage;
    if (!name.empty() && name.back() == '/') name.pop_back();
    out[name] = steps;
  }
  return out;
}

void Engine::count(const std::vector<Gpt2::StageTrace>& traces) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& st : traces) {
    std::string name = st.stage;
    if (!name.empty() && name.back() == '/') name.pop_back();
    auto& steps = counts_[name];
    for (const RouterTrace& t : st.routers) {
      if (steps.size() <= static_cast<size_t>(t.step)) steps.resize(static_cast<size_t>(t.step) + 1);
      auto& c = steps[static_cast<size_t>(t.step)][t.router];
      for (size_t i = 0; i < t.modules.size(); ++i)
        if (!t.dropped[i]) ++c[t.modules[i] < 0 ? std::string("skip") : std::to_string(t.modules[i])];
    }
  }
}

// The slot is free again before the consumer hears of the end.
void Engine::finish(Live& r, const std::string& reason) {
  const auto on_finish = std::move(r.sink.on_finish);
  live_[static_cast<size_t>(r.slot)].reset();  // destroys r
  {
    std::lock_guard<std::mutex> lock(mu_);
    --running_;
  }
  idle_.notify_all();
  if (on_finish) on_finish(reason);
}

namespace {

// The chosen token's event (its log-probability only when asked for: a log-softmax over the
// vocabulary costs as much as the sampling).
TokenEvent event_of(const float* logits, int V, int32_t token, int logprobs) {
  TokenEvent e;
  e.token = token;
  if (logprobs >= 0) e.logprob = token_logprob(logits, V, token);
  if (logprobs > 0) e.top = top_logprobs(logits, V, logprobs);
  return e;
}

}  // namespace

void Engine::accept(Live& r, int32_t token, TokenEvent ev) {
  if (token == r.req.stop_token) return finish(r, "stop");
  r.seq.push_back(token);
  ++r.generated;
  const bool last = r.generated >= r.req.max_tokens;
  const bool fits = static_cast<int>(r.seq.size()) <= model_.config().n_ctx;  // can be fed at its position
  if (!r.req.trace || !fits) {
    if (!r.sink.on_token(ev)) return finish(r, "stop");
    if (last || !fits) return finish(r, "length");
    return;
  }
  r.pending = std::move(ev), r.waiting = true, r.last = last, r.reason = "length";
}

void Engine::admit(Live& r) {
  const int n = static_cast<int>(r.req.prompt.size()), V = model_.config().vocab_size;
  std::vector<int32_t> slots(static_cast<size_t>(n), r.slot), positions(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) positions[static_cast<size_t>(i)] = i;
  std::vector<float> logits;
  tell(Op::Step);
  model_.decode_step(r.req.prompt.data(), slots.data(), positions.data(), n, {n - 1}, logits);  // alone, fast kernels
  const auto traces = model_.routing_trace();
  count(traces);
  if (r.req.trace && r.sink.on_prompt) {
    nlohmann::json prompt = nlohmann::json::array();
    for (int64_t i = 0; i < n; ++i) prompt.push_back(row_trace(traces, i));
    r.sink.on_prompt(prompt);
  }
  r.seq = r.req.prompt;
  if (r.req.max_tokens == 0) return finish(r, "length");
  std::vector<int32_t> order;
  const int32_t token = sample_token(logits.data(), V, r.req.sampling, r.rng, order);
  accept(r, token, event_of(logits.data(), V, token, r.req.logprobs));
}

void Engine::step() {
  std::vector<int32_t> tokens, slots, positions;
  std::vector<int> want;
  for (const auto& r : live_)
    if (r) {
      want.push_back(static_cast<int>(tokens.size()));
      tokens.push_back(r->seq.back()), slots.push_back(r->slot),
          positions.push_back(static_cast<int32_t>(r->seq.size()) - 1);
    }
  if (tokens.empty()) return;
  std::vector<float> logits;
  {
    BatchInvariant invariant(model_.backend());
    tell(Op::InvariantStep);
    model_.decode_step(tokens.data(), slots.data(), positions.data(), static_cast<int>(tokens.size()), want, logits);
  }
  const auto traces = model_.routing_trace();
  count(traces);
  const int V = model_.config().vocab_size;
  std::vector<size_t> next;  // rows whose request goes on to its next token
  for (size_t m = 0; m < slots.size(); ++m) {
    Live& r = *live_[static_cast<size_t>(slots[m])];
    if (r.waiting) {  // the token this row fed now has its route
      r.pending.routing = row_trace(traces, static_cast<int64_t>(m));
      r.waiting = false;
      if (!r.sink.on_token(r.pending)) {
        finish(r, "stop");
        continue;
      }
      if (r.last) {
        finish(r, r.reason);
        continue;
      }
    }
    next.push_back(m);
  }
  // A row's token depends on its logits and its request's own Rng only, so the rows sample in
  // parallel (a vocabulary-wide pass each); the requests then take their tokens in row order.
  std::vector<int32_t> chosen(next.size());
  std::vector<TokenEvent> events(next.size());
  model_.backend().run_modules(static_cast<int>(next.size()), [&](int i) {
    thread_local std::vector<int32_t> order;
    const size_t m = next[static_cast<size_t>(i)];
    Live& r = *live_[static_cast<size_t>(slots[m])];
    const float* row = logits.data() + m * static_cast<size_t>(V);
    chosen[static_cast<size_t>(i)] = sample_token(row, V, r.req.sampling, r.rng, order);
    events[static_cast<size_t>(i)] = event_of(row, V, chosen[static_cast<size_t>(i)], r.req.logprobs);
  });
  for (size_t i = 0; i < next.size(); ++i)
    accept(*live_[static_cast<size_t>(slots[next[i]])], chosen[i], std::move(events[i]));
}

void Engine::loop() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      auto ready = [&] {
        return stopping_ || !jobs_.empty() || running_ > 0 || (!queue_.empty() && running_ < opt_.max_sequences);
      };
      if (opt_.group) {  // followers wait inside a collective: keep them from timing out
        if (!wake_.wait_for(lock, std::chrono::seconds(1), ready)) {
          lock.unlock();
          tell(Op::Heartbeat);
          continue;
        }
      } else {
        wake_.wait(lock, ready);
      }
      if (stopping_) break;
      if (!jobs_.empty()) job = std::move(jobs_.front()), jobs_.pop_front();
    }
    if (job) {
      job();  // score(): its exceptions travel through its future
      continue;
    }
    for (;;) {  // requests join the batch between steps
      std::unique_ptr<Live> r;
      {
        std::lock_guard<std::mutex> lock(mu_);
        // A drain still runs what was queued: it was accepted.
        if (queue_.empty() || running_ >= opt_.max_sequences) break;
        r = std::make_unique<Live>();
        r->req = std::move(queue_.front().first), r->sink = std::move(queue_.front().second);
        queue_.pop_front();
        ++running_;
      }
      r->rng = Rng(r->req.seed);
      size_t slot = 0;
      while (live_[slot]) ++slot;
      r->slot = static_cast<int>(slot);
      live_[slot] = std::move(r);
      try {
        admit(*live_[slot]);
      } catch (const std::exception& e) {
        if (live_[slot]) finish(*live_[slot], std::string("error: ") + e.what());
      }
    }
    try {
      step();
    } catch (const std::exception& e) {
      for (auto& r : live_)
        if (r) finish(*r, std::string("error: ") + e.what());
    }
  }
  // Stopping: whatever is left ends "cancelled"; pending score() calls still run.
  for (auto& r : live_)
    if (r) finish(*r, "cancelled");
  std::deque<std::pair<GenerateRequest, Sink>> left;
  std::deque<std::function<void()>> jobs;
  {
    std::lock_guard<std::mutex> lock(mu_);
    left.swap(queue_);
    jobs.swap(jobs_);
  }
  for (auto& [req, sink] : left)
    if (sink.on_finish) sink.on_finish("cancelled");
  for (auto& j : jobs) j();
}

}  // namespace mom::service
