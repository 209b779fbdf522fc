#include "core/checkpointing.h"

#include <chrono>
#include <ctime>
#include <vector>

#include "core/error.h"
#include "io/checkpoint_file.h"

namespace mom {

namespace {

std::string utc_now() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// The whole (global) tensor of parameter i on the writing rank: local data, or for a sharded
// pool the blocks of every rank of the expert-parallel group gathered in rank order.
template <class T>
std::vector<T> whole_tensor(const ParameterStore& P, size_t i, const Tensor& t, Communicator* ep) {
  std::vector<T> local(static_cast<size_t>(t.numel()));
  P.backend().copy_to_host(local.data(), t);
  if (!ep || !P.specs()[i].pool) return local;
  std::vector<T> whole(ep->rank() == 0 ? local.size() * static_cast<size_t>(ep->size()) : 0);
  ep->gather_bytes(local.data(), whole.data(), local.size() * sizeof(T), 0);
  return whole;
}

// Gathers one tensor (collective for sharded pools) and, on the writer, stores it.
template <class T>
void save_tensor(io::CheckpointWriter* w, const std::string& path, const ParameterStore& P, size_t i, const Tensor& t,
                 Communicator* ep) {
  const std::vector<T> data = whole_tensor<T>(P, i, t, ep);
  if (!w) return;
  w->write(path, P.specs()[i].shape.vec(), data.data());
  if (P.specs()[i].pool) w->set_attr(path, "pool_axis", int64_t{0});
}

void save_any(io::CheckpointWriter* w, const std::string& path, const ParameterStore& P, size_t i, const Tensor& t,
              Communicator* ep) {
  if (t.dtype == DType::F64)
    save_tensor<double>(w, path, P, i, t, ep);
  else
    save_tensor<float>(w, path, P, i, t, ep);
}

// Reads this rank's rows of the global tensor (all of it unless a sharded pool).
template <class T>
void load_tensor(const io::CheckpointReader& r, const std::string& path, const ParameterStore& P, size_t i,
                 const Tensor& t) {
  const auto global = P.specs()[i].shape.vec();
  std::vector<T> host(static_cast<size_t>(t.numel()));
  const RowRange rows = P.rows(i);
  if (P.shard().size == 1 || !P.specs()[i].pool) {
    r.read(path, global, host.data());
  } else {
    const auto stored = r.has(path) ? r.shape(path) : std::vector<int64_t>{};
    if (stored != global) r.read(path, global, host.data());  // names the dataset and both shapes
    r.read_rows(path, rows.begin, rows.end, host.data());
  }
  P.backend().copy_from_host(t, host.data());
}

void load_any(const io::CheckpointReader& r, const std::string& path, const ParameterStore& P, size_t i,
              const Tensor& t) {
  if (t.dtype == DType::F64)
    load_tensor<double>(r, path, P, i, t);
  else
    load_tensor<float>(r, path, P, i, t);
}

}  // namespace

std::string save_checkpoint(const std::filesystem::path& path, const Gpt2& model, const AdamW* opt,
                            const TrainState& state, const nlohmann::json& config, bool overwrite,
                            const std::vector<std::pair<std::string, std::string>>* extra_bytes, bool writes_file) {
  Communicator* ep = model.expert_parallel_group();
  const ParameterStore& P = model.params();
  std::unique_ptr<io::CheckpointWriter> w;
  std::string failure;
  // A writer that fails (disk full, existing file) drops its temporary file and stops writing
  // but still joins every gather, so no peer is left waiting inside a collective.
  auto attempt = [&](auto&& fn) {
    try {
      fn();
    } catch (const UserError& e) {
      failure = e.what();
      w.reset();  // removes the temporary file; the previous checkpoint stays
    }
  };
  if (writes_file) attempt([&] { w = std::make_unique<io::CheckpointWriter>(path, overwrite); });
  for (size_t i = 0; i < P.size(); ++i) {
    const std::string& name = P.specs()[i].name;
    attempt([&] { save_any(w.get(), "params/" + name, P, i, P.param(i), ep); });
    if (opt) {
      attempt([&] { save_any(w.get(), "optimizer/adam_m/" + name, P, i, opt->m(i), ep); });
      attempt([&] { save_any(w.get(), "optimizer/adam_v/" + name, P, i, opt->v(i), ep); });
    }
  }
  if (w)
    attempt([&] {
      if (extra_bytes)
        for (const auto& [dataset, bytes] : *extra_bytes) w->write_bytes(dataset, bytes);
      w->set_attr("/", "config", config.dump());
      w->set_attr("/", "step", state.step);
      w->set_attr("/", "tokens_seen", state.tokens_seen);
      w->set_attr("/", "rng_state", std::vector<uint64_t>(state.rng.begin(), state.rng.end()));
      w->set_attr("/", "loader_epoch", static_cast<int64_t>(state.loader_epoch));
      w->set_attr("/", "loader_batch", static_cast<int64_t>(state.loader_batch));
      w->set_attr("/", "loader_batch_samples", state.loader_batch_samples);
      w->set_attr("/", "saved_ranks", state.ranks);
      w->set_attr("/", "saved_ep_size", state.ep_size);
      w->set_attr("/", "adam_t", opt ? opt->t() : int64_t{0});
      w->set_attr("/", "has_optimizer", static_cast<int64_t>(opt != nullptr));
      w->set_attr("/", "created_by", std::string("mom 0.1.0"));
      w->set_attr("/", "created_at", utc_now());
      w->commit();
    });
  if (!ep && !failure.empty()) throw UserError(failure);
  return failure;
}

nlohmann::json read_checkpoint_config(const std::filesystem::path& path) {
  io::CheckpointReader r(path);
  const std::string text = r.attr_string("/", "config");
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  require(!j.is_discarded(), "checkpoint '" + path.string() + "' has an unreadable config attribute");
  return j;
}

void load_checkpoint(const std::filesystem::path& path, Gpt2& model, AdamW* opt, TrainState* state) {
  io::CheckpointReader r(path);
  ParameterStore& P = model.params();
  if (opt)
    require(r.attr_int("/", "has_optimizer") != 0,
            "checkpoint '" + path.string() +
                "' holds weights only (no optimizer state), so it cannot resume a run; "
                "start a new run from it with --init-from");
  // Wide AltUp's embeddings are K·C wide: a file of another width cannot become one (only
  // Recycled-AltUp widens a trained model without changing what it computes).
  const AltUpConfig& altup = model.config().altup;
  if (altup.enabled() && r.has("params/wte")) {
    const std::vector<int64_t> file = r.shape("params/wte");
    const int64_t want = altup.wide ? int64_t{altup.k} * model.config().n_embd : model.config().n_embd;
    require(
        file.size() == 2 && file[1] == want,
        "checkpoint '" + path.string() + "' has embeddings of width " +
            (file.size() == 2 ? std::to_string(file[1]) : std::string("?")) + " but model.altup.mode \"" +
            (altup.wide ? "wide" : "recycled") + "\" with model.altup.k " + std::to_string(altup.k) + " needs width " +
            std::to_string(want) +
            (altup.wide ? "; a width-C model is widened with mode \"recycled\" ('mom convert dense-to-altup')" : ""));
  }
  for (size_t i = 0; i < P.size(); ++i) {
    const std::string& name = P.specs()[i].name;
    load_any(r, "params/" + name, P, i, P.param(i));
    if (opt) {
      load_any(r, "optimizer/adam_m/" + name, P, i, opt->m(i));
      load_any(r, "optimizer/adam_v/" + name, P, i, opt->v(i));
    }
  }
  if (opt) opt->set_t(r.attr_int("/", "adam_t"));
  if (state) {
    state->step = r.attr_int("/", "step");
    state->tokens_seen = r.attr_int("/", "tokens_seen");
    const auto rng = r.attr_u64s("/", "rng_state");
    require(rng.size() == 4, "checkpoint '" + path.string() + "': rng_state must hold 4 words");
    for (size_t i = 0; i < 4; ++i) state->rng[i] = rng[i];
    state->loader_epoch = static_cast<uint64_t>(r.attr_int("/", "loader_epoch"));
    state->loader_batch = static_cast<uint64_t>(r.attr_int("/", "loader_batch"));
    // Checkpoints from before multi-rank training: one rank, the config's batch size.
    state->loader_batch_samples = r.has_attr("/", "loader_batch_samples") ? r.attr_int("/", "loader_batch_samples") : 0;
    state->ranks = r.has_attr("/", "saved_ranks") ? r.attr_int("/", "saved_ranks") : 1;
    state->ep_size = r.has_attr("/", "saved_ep_size") ? r.attr_int("/", "saved_ep_size") : 1;
  }
}

}  // namespace mom
