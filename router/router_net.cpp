// RouterNet: the three router networks written once over the Backend.
//
// Why this shape: every router ends in one Linear to the classes and, for mlp and gru, starts
// with one Linear from the residual; only the middle differs (ReLU, or a GRU cell that also
// reads the previous step's state). So the parameters are held by role (input projection,
// recurrent projection, output projection) and each kind is a short sequence of backend ops:
// no host loops, no device-specific code, so the CUDA backend runs it as is.
//
// Memory: one Arena per (N, steps) holds what backward needs for every step (a chunk's H steps
// all run forward before any runs backward) plus the backward scratch, which is shared by the
// steps because backward handles one step at a time. The GRU's state gradient crosses steps:
// two buffers alternate, one holding ∂L/∂s_{h+1} (arriving from step h+1 and from the logits
// of step h), the other receiving ∂L/∂s_h for step h−1.
#include "router/router_net.h"

#include <stdexcept>

#include "core/error.h"

namespace mom::router {

RouterKind parse_router_kind(const std::string& name) {
  if (name == "mlp") return RouterKind::Mlp;
  if (name == "gru") return RouterKind::Gru;
  if (name == "linear") return RouterKind::Linear;
  throw UserError("unknown router kind '" + name + "' (allowed: mlp, gru, linear)");
}

std::vector<ParamSpec> router_param_specs(const RouterNetConfig& cfg, const std::string& prefix) {
  const int64_t C = cfg.in_dim, r = cfg.hidden, K = cfg.classes;
  constexpr double kStd = 0.02;
  auto weight = [&](const std::string& n, Shape s) { return ParamSpec{prefix + n, s, true, kStd, 0.0}; };
  auto bias = [&](const std::string& n, int64_t len) { return ParamSpec{prefix + n, Shape{len}, false, 0.0, 0.0}; };
  switch (cfg.kind) {
    case RouterKind::Mlp:
      return {weight("w1", {r, C}), bias("b1", r), weight("w2", {K, r}), bias("b2", K)};
    case RouterKind::Gru:
      return {weight("wx", {3 * r, C}), bias("bx", 3 * r), weight("wh", {3 * r, r}), bias("bh", 3 * r),
              weight("wout", {K, r}), bias("bout", K)};
    case RouterKind::Linear:
      if (cfg.bias) return {weight("w", {K, C}), bias("b", K)};
      return {weight("w", {K, C})};
  }
  throw std::logic_error("router_param_specs: unknown router kind");
}

struct RouterNet::Impl {
  Backend& be;
  DType dtype;
  // Parameters and their gradients by role. in: C->r (mlp w1, gru wx); rec: r->3r (gru wh);
  // out: ->classes (mlp w2, gru wout, linear w). Unused roles (and linear's absent bias) stay empty.
  Tensor w_in, b_in, w_rec, b_rec, w_out, b_out;
  Tensor dw_in, db_in, dw_rec, db_rec, dw_out, db_out;

  int N = -1, steps = 0;
  std::unique_ptr<Arena> arena;
  // Per step: mlp pre (hidden pre-activation), act (ReLU output); gru gx, gh, gates; gru state
  // has steps + 1 entries, state[0] = 0.
  std::vector<Tensor> pre, act, gx, gh, gates, state;
  // Backward scratch shared by the steps.
  Tensor dact, dpre, dgx, dgh, dstate[2];
  int carry = 0;          // dstate[carry] holds ∂L/∂state[step + 1] for the next backward step
  int next_backward = -1;  // the step backward expects next (steps − 1 restarts)

