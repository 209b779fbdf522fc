// The routing service through the real binary (jobs/cmd_serve.cpp, docs/serving.md): every
// test starts its own `mom serve` on a free loopback port (--port 0, the port read from its
// first line), on a small model with a MoM chunk and an MoE layer trained for a few steps,
// talks to it with real clients, and stops it (SIGTERM, or --max-requests).
// - clients: curl, Python's http.client (tests/serve/http_client_route.py) and the npm
//   `openai` package (tests/serve/openai_client.cjs) through its baseURL, streaming and not;
// - greedy completions equal `mom generate` token for token; /v1/route's trace equals
//   `mom route`'s for the same tokens bit for bit, and its mean loss `mom eval`'s;
// - 8 concurrent requests with different seeds give exactly the text each gives alone;
// - 200+ generated malformed or hostile requests get their documented 4xx and the server
//   still answers a normal request right;
// - a load of 500 requests at 16 connections: only 200s (and documented 429s), p50/p99
//   printed; a full queue answers 429 with Retry-After;
// - the API key (401, /health open), client disconnects, SIGTERM drains and exits 0;
// - two ranks (`mpirun -np 2 mom serve --ep 2`, and through jobs/launch/mpirun.sh) answer
//   exactly as one process does.
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support.h"

namespace mom::test {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// A `mom serve` (or a launcher running it) as a child process in its own process group, its
// stdout and stderr collected. The constructor returns once the server printed "ready" (the
// port comes from its "listening on" line); the destructor kills what is still running.
class ServerProcess {
 public:
  explicit ServerProcess(const std::vector<std::string>& argv, double ready_timeout_s = 120) {
    int fds[2];
    if (::pipe(fds) != 0) throw std::runtime_error("pipe failed");
    pid_ = ::fork();
    if (pid_ == 0) {
      ::setpgid(0, 0);
      ::dup2(fds[1], 1);
      ::dup2(fds[1], 2);
      ::close(fds[0]);
      ::close(fds[1]);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execvp(args[0], args.data());
      std::perror("exec");
      ::_exit(127);
    }
    ::close(fds[1]);
    reader_ = std::thread([this, fd = fds[0]] {
      char buf[4096];
      ssize_t n;
      while ((n = ::read(fd, buf, sizeof buf)) > 0) {
        std::lock_guard<std::mutex> lock(mu_);
        out_.append(buf, static_cast<size_t>(n));
        cv_.notify_all();
      }
      ::close(fd);
      std::lock_guard<std::mutex> lock(mu_);
      eof_ = true;
      cv_.notify_all();
    });
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::duration<double>(ready_timeout_s),
                 [&] { return eof_ || out_.find("mom serve: ready") != std::string::npos; });
    std::smatch m;
    if (std::regex_search(out_, m, std::regex("listening on http://127\\.0\\.0\\.1:([0-9]+)"))) port_ = std::stoi(m[1]);
    if (out_.find("mom serve: ready") == std::string::npos) port_ = 0;
  }
  ~ServerProcess() {
    if (status_ < 0) {
      ::killpg(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    reader_.join();
  }
  int port() const { return port_; }
  void signal(int sig) { ::kill(pid_, sig); }
  // The exit status (128 + signal when killed); -1 after `timeout_s` (the group is killed then).
  int wait(double timeout_s = 60) {
    const auto until = Clock::now() + std::chrono::duration<double>(timeout_s);
    while (status_ < 0) {
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        break;
      }
      if (Clock::now() > until) {
        ::killpg(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
        status_ = 1000;
        return -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return status_;
  }
  std::string output() {
    std::lock_guard<std::mutex> lock(mu_);
    return out_;
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0, status_ = -1;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string out_;
  bool eof_ = false;
};

struct Reply {
  int status = 0;  // 0: no HTTP answer (connection refused or closed)
  std::string body;
  httplib::Headers headers;
  json parsed() const { return json::parse(body, nullptr, /*allow_exceptions=*/false); }
};

// One request on a fresh connection. A non-empty `key` is sent as a Bearer token.
Reply request(int port, const std::string& method, const std::string& path, const std::string& body = "",
              const std::string& key = "", const httplib::Headers& extra = {}) {
  httplib::Client cli("127.0.0.1", port);
  cli.set_connection_timeout(10);
  cli.set_read_timeout(60);
  cli.set_write_timeout(60);
  httplib::Request req;
  req.method = method;
  req.path = path;
  req.headers = extra;
  if (!key.empty()) req.headers.emplace("Authorization", "Bearer " + key);
  if (!body.empty() || method == "POST") {
    req.body = body;
    req.headers.emplace("Content-Type", "application/json");
  }
  Reply r;
  if (auto res = cli.send(req)) r = {res->status, res->body, res->headers};
  return r;
}
Reply post(int port, const std::string& path, const json& body, const std::string& key = "") {
  return request(port, "POST", path, body.dump(), key);
}

// A streamed completion: the `data:` payloads in order ("[DONE]" included). `on_event` sees
// each payload as it arrives; returning false hangs up.
std::vector<std::string> stream(int port, const json& body,
                                const std::function<bool(const std::string&)>& on_event = {}, int* status = nullptr) {
  httplib::Client cli("127.0.0.1", port);
  cli.set_read_timeout(60);
  std::vector<std::string> events;
  std::string buffer;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.headers.emplace("Content-Type", "application/json");
  bool hung_up = false;
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    buffer.append(data, n);
    size_t end;
    while ((end = buffer.find("\n\n")) != std::string::npos) {
      std::string ev = buffer.substr(0, end);
      buffer.erase(0, end + 2);
      if (ev.rfind("data: ", 0) == 0) ev = ev.substr(6);
      events.push_back(ev);
      if (on_event && !on_event(ev)) {
        hung_up = true;
        return false;
      }
    }
    return true;
  };
  auto res = cli.send(req);
  if (status) *status = res ? res->status : 0;
  (void)hung_up;
  return events;
}

// The text and token pieces of a completion (logprobs 0 gives the pieces).
std::string text_of(const Reply& r, int choice = 0) {
  const json j = r.parsed();
  return j.is_object() && j.contains("choices") ? j["choices"][choice]["text"].get<std::string>() : "<" + r.body + ">";
}

// A response with the fields that differ between two identical requests (id, created) removed.
json comparable(json j) {
  if (j.is_object()) {
    j.erase("id");
    j.erase("created");
  }
  return j;
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

class Serve : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir("serve");
    ckpt_ = train_routed_model(*dir_);
    data_ = *dir_ / "data/val_*.bin";
  }
  static void TearDownTestSuite() { delete dir_; }

  // `mom serve` on the test model: one CPU thread, a free port, plus `extra` arguments.
  static std::vector<std::string> serve_args(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> a = {mom_binary(), "serve", ckpt_, "--port", "0", "--threads", "1"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  static std::unique_ptr<ServerProcess> start(const std::vector<std::string>& extra = {}) {
    auto s = std::make_unique<ServerProcess>(serve_args(extra));
    EXPECT_GT(s->port(), 0) << s->output();
    return s;
  }
  // Stops a server with SIGTERM and expects a clean drained exit.
  static void stop(ServerProcess& s) {
    s.signal(SIGTERM);
    EXPECT_EQ(s.wait(), 0) << s.output();
    EXPECT_NE(s.output().find("mom serve: stopped"), std::string::npos) << s.output();
  }

  static ScratchDir* dir_;
  static std::string ckpt_, data_;
};
ScratchDir* Serve::dir_ = nullptr;
std::string Serve::ckpt_, Serve::data_;

const char* const kPrompt = "def main():\n    ";

TEST_F(Serve, CurlCompletionsEqualMomGenerateAndStreamEqualsTheWhole) {
  auto s = start();
  ASSERT_GT(s->port(), 0);
  const std::string url = "http://127.0.0.1:" + std::to_string(s->port());
  auto curl = [&](const std::string& args) {
    const RunResult r = run("curl -sS --max-time 60 " + args);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.output;
  };
  EXPECT_EQ(json::parse(curl(url + "/health")), json({{"status", "ok"}}));
  const json models = json::parse(curl(url + "/v1/models"));
  EXPECT_EQ(models["data"][0]["id"], "ckpt_00000006");
  EXPECT_EQ(models["data"][0]["context_length"], 32);
  // Tokenize and back: the round trip is the text, the ids GPT-2's.
  const json ids = json::parse(curl("-d '{\"prompt\": \"import os\\n\"}' " + url + "/tokenize"));
  EXPECT_EQ(ids["tokens"], json({11748, 28686, 198})) << ids.dump();
  EXPECT_EQ(json::parse(curl("-d " + shell_quote(json({{"tokens", ids["tokens"]}}).dump()) + " " + url +
                             "/detokenize"))["prompt"],
            "import os\n");

  // Greedy: the text `mom generate` prints after the prompt, token for token (logprobs
  // pieces and the usage count checked too).
  const int n = 12;
  const json body = {{"prompt", kPrompt}, {"max_tokens", n}, {"temperature", 0}, {"logprobs", 0}};
  const std::string data = shell_quote(body.dump());
  const json got = json::parse(curl("-H 'Content-Type: application/json' -d " + data + " " + url + "/v1/completions"));
  ASSERT_TRUE(got.contains("choices")) << got.dump();
  const std::string text = got["choices"][0]["text"];
  std::string pieces;
  for (const auto& p : got["choices"][0]["logprobs"]["tokens"]) pieces += p.get<std::string>();
  EXPECT_EQ(pieces, text);
  const RunResult gen = run_mom("generate " + shell_quote(ckpt_) + " --prompt " + shell_quote(kPrompt) +
                                " --max-tokens " + std::to_string(n) + " --temperature 0 --threads 1");
  ASSERT_EQ(gen.exit_code, 0) << gen.output;
  EXPECT_EQ(gen.output, kPrompt + text + "\n");
  if (got["choices"][0]["finish_reason"] == "length") {
    EXPECT_EQ(got["usage"]["completion_tokens"], n);
  }
  EXPECT_EQ(got["object"], "text_completion");
  std::printf("greedy completion of %s: %s\n", json(kPrompt).dump().c_str(), json(text).dump().c_str());

  // Streaming (curl -N): one event per token (its logprobs name it), the finish_reason in the
  // last (an event of its own, with no token, when the end was known only after the last
  // token went out), then [DONE]; the deltas add up to the whole.
  json sbody = body;
  sbody["stream"] = true;
  const std::string raw =
      curl("-N -H 'Content-Type: application/json' -d " + shell_quote(sbody.dump()) + " " + url + "/v1/completions");
  std::string streamed, finish;
  int events = 0, tokens = 0;
  size_t at = 0, end;
  std::string last;
  while ((end = raw.find("\n\n", at)) != std::string::npos) {
    last = raw.substr(at + 6, end - at - 6);
    at = end + 2;
    if (last == "[DONE]") break;
    ++events;
    const json c = json::parse(last)["choices"][0];
    EXPECT_TRUE(finish.empty()) << "an event after the finish: " << last;
    const int here = c["logprobs"].is_null() ? 0 : static_cast<int>(c["logprobs"]["tokens"].size());
    EXPECT_EQ(here, c["finish_reason"].is_null() ? 1 : here) << last;
    EXPECT_LE(here, 1) << last;
    tokens += here;
    streamed += c["text"].get<std::string>();
    if (!c["finish_reason"].is_null()) finish = c["finish_reason"];
  }
  EXPECT_EQ(last, "[DONE]") << raw;
  EXPECT_EQ(streamed, text);
  EXPECT_EQ(finish, got["choices"][0]["finish_reason"]);
  EXPECT_EQ(tokens, got["usage"]["completion_tokens"].get<int>());
  EXPECT_LE(events, tokens + 1);
  stop(*s);
}

TEST_F(Serve, PythonHttpClientRouteEqualsMomRouteAndEval) {
  // One window of 16 tokens offline, with the trace and the mean loss.
  const std::string trace = *dir_ / "window.h5";
  fs::remove(trace);
  RunResult r = run_mom("route " + shell_quote(ckpt_) + " --data " + shell_quote(data_) + " --out " +
                        shell_quote(trace) + " --seq-len 16 --batch-size 1 --batches 1 --threads 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_mom("eval " + shell_quote(ckpt_) + " --data " + shell_quote(data_) +
              " --seq-len 16 --batch-size 1 --batches 1 --threads 1 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const double eval_loss = json::parse(r.output)["loss"].get<double>();

  auto s = start();
  ASSERT_GT(s->port(), 0);
  r = run(shell_quote(reference_python()) + " " + shell_quote(source_dir() + "/tests/serve/http_client_route.py") +
          " " + std::to_string(s->port()) + " " + shell_quote(trace));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json rep = json::parse(r.output);
  EXPECT_EQ(rep["health"], 200);
  EXPECT_EQ(rep["bad_request"]["status"], 400);
  EXPECT_EQ(rep["bad_request"]["param"], "max_tokens");
  ASSERT_EQ(rep["route_status"], 200) << rep.dump();
  EXPECT_EQ(rep["tokens"], 16);
  EXPECT_TRUE(rep["mismatches"].empty()) << rep["mismatches"].dump(1);
  EXPECT_EQ(rep["mean_loss_server"].get<double>(), rep["mean_loss_file"].get<double>());
  EXPECT_EQ(rep["mean_loss_server"].get<double>(), eval_loss);
  std::printf("/v1/route mean loss %.17g, mom route %.17g, mom eval %.17g\n", rep["mean_loss_server"].get<double>(),
              rep["mean_loss_file"].get<double>(), eval_loss);
  stop(*s);
}

TEST_F(Serve, NpmOpenAiClientThroughBaseUrl) {
  const std::string module = source_dir() + "/.deps/node_modules/openai";
  if (!fs::exists(module + "/package.json"))
    GTEST_SKIP() << "the npm openai package is not installed in .deps (run jobs/setup.sh)";
  auto s = start({"--api-key", "sk-test-key"});
  ASSERT_GT(s->port(), 0);
  const int n = 10;
  const Reply want =
      post(s->port(), "/v1/completions", {{"prompt", kPrompt}, {"max_tokens", n}, {"temperature", 0}}, "sk-test-key");
  ASSERT_EQ(want.status, 200) << want.body;
  const RunResult r = run("node " + shell_quote(source_dir() + "/tests/serve/openai_client.cjs") + " " +
                          shell_quote(module) + " http://127.0.0.1:" + std::to_string(s->port()) + "/v1 sk-test-key " +
                          shell_quote(kPrompt) + " " + std::to_string(n));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json got = json::parse(r.output);
  EXPECT_EQ(got["text"], text_of(want));
  EXPECT_EQ(got["stream_text"], text_of(want));
  EXPECT_GE(got["stream_chunks"].get<int>(), 2);
  EXPECT_EQ(got["finish_reason"], got["stream_finish_reason"]);
  EXPECT_EQ(got["usage"], got["stream_usage"]);
  EXPECT_EQ(got["routing_stages"], json({"chunks/0", "moe/0"}));
  EXPECT_EQ(got["refused"]["status"], 400) << got.dump();
  EXPECT_NE(got["refused"]["message"].get<std::string>().find("max_tokens"), std::string::npos) << got.dump();
  std::printf("openai client: %s\n", got.dump().c_str());
  stop(*s);
}

TEST_F(Serve, ConcurrentSeedsGiveTheTextEachGivesAlone) {
  auto s = start({"--max-sequences", "8"});
  ASSERT_GT(s->port(), 0);
  auto body = [](int seed) {
    return json{{"prompt", kPrompt}, {"max_tokens", 20}, {"temperature", 1.0}, {"top_p", 0.95}, {"seed", 100 + seed}};
  };
  std::vector<std::string> alone(8), together(8);
  for (int i = 0; i < 8; ++i) alone[i] = text_of(post(s->port(), "/v1/completions", body(i)));
  std::vector<std::thread> clients;
  for (int i = 0; i < 8; ++i)
    clients.emplace_back([&, i] { together[i] = text_of(post(s->port(), "/v1/completions", body(i))); });
  for (auto& t : clients) t.join();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(together[i], alone[i]) << "seed " << 100 + i;
  // The seeds matter: not all eight texts are the same.
  EXPECT_GT(std::set<std::string>(alone.begin(), alone.end()).size(), 1u);
  stop(*s);
}

TEST_F(Serve, HostileRequestsGetTheirDocumented4xxAndTheServerStaysUp) {
  const std::string key = "k3y";
  auto s = start({"--api-key", key, "--max-body", "65536"});
  ASSERT_GT(s->port(), 0);
  const int port = s->port();
  const json good = {{"prompt", kPrompt}, {"max_tokens", 6}, {"temperature", 0}};
  const std::string before = text_of(post(port, "/v1/completions", good, key));

  struct Case {
    std::string method, path, body, key;
    int want;
    std::string param = "";  // the field the error must name ("" when none)
  };
  std::vector<Case> cases;
  const std::string valid = json({{"prompt", "hello"}, {"max_tokens", 4}, {"temperature", 0.5}}).dump();
  // Truncated JSON: every prefix of a valid body.
  for (size_t n = 0; n < valid.size(); n += 1)
    cases.push_back({"POST", "/v1/completions", valid.substr(0, n), key, 400});
  // Wrong types and values out of range, field by field.
  const std::vector<std::pair<std::string, std::vector<json>>> bad_values = {
      {"prompt", {5, true, json::object(), json::array(), {1.5}, {json::array()}, {-1}, {50304}, {1, "a"}, nullptr}},
      {"max_tokens", {"3", 1.5, true, -1, 33, 1e300, json::array(), 9223372036854775807LL, -9223372036854775807LL}},
      {"temperature", {"hot", -0.1, 2.5, 1e308, json::object()}},
      {"top_p", {0, -1, 1.01, "all"}},
      {"top_k", {-1, 1e12, 0.5, "3"}},
      {"seed", {-1, 0.5, "7", 1e19}},
      {"n", {0, 17, -3, 2.5, "2"}},
      {"stream", {1, "yes", json::array()}},
      {"logprobs", {6, -1, 100, "5"}},
      {"stop", {5, json::array({"a", "b", "c", "d", "e"}), json::array({""}), json::array({1})}},
      {"routing", {"all", 1, true}},
      {"echo", {"true", 0}},
      {"stream_options", {true, json::object({{"include_usage", true}})}},
      {"presence_penalty", {1.0, 5}},
      {"best_of", {3, 100}},
      {"logit_bias", {json::object({{"50", 1}})}},
      {"suffix", {"tail"}},
      {"unknown_field", {1, "x"}},
      {"Prompt", {"x"}},
  };
  for (const auto& [field, values] : bad_values)
    for (const json& v : values) {
      json b = {{"prompt", "hello"}, {"max_tokens", 4}};
      b[field] = v;
      if (field == "prompt" && v.is_null()) b.erase("prompt");
      cases.push_back({"POST", "/v1/completions", b.dump(), key, 400, field == "Prompt" ? "Prompt" : field});
    }
  // Prompts over the context (32): alone, and with max_tokens.
  cases.push_back({"POST", "/v1/completions", json({{"prompt", std::vector<int>(33, 7)}, {"max_tokens", 0}}).dump(),
                   key, 400, "max_tokens"});
  cases.push_back({"POST", "/v1/completions", json({{"prompt", std::vector<int>(20, 7)}, {"max_tokens", 13}}).dump(),
                   key, 400, "max_tokens"});
  cases.push_back({"POST", "/v1/route", json({{"prompt", std::vector<int>(34, 7)}}).dump(), key, 400});
  cases.push_back({"POST", "/v1/route", json({{"prompt", {7}}}).dump(), key, 400});
  cases.push_back(
      {"POST", "/v1/route", json({{"prompt", "x"}, {"routing", "everything"}}).dump(), key, 400, "routing"});
  cases.push_back({"POST", "/tokenize", json({{"prompt", 5}}).dump(), key, 400, "prompt"});
  cases.push_back({"POST", "/detokenize", json({{"tokens", {-5}}}).dump(), key, 400, "tokens"});
  cases.push_back({"POST", "/detokenize", json({{"tokens", "abc"}}).dump(), key, 400, "tokens"});
  // Not JSON objects, invalid UTF-8, control bytes.
  for (const std::string& b :
       std::vector<std::string>{"[]", "null", "42", "\"text\"", "{\"prompt\": \"\xff\xfe\"}", "{\"prompt\": \"a\xc3\"}",
                                std::string("{\"prompt\": \"a\0b\"}", 17), "{\"prompt\": \"a\x01\"}", "{{{{", "}",
                                "{\"prompt\": \"x\", \"prompt\": }", "\xef\xbb\xbf{}"})
    for (const char* path : {"/v1/completions", "/v1/route", "/tokenize"}) cases.push_back({"POST", path, b, key, 400});
  // Bodies over the limit (64 KiB here; 10 MB too).
  for (const size_t n : {size_t{70000}, size_t{1} << 20, size_t{10} << 20})
    for (const char* path : {"/v1/completions", "/v1/route"})
      cases.push_back({"POST", path, "{\"prompt\": \"" + std::string(n, 'a') + "\"}", key, 413});
  // Unknown paths, wrong methods.
  for (const char* path : {"/", "/v1", "/v2/completions", "/v1/completion", "/v1/chat/completions", "/../etc/passwd",
                           "/v1/completions/x", "/%00", "/health/x", "/metricsx"})
    for (const char* method : {"GET", "POST"}) cases.push_back({method, path, "", key, 404});
  for (const char* method : {"PUT", "DELETE", "PATCH"})
    for (const char* path : {"/v1/completions", "/v1/route", "/tokenize", "/v1/models", "/metrics"})
      cases.push_back({method, path, "", key, 405});
  cases.push_back({"GET", "/v1/completions", "", key, 405});
  cases.push_back({"POST", "/v1/models", "{}", key, 405});
  // Missing or wrong key.
  const std::vector<std::pair<std::string, std::string>> guarded = {{"POST", "/v1/completions"},
                                                                    {"POST", "/v1/route"},
                                                                    {"POST", "/tokenize"},
                                                                    {"GET", "/v1/models"},
                                                                    {"GET", "/metrics"}};
  for (const std::string& k : std::vector<std::string>{"", "wrong", "k3", "K3Y", std::string(5000, 'k')})
    for (const auto& [method, path] : guarded) cases.push_back({method, path, valid, k, 401});

  int checked = 0, wrong = 0;
  for (const Case& c : cases) {
    const Reply r = request(port, c.method, c.path, c.body, c.key);
    ++checked;
    const json e = r.parsed();
    const bool error_body = e.is_object() && e.contains("error") && e["error"].contains("message") &&
                            !e["error"]["message"].get<std::string>().empty();
    const bool names_field = c.param.empty() || (error_body && e["error"]["param"] == c.param);
    if (r.status != c.want || !error_body || !names_field) {
      ++wrong;
      ADD_FAILURE() << c.method << " " << c.path << " body " << json(c.body.substr(0, 120)).dump() << " key '"
                    << c.key.substr(0, 8) << "': want " << c.want << (c.param.empty() ? "" : " naming " + c.param)
                    << ", got " << r.status << " " << r.body.substr(0, 300);
    }
  }
  // Raw bytes that are not HTTP at all: the server answers 400 or hangs up, and lives on.
  for (const std::string& raw :
       std::vector<std::string>{"GARBAGE\r\n\r\n", "POST /v1/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                                "GET / HTTP/9.9\r\n\r\n", std::string(20000, 'A') + "\r\n\r\n",
                                "POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"pro"}) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    (void)!::write(fd, raw.data(), raw.size());
    ::shutdown(fd, SHUT_WR);
    char buf[512] = {};
    const ssize_t n = ::read(fd, buf, sizeof buf - 1);
    ::close(fd);
    const std::string head = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
    EXPECT_TRUE(head.empty() || head.rfind("HTTP/1.1 4", 0) == 0) << json(raw.substr(0, 60)).dump() << " -> " << head;
    ++checked;
  }
  std::printf("%d hostile requests, %d answered otherwise than documented\n", checked, wrong);
  EXPECT_GE(checked, 200);
  // Still up, and still right.
  EXPECT_EQ(request(port, "GET", "/health").status, 200);
  EXPECT_EQ(text_of(post(port, "/v1/completions", good, key)), before);
  stop(*s);
}

TEST_F(Serve, LoadOf500RequestsAt16Connections) {
  auto s = start({"--max-sequences", "8", "--queue", "64"});
  ASSERT_GT(s->port(), 0);
  const int total = 500, connections = 16;
  std::atomic<int> next{0}, ok{0}, too_many{0}, other{0};
  std::mutex mu;
  std::vector<double> latency_ms;
  std::vector<std::string> failures;
  std::vector<std::thread> clients;
  const auto t0 = Clock::now();
  for (int c = 0; c < connections; ++c)
    clients.emplace_back([&] {
      // One keep-alive connection per client, as load tools do.
      httplib::Client cli("127.0.0.1", s->port());
      cli.set_keep_alive(true);
      cli.set_read_timeout(60);
      for (int i; (i = next++) < total;) {
        const auto start = Clock::now();
        json body = {{"prompt", i % 3 ? kPrompt : "import os\n"}, {"max_tokens", 4 + i % 5}, {"seed", i}};
        if (i % 4 == 1) body["routing"] = "summary";
        auto res = i % 7 == 3 ? cli.Post("/v1/route", json({{"prompt", "x = 1\ny = 2\n"}}).dump(), "application/json")
                              : cli.Post("/v1/completions", body.dump(), "application/json");
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
        const int st = res ? res->status : 0;
        std::lock_guard<std::mutex> lock(mu);
        if (st == 200) {
          ++ok;
          latency_ms.push_back(ms);
        } else if (st == 429 && res->has_header("Retry-After")) {
          ++too_many;
        } else {
          ++other;
          if (failures.size() < 5) failures.push_back(std::to_string(st) + " " + (res ? res->body : ""));
        }
      }
    });
  for (auto& t : clients) t.join();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf(
      "load: %d requests at %d connections in %.2f s (%.0f req/s): %d ok, %d 429, %d other; "
      "latency p50 %.1f ms, p99 %.1f ms\n",
      total, connections, secs, total / secs, ok.load(), too_many.load(), other.load(), percentile(latency_ms, 0.5),
      percentile(latency_ms, 0.99));
  EXPECT_EQ(ok + too_many + other, total);
  EXPECT_EQ(other, 0) << (failures.empty() ? "" : failures[0]);
  EXPECT_GT(ok, total / 2);
  EXPECT_EQ(request(s->port(), "GET", "/health").status, 200);
  // The server counted them: requests by endpoint and status, and routed tokens per module.
  const std::string metrics = request(s->port(), "GET", "/metrics").body;
  EXPECT_NE(metrics.find("mom_requests_total{endpoint=\"/v1/completions\",status=\"200\"}"), std::string::npos)
      << metrics.substr(0, 2000);
  EXPECT_NE(metrics.find("mom_routed_tokens_total{stage=\"chunks/0\",step=\"1\",router=\"attn\",module=\"skip\"}"),
            std::string::npos);
  EXPECT_NE(metrics.find("mom_time_to_first_token_seconds_bucket"), std::string::npos);
  stop(*s);
}

TEST_F(Serve, AFullQueueAnswers429WithRetryAfter) {
  auto s = start({"--max-sequences", "1", "--queue", "1"});
  ASSERT_GT(s->port(), 0);
  std::vector<Reply> replies(8);
  std::vector<std::thread> clients;
  for (int i = 0; i < 8; ++i)
    clients.emplace_back([&, i] {
      replies[i] = post(s->port(), "/v1/completions", {{"prompt", "x"}, {"max_tokens", 30}});
    });
  for (auto& t : clients) t.join();
  int ok = 0, refused = 0;
  for (const Reply& r : replies) {
    if (r.status == 200) ++ok;
    if (r.status == 429) {
      ++refused;
      EXPECT_EQ(r.parsed()["error"]["code"], "queue_full") << r.body;
      bool retry_after = false;
      for (const auto& [k, v] : r.headers) retry_after |= k == "Retry-After";
      EXPECT_TRUE(retry_after);
    }
  }
  std::printf("8 requests on 1 sequence + a queue of 1: %d answered, %d refused with 429\n", ok, refused);
  EXPECT_EQ(ok + refused, 8);
  EXPECT_GE(ok, 1);
  EXPECT_GE(refused, 1);
  // A request whose choices can never fit (n 4 > 1 running + 1 queued) is the client's to fix.
  const Reply big = post(s->port(), "/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}, {"n", 4}});
  EXPECT_EQ(big.status, 400) << big.body;
  EXPECT_EQ(big.parsed()["error"]["param"], "n") << big.body;
  stop(*s);
}

TEST_F(Serve, ApiKeyFromAFileGuardsEverythingButHealth) {
  const std::string key_file = *dir_ / "key.txt";
  write_file(key_file, "s3cret\n");
  auto s = start({"--api-key-file", key_file});
  ASSERT_GT(s->port(), 0);
  EXPECT_NE(s->output().find("API key required"), std::string::npos);
  EXPECT_EQ(request(s->port(), "GET", "/health").status, 200);
  EXPECT_EQ(request(s->port(), "GET", "/v1/models").status, 401);
  EXPECT_EQ(request(s->port(), "GET", "/v1/models", "", "s3cre").status, 401);
  const Reply wrong = post(s->port(), "/v1/completions", {{"prompt", "x"}}, "nope");
  EXPECT_EQ(wrong.status, 401);
  EXPECT_EQ(wrong.parsed()["error"]["type"], "authentication_error") << wrong.body;
  EXPECT_EQ(request(s->port(), "GET", "/v1/models", "", "s3cret").status, 200);
  EXPECT_EQ(post(s->port(), "/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}}, "s3cret").status, 200);
  stop(*s);
  // An empty or missing key file is refused at start.
  write_file(key_file, "");
  const RunResult r = run_mom("serve " + shell_quote(ckpt_) + " --port 0 --api-key-file " + shell_quote(key_file));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("is empty"), std::string::npos) << r.output;
}

TEST_F(Serve, ClientDisconnectStopsItsGeneration) {
  auto s = start();
  ASSERT_GT(s->port(), 0);
  // Four choices of 28 tokens each, hung up after the first event.
  int events = 0;
  stream(s->port(), {{"prompt", "x"}, {"max_tokens", 28}, {"n", 4}, {"stream", true}},
         [&](const std::string&) { return ++events < 1; });
  EXPECT_EQ(events, 1);
  // The engine notices at its next step: nothing runs soon after, and far fewer than 4 * 28
  // tokens were generated.
  std::string metrics;
  for (int i = 0; i < 100; ++i) {
    metrics = request(s->port(), "GET", "/metrics").body;
    if (metrics.find("mom_running_requests 0") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_NE(metrics.find("mom_running_requests 0"), std::string::npos) << metrics;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(metrics, m, std::regex("mom_completion_tokens_total ([0-9]+)"))) << metrics;
  std::printf("hung up after 1 event: %s completion tokens generated of 112 asked\n", m[1].str().c_str());
  // (Tokens are counted as generated, sent or not; each choice stops at its next token.)
  EXPECT_GT(std::stoi(m[1]), 0);
  EXPECT_LT(std::stoi(m[1]), 4 * 28 / 2);
  // And the server carries on.
  EXPECT_EQ(post(s->port(), "/v1/completions", {{"prompt", "x"}, {"max_tokens", 3}}).status, 200);
  stop(*s);
}

TEST_F(Serve, SigtermDrainsRunningRequestsAndExitsZero) {
  auto s = start({"--max-sequences", "1"});
  ASSERT_GT(s->port(), 0);
  // A stream of 4 choices x 28 tokens on one sequence slot: SIGTERM right after its first event.
  std::vector<std::string> events;
  int status = 0;
  events = stream(
      s->port(),
      {{"prompt", "x"}, {"max_tokens", 28}, {"n", 4}, {"stream", true}, {"stream_options", {{"include_usage", true}}}},
      [&](const std::string&) {
        static bool signalled = false;
        if (!signalled) s->signal(SIGTERM), signalled = true;
        return true;
      },
      &status);
  EXPECT_EQ(status, 200);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back(), "[DONE]");
  // Every choice finished with all its tokens.
  ASSERT_GE(events.size(), 2u);
  const json usage = json::parse(events[events.size() - 2])["usage"];
  EXPECT_EQ(usage["completion_tokens"], 4 * 28) << usage.dump();
  EXPECT_EQ(s->wait(), 0) << s->output();
  const std::string out = s->output();
  std::smatch m;
  ASSERT_TRUE(std::regex_search(out, m, std::regex("draining: ([0-9]+) running, ([0-9]+) queued"))) << out;
  EXPECT_GE(std::stoi(m[1]) + std::stoi(m[2]), 1) << "the signal came after the request had finished: " << out;
  EXPECT_NE(out.find("mom serve: stopped"), std::string::npos) << out;
  EXPECT_EQ(request(s->port(), "GET", "/health").status, 0) << "the port should be closed";
}

// The requests the rank tests compare: greedy with the full routing trace and logprobs,
// sampled with a seed and two choices, scoring with its trace, and the routed-token counters.
std::vector<json> rank_probe(int port) {
  std::vector<json> out;
  out.push_back(comparable(
      post(port, "/v1/completions",
           {{"prompt", kPrompt}, {"max_tokens", 8}, {"temperature", 0}, {"logprobs", 2}, {"routing", "tokens"}})
          .parsed()));
  out.push_back(comparable(
      post(port, "/v1/completions", {{"prompt", "import os\n"}, {"max_tokens", 8}, {"seed", 7}, {"n", 2}}).parsed()));
  out.push_back(comparable(post(port, "/v1/route", {{"prompt", "for i in range(10):\n    print(i)\n"}}).parsed()));
  std::string routed;
  std::istringstream metrics(request(port, "GET", "/metrics").body);
  for (std::string line; std::getline(metrics, line);)
    if (line.rfind("mom_routed_tokens_total{", 0) == 0) routed += line + "\n";
  out.push_back(routed);
  return out;
}

TEST_F(Serve, TwoRanksAnswerExactlyAsOneProcess) {
  std::vector<json> single;
  {
    auto s = start();
    ASSERT_GT(s->port(), 0);
    single = rank_probe(s->port());
    stop(*s);
  }
  ASSERT_TRUE(single[0].contains("choices")) << single[0].dump();
  EXPECT_FALSE(single[3].get<std::string>().empty());
  // mpirun directly; the server stops itself after the probe's 4 requests.
  {
    std::vector<std::string> argv = {MOM_MPIEXEC, "--allow-run-as-root", "--oversubscribe", "-np", "2"};
    for (const auto& a : serve_args({"--ep", "2", "--max-requests", "4"})) argv.push_back(a);
    ServerProcess s(argv);
    ASSERT_GT(s.port(), 0) << s.output();
    const std::vector<json> two = rank_probe(s.port());
    for (size_t i = 0; i < single.size(); ++i) EXPECT_EQ(two[i], single[i]) << "probe " << i;
    EXPECT_EQ(s.wait(), 0) << s.output();
  }
  // Through the launcher, stopped by SIGTERM (which it turns into SIGUSR1 for the ranks).
  {
    ::setenv("MOM_BINARY", mom_binary().c_str(), 1);
    std::vector<std::string> argv = {"bash", source_dir() + "/jobs/launch/mpirun.sh", "-np", "2", "--ep", "2", "--"};
    const auto a = serve_args();
    argv.insert(argv.end(), a.begin() + 1, a.end());
    ServerProcess s(argv);
    ASSERT_GT(s.port(), 0) << s.output();
    const std::vector<json> two = rank_probe(s.port());
    for (size_t i = 0; i < single.size(); ++i) EXPECT_EQ(two[i], single[i]) << "probe " << i;
    s.signal(SIGTERM);
    EXPECT_EQ(s.wait(), 0) << s.output();
    EXPECT_NE(s.output().find("mom serve: stopped"), std::string::npos) << s.output();
  }
}

}  // namespace
}  // namespace mom::test
