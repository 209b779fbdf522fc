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

template <class T>
void write_tensor(io::CheckpointWriter& w, const std::string& path, const Tensor& t, Backend& be) {
  std::vector<T> host(static_cast<size_t>(t.numel()));
  be.copy_to_host(host.data(), t);
  const auto shape = t.shape.vec();
  w.write(path, shape, host.data());
}

void write_any(io::CheckpointWriter& w, const std::string& path, const Tensor& t, Backend& be) {
  if (t.dtype == DType::F64) write_tensor<double>(w, path, t, be);
  else write_tensor<float>(w, path, t, be);
}

void read_any(const io::CheckpointReader& r, const std::string& path, const Tensor& t, Backend& be) {
  const auto shape = t.shape.vec();
  if (t.dtype == DType::F64) {
    std::vector<double> host(static_cast<size_t>(t.numel()));
    r.read(path, shape, host.data());
    be.copy_from_host(t, host.data());
  } else {
    std::vector<float> host(static_cast<size_t>(t.numel()));
    r.read(path, shape, host.data());
    be.copy_from_host(t, host.data());
  }
}

}  // namespace

void save_checkpoint(const std::filesystem::path& path, const Gpt2& model, const AdamW* opt, const TrainState& state,
                     const nlohmann::json& config, bool overwrite,
                     const std::vector<std::pair<std::string, std::string>>* extra_bytes) {
  io::CheckpointWriter w(path, overwrite);
  const ParameterStore& P = model.params();
  Backend& be = P.backend();
  for (size_t i = 0; i < P.size(); ++i) {
    const std::string& name = P.specs()[i].name;
    write_any(w, "params/" + name, P.param(i), be);
    if (opt) {
      write_any(w, "optimizer/adam_m/" + name, opt->m(i), be);
      write_any(w, "optimizer/adam_v/" + name, opt->v(i), be);
    }
  }
  if (extra_bytes)
    for (const auto& [dataset, bytes] : *extra_bytes) w.write_bytes(dataset, bytes);
  w.set_attr("/", "config", config.dump());
  w.set_attr("/", "step", state.step);
  w.set_attr("/", "tokens_seen", state.tokens_seen);
  w.set_attr("/", "rng_state", std::vector<uint64_t>(state.rng.begin(), state.rng.end()));
  w.set_attr("/", "loader_epoch", static_cast<int64_t>(state.loader_epoch));
  w.set_attr("/", "loader_batch", static_cast<int64_t>(state.loader_batch));
  w.set_attr("/", "adam_t", opt ? opt->t() : int64_t{0});
  w.set_attr("/", "has_optimizer", static_cast<int64_t>(opt != nullptr));
  w.set_attr("/", "created_by", std::string("mom 0.1.0"));
  w.set_attr("/", "created_at", utc_now());
  w.commit();
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
  Backend& be = P.backend();
  if (opt)
    require(r.attr_int("/", "has_optimizer") != 0,
            "checkpoint '" + path.string() + "' holds weights only (no optimizer state), so it cannot resume a run; "
            "start a new run from it with --init-from");
  for (size_t i = 0; i < P.size(); ++i) {
    const std::string& name = P.specs()[i].name;
    read_any(r, "params/" + name, P.param(i), be);
    if (opt) {
      read_any(r, "optimizer/adam_m/" + name, opt->m(i), be);
      read_any(r, "optimizer/adam_v/" + name, opt->v(i), be);
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
  }
}

}  // namespace mom