  explicit Impl(Backend& b, DType t) : be(b), dtype(t) {}
};

RouterNet::RouterNet(const RouterNetConfig& cfg, const ParameterStore& params, const std::string& prefix)
    : impl_(std::make_shared<Impl>(params.backend(), params.dtype())), cfg_(cfg) {
  Impl& m = *impl_;
  auto bind = [&](const std::string& name, Tensor& w, Tensor& g) {
    w = params.param(prefix + name);
    g = params.grad(prefix + name);
  };
  switch (cfg.kind) {
    case RouterKind::Mlp:
      bind("w1", m.w_in, m.dw_in), bind("b1", m.b_in, m.db_in);
      bind("w2", m.w_out, m.dw_out), bind("b2", m.b_out, m.db_out);
      break;
    case RouterKind::Gru:
      bind("wx", m.w_in, m.dw_in), bind("bx", m.b_in, m.db_in);
      bind("wh", m.w_rec, m.dw_rec), bind("bh", m.b_rec, m.db_rec);
      bind("wout", m.w_out, m.dw_out), bind("bout", m.b_out, m.db_out);
      break;
    case RouterKind::Linear:
      bind("w", m.w_out, m.dw_out);
      if (cfg.bias) bind("b", m.b_out, m.db_out);
      break;
  }
}

void RouterNet::prepare(int N, int steps) {
  Impl& m = *impl_;
  if (N == m.N && steps == m.steps) return;
  const int64_t r = cfg_.hidden;
  // Allocation list, walked twice: once to size the arena, once to carve it.
  auto layout = [&](auto&& take) {
    m.pre.clear(), m.act.clear(), m.gx.clear(), m.gh.clear(), m.gates.clear(), m.state.clear();
    if (cfg_.kind == RouterKind::Mlp) {
      for (int h = 0; h < steps; ++h) m.pre.push_back(take(Shape{N, r})), m.act.push_back(take(Shape{N, r}));
      m.dact = take(Shape{N, r}), m.dpre = take(Shape{N, r});
    } else if (cfg_.kind == RouterKind::Gru) {
      for (int h = 0; h < steps; ++h) {
        m.gx.push_back(take(Shape{N, 3 * r}));
        m.gh.push_back(take(Shape{N, 3 * r}));
        m.gates.push_back(take(Shape{N, 3 * r}));
      }
      for (int h = 0; h <= steps; ++h) m.state.push_back(take(Shape{N, r}));
      m.dgx = take(Shape{N, 3 * r}), m.dgh = take(Shape{N, 3 * r});
      m.dstate[0] = take(Shape{N, r}), m.dstate[1] = take(Shape{N, r});
    }
  };
  ArenaPlan plan;
  layout([&](Shape s) {
    plan.add(s, m.dtype);
    return Tensor{};
  });
  m.arena = std::make_unique<Arena>(m.be, plan.bytes());
  layout([&](Shape s) { return m.arena->alloc(s, m.dtype); });
  m.N = N, m.steps = steps;
  m.next_backward = -1;
}

void RouterNet::forward(int step, const Tensor& x, const Tensor& logits) {
  Impl& m = *impl_;
  if (step < 0 || step >= m.steps) throw std::logic_error("RouterNet::forward: step outside prepare()'s range");
  switch (cfg_.kind) {
    case RouterKind::Mlp:
      m.be.matmul_forward(m.pre[step], x, m.w_in, m.b_in);
      m.be.relu_forward(m.act[step], m.pre[step]);
      m.be.matmul_forward(logits, m.act[step], m.w_out, m.b_out);
      break;
    case RouterKind::Gru:
      if (step == 0) m.be.zero(m.state[0]);  // a new chunk starts from a zero state
      m.be.matmul_forward(m.gx[step], x, m.w_in, m.b_in);
      m.be.matmul_forward(m.gh[step], m.state[step], m.w_rec, m.b_rec);
      m.be.gru_cell_forward(m.state[step + 1], m.gates[step], m.gx[step], m.gh[step], m.state[step]);
      m.be.matmul_forward(logits, m.state[step + 1], m.w_out, m.b_out);
      break;
    case RouterKind::Linear:
      m.be.matmul_forward(logits, x, m.w_out, m.b_out);
      break;
  }
}

void RouterNet::backward(int step, const Tensor& x, const Tensor& dlogits, const Tensor& dx) {
  Impl& m = *impl_;
  if (step < 0 || step >= m.steps) throw std::logic_error("RouterNet::backward: step outside prepare()'s range");
  // The GRU's carried state gradient is only right when steps come back in order H−1..0.
  if (step != m.steps - 1 && step != m.next_backward)
    throw std::logic_error("RouterNet::backward: steps must run in reverse order from the last");
  m.next_backward = step - 1;
  switch (cfg_.kind) {
    case RouterKind::Mlp:
      m.be.zero(m.dact);
      m.be.zero(m.dpre);
      m.be.matmul_backward(m.dact, m.dw_out, m.db_out, dlogits, m.act[step], m.w_out);
      m.be.relu_backward(m.dpre, m.pre[step], m.dact);
      m.be.matmul_backward(dx, m.dw_in, m.db_in, m.dpre, x, m.w_in);
      break;
    case RouterKind::Gru: {
      if (step == m.steps - 1) {
        m.carry = 0;
        m.be.zero(m.dstate[0]);  // nothing after the last step depends on its state
      }
      const Tensor& ds_new = m.dstate[m.carry];
      const Tensor& ds_prev = m.dstate[1 - m.carry];
      m.be.matmul_backward(ds_new, m.dw_out, m.db_out, dlogits, m.state[step + 1], m.w_out);
      m.be.zero(m.dgx);
      m.be.zero(m.dgh);
      m.be.zero(ds_prev);
      m.be.gru_cell_backward(m.dgx, m.dgh, ds_prev, ds_new, m.gates[step], m.gh[step], m.state[step]);
      m.be.matmul_backward(dx, m.dw_in, m.db_in, m.dgx, x, m.w_in);
      // state[0] is a constant: at step 0 only the recurrent weights' gradients are wanted.
      m.be.matmul_backward(step > 0 ? ds_prev : Tensor{}, m.dw_rec, m.db_rec, m.dgh, m.state[step], m.w_rec);
      m.carry = 1 - m.carry;
      break;
    }
    case RouterKind::Linear:
      m.be.matmul_backward(dx, m.dw_out, m.db_out, dlogits, x, m.w_out);
      break;
  }
}

}  // namespace mom::router
