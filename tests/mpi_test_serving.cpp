// Serving across ranks (router/service/engine.h, EngineOptions::group): the module pools of a
// MoM chunk and an MoE layer (inside AltUp) sharded over all ranks, rank 0 running the engine
// and the others following it, answer exactly like one process holding every module: the same
// greedy and sampled tokens for concurrent requests, the same routing traces, and the same
// scores (per-token log-probabilities and mean loss, bit for bit).
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/gpt2.h"
#include "io/config.h"
#include "mpi_test_support.h"
#include "router/service/engine.h"

using namespace mom;

namespace {

io::RunConfig config() {
  return io::load_config(
      "", {"model.vocab_size=97", "model.n_ctx=48", "model.n_embd=32", "model.n_head=4", "train.seq_len=48",
           R"(model.stack=[{"type":"dense","count":1},{"type":"mom","attn_modules":4,"ffn_modules":4,"skip":true,)"
           R"("steps":2,"top_k":2,"router":"gru","router_dim":16},{"type":"moe","experts":4,"top_k":2},)"
           R"({"type":"sas_p","count":1}])",
           R"(model.altup={"k":2})"});
}

struct Outcome {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<nlohmann::json>> routing;
  service::ScoreResult score;
};

// Four concurrent requests (greedy and sampled, one with its routing trace), then a score.
Outcome serve(service::Engine& engine) {
  Outcome out;
  out.tokens.resize(4);
  out.routing.resize(4);
  std::mutex mu;
  std::condition_variable cv;
  int done = 0;
  for (int i = 0; i < 4; ++i) {
    service::GenerateRequest r;
    r.prompt = {static_cast<int32_t>(3 + i), 17, 4, static_cast<int32_t>(60 + i)};
    r.max_tokens = 10, r.seed = static_cast<uint64_t>(7 + i), r.trace = i == 1;
    r.sampling.temperature = i == 0 ? 0.0 : 0.9, r.sampling.top_k = 30;
    engine.submit(r, {nullptr,
                      [&, i](const service::TokenEvent& e) {
                        out.tokens[static_cast<size_t>(i)].push_back(e.token);
                        out.routing[static_cast<size_t>(i)].push_back(e.routing);
                        return true;
                      },
                      [&](const std::string&) {
                        std::lock_guard<std::mutex> lock(mu);
                        ++done;
                        cv.notify_all();
                      }});
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done == 4; });
  }
  out.score = engine.score({5, 9, 13, 2, 40, 41, 7, 7, 90});
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  return mpitest::run(argc, argv, "serving", [](Communicator& world) {
    Backend& be = backend_for(Device::CPU);
    be.set_num_threads(1);
    const io::RunConfig cfg = config();
    Gpt2 sharded(cfg.model, be, DType::F32, &world);
    sharded.init_weights(31);  // every rank draws the global tensors and keeps its modules
    if (world.rank() != 0) return service::Engine::follow(sharded, world, 4);
    Gpt2 whole(cfg.model, be);
    whole.init_weights(31);
    Outcome want;
    {
      service::Engine alone(whole, {4, 8});
      want = serve(alone);
    }
    Outcome got;
    {
      service::Engine engine(sharded, {4, 8, &world});
      got = serve(engine);
    }
    for (size_t i = 0; i < want.tokens.size(); ++i) {
      MPI_CHECK_MSG(got.tokens[i] == want.tokens[i], "request " + std::to_string(i));
      MPI_CHECK_MSG(got.routing[i] == want.routing[i], "routing of request " + std::to_string(i) + ": " +
                                                           nlohmann::json(got.routing[i]).dump().substr(0, 300) + " vs " +
                                                           nlohmann::json(want.routing[i]).dump().substr(0, 300));
    }
    MPI_CHECK(!want.routing[1].empty() && want.routing[1][0].contains("chunks/0"));
    MPI_CHECK(got.score.logprobs == want.score.logprobs);
    MPI_CHECK(got.score.mean_loss == want.score.mean_loss);
    MPI_CHECK(got.score.trace == want.score.trace);
    std::printf("rank 0: %zu requests and a score equal to one process's\n", want.tokens.size());
  });
}
