// `mom serve CHECKPOINT`: the routing service (docs/serving.md). Rank 0 listens, loads the
// model and runs the engine behind the HTTP server (router/service/); with more ranks
// (`mpirun -np E mom serve CKPT --ep E`, or jobs/launch/mpirun.sh) the module pools are
// sharded as in training and the other ranks follow the engine's steps.
//
// Why the order: the listener comes up before the model loads, so /health can say 503 while a
// large checkpoint loads, and a shutdown (SIGTERM, SIGINT, SIGUSR1 or --max-requests) drains the
// running requests before the listener closes; a second signal exits at once.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "core/checkpointing.h"
#include "core/error.h"
#include "io/checkpoint_file.h"
#include "io/config.h"
#include "io/tokenizer.h"
#include "jobs/checkpoint_tokenizer.h"
#include "jobs/commands.h"
#include "jobs/world.h"
#include "router/service/engine.h"
#include "router/service/http_server.h"

namespace mom::jobs {

namespace {

namespace fs = std::filesystem;

struct ServeArgs {
  std::string ckpt, tokenizer, model_id, api_key, api_key_file;
  service::ServerOptions http;
  int threads = 0, ep = 1, max_sequences = 8, queue = 64;
  std::string device = "cpu";
  double drain_s = 30;
};

int g_stop_pipe[2] = {-1, -1};

void on_stop_signal(int sig) {
  const unsigned char b = static_cast<unsigned char>(sig);
  [[maybe_unused]] const ssize_t n = ::write(g_stop_pipe[1], &b, 1);
}

void install_stop_signals() {
  require(::pipe(g_stop_pipe) == 0, "mom serve: cannot create the signal pipe");
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGTERM, SIGINT, SIGUSR1}) ::sigaction(sig, &sa, nullptr);
}

// Blocks until the next stop signal; returns its number.
int next_stop_signal() {
  unsigned char b = 0;
  while (::read(g_stop_pipe[0], &b, 1) != 1) {
  }
  return b;
}

void serve(const ServeArgs& a, Communicator& world) {
  const int ranks = world.size();
  require(a.ep == ranks, "mom serve: --ep " + std::to_string(a.ep) + " must equal the number of ranks (" +
                             std::to_string(ranks) + "): the server shards one copy of the model over all of them");
  // SIGTERM, SIGINT and SIGUSR1 (what jobs/launch/mpirun.sh and Slurm send) ask for a drain.
  // A handler that writes to a pipe works whichever thread the signal lands on (MPI's and
  // OpenMP's threads exist before this point); rank 0's watcher reads it. Followers ignore
  // the signal: they end when the leader's engine tells them.
  install_stop_signals();
  std::string key = a.api_key;
  if (!a.api_key_file.empty()) {
    std::ifstream in(a.api_key_file);
    require(static_cast<bool>(in), "mom serve: cannot read --api-key-file '" + a.api_key_file + "'");
    std::getline(in, key);
    while (!key.empty() && std::isspace(static_cast<unsigned char>(key.back()))) key.pop_back();
    require(!key.empty(), "mom serve: --api-key-file '" + a.api_key_file + "' is empty");
  }
  service::ServerOptions http = a.http;
  http.api_key = key;
  http.model_id = a.model_id.empty() ? fs::path(a.ckpt).stem().string() : a.model_id;
  std::unique_ptr<service::HttpServer> server;
  std::thread listener;
  if (world.rank() == 0) {
    server = std::make_unique<service::HttpServer>(http);
    const int port = server->bind();
    std::printf("mom serve: listening on http://%s:%d (loading %s)\n", http.host.c_str(), port, a.ckpt.c_str());
    std::fflush(stdout);
    listener = std::thread([&] { server->run(); });
    std::thread([s = server.get()] {
      const int sig = next_stop_signal();
      std::fprintf(stderr, "mom serve: signal %d: draining (a second signal exits at once)\n", sig);
      s->wake();
      next_stop_signal();
      std::_Exit(1);
    }).detach();
  }

  const io::RunConfig cfg = io::config_from_json(read_checkpoint_config(a.ckpt), "checkpoint '" + a.ckpt + "'");
  Backend& be = backend_for(parse_device(a.device));
  be.set_num_threads(a.threads);
  Gpt2 model(cfg.model, be, DType::F32, ranks > 1 ? &world : nullptr);
  load_checkpoint(a.ckpt, model, nullptr, nullptr);
  if (world.rank() != 0) return service::Engine::follow(model, world, a.max_sequences);

  std::string no_tokenizer;
  const auto tokenizer = tokenizer_for(a.ckpt, a.tokenizer, no_tokenizer);
  if (!tokenizer)
    std::fprintf(stderr, "mom serve: no tokenizer (%s); prompts must be token ids\n", no_tokenizer.c_str());
  service::Engine engine(model, {a.max_sequences, a.queue, ranks > 1 ? &world : nullptr});
  struct stat st {};
  ::stat(a.ckpt.c_str(), &st);
  nlohmann::json card = {{"id", http.model_id},
                         {"object", "model"},
                         {"created", static_cast<int64_t>(st.st_mtime)},
                         {"owned_by", "mom"},
                         {"blocks", model.describe()},
                         {"parameters", model.params().global_num_elements()},
                         {"active_parameters", model.active_parameters()},
                         {"context_length", cfg.model.n_ctx},
                         {"vocab_size", cfg.model.vocab_size},
                         {"ranks", ranks},
                         {"config", cfg.json["model"]}};
  server->set_ready(&engine, tokenizer ? &*tokenizer : nullptr, card);
  std::printf("mom serve: ready: %s (%s, %.2fM parameters, context %d)%s\n", http.model_id.c_str(),
              model.describe().c_str(), static_cast<double>(model.params().global_num_elements()) / 1e6,
              cfg.model.n_ctx, key.empty() ? "" : "; API key required");
  std::fflush(stdout);
  server->wait_for_shutdown_request();
  server->shutdown(a.drain_s);
  listener.join();
  std::printf("mom serve: stopped\n");
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "serve", "Serve a checkpoint over HTTP: OpenAI completions, streaming, and how every token was routed");
  cmd->add_option("checkpoint", a->ckpt, "Checkpoint (.h5)")->required()->check(CLI::ExistingFile);
  cmd->add_option("--host", a->http.host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", a->http.port, "Port (0: any free one, printed)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--api-key", a->api_key, "Require 'Authorization: Bearer KEY' on every endpoint but /health");
  cmd->add_option("--api-key-file", a->api_key_file, "Read the key from this file (its first line)");
  cmd->add_option("--max-body", a->http.max_body, "Largest request body in bytes (413 above)")->capture_default_str();
  cmd->add_option("--timeout", a->http.timeout_s, "Seconds a request may run (504 after)")->capture_default_str();
  cmd->add_option("--max-sequences", a->max_sequences, "Requests decoding together")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--queue", a->queue, "Requests waiting beyond those (429 when full)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--http-threads", a->http.http_threads, "Connections served at once")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--threads", a->threads, "CPU threads for the model (0: all cores)");
  add_device_option(cmd, a->device);
  cmd->add_option("--ep", a->ep, "Expert-parallel size: the ranks sharing the module pools (all of them)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--tokenizer", a->tokenizer, "Folder with vocab.json+merges.txt or encoder.json+vocab.bpe");
  cmd->add_option("--model-id", a->model_id, "Name in /v1/models and responses (default: the file's name)");
  cmd->add_option("--max-requests", a->http.max_requests, "Shut down after answering this many requests (0: never)");
  cmd->add_option("--drain", a->drain_s, "Seconds a shutdown waits for running requests")->capture_default_str();
  // The serving device decides the world communicator too (NCCL or host staging for CUDA).
  cmd->callback([a] { run_on_world(parse_device(a->device), [&](Communicator& world) { serve(*a, world); }); });
}

}  // namespace mom::jobs
