#include "core/layers/altup.h"

#include <vector>

namespace mom {

namespace {
constexpr double kCoefficientClamp = 120;  // Gemma 3n's bound on W_p and W_g

// One layer's row of a tensor stacked over the AltUp layers.
ParamSpec row(const std::string& name, std::initializer_list<int64_t> dims, bool decay, double init_std,
              double init_value, bool identity = false) {
  Shape s{1};
  for (int64_t d : dims) s.dim[s.rank++] = d;
  return ParamSpec{"altup/" + name, s, decay, init_std, init_value, false, true, identity};
}
}  // namespace

AltUpLayer::AltUpLayer(const AltUpConfig& cfg, const ModelDims& dims, int layer, std::unique_ptr<Block> inner)
    : cfg_(cfg), dims_(dims), layer_(layer), active_(cfg.first ? 0 : layer % cfg.k), inner_(std::move(inner)) {}

std::vector<ParamSpec> AltUpLayer::param_specs() const {
  std::vector<ParamSpec> s = inner_->param_specs();
  const int64_t K = cfg_.k, C = dims_.C;
  if (cfg_.input_dependent) {
    s.push_back(row("router_norm_weight", {C}, false, 0, 1));
    s.push_back(row("router_weight", {K, C}, true, 0.02, 0));
    s.push_back(row("predict_weight", {K * K, K}, true, 0, 0));
    s.push_back(row("correct_weight", {K, K}, true, 0, 0));
  } else {
    s.push_back(row("predict", {K, K}, false, 0, 0, /*identity=*/true));
    s.push_back(row("correct", {K}, false, 0, 1));
  }
  return s;
}

int64_t AltUpLayer::active_parameters() const {
  const int64_t K = cfg_.k, C = dims_.C;
  return inner_->active_parameters() + (cfg_.input_dependent ? C + K * C + K * K * K + K * K : K * K + K);
}

double AltUpLayer::extra_flops_per_token() const {
  const double K = cfg_.k, C = dims_.C;
  // Forward: predict K²·C multiply-adds, correct about 2K·C; the router RMSNorm, K·C, K³ and K²
  // multiply-adds. Training is three times the forward.
  double forward = 2 * (K * K * C + 2 * K * C);
  if (cfg_.input_dependent) forward += 2 * (C + K * C + K * K * K + K * K);
  return 3 * forward + inner_->extra_flops_per_token();
}

void AltUpLayer::bind(const ParameterStore& params) {
  P_ = &params;
  inner_->bind(params);
  if (!cfg_.input_dependent) return;
  const int64_t K = cfg_.k;
  const DType f = params.dtype();
  ArenaPlan plan;
  plan.add(Shape{K * K}, f);
  plan.add(Shape{K}, f);
  constants_ = std::make_unique<Arena>(params.backend(), plan.bytes());
  eye_ = constants_->alloc(Shape{K * K}, f);
  ones_ = constants_->alloc(Shape{K}, f);
  std::vector<double> eye(static_cast<size_t>(K * K), 0.0), ones(static_cast<size_t>(K), 1.0);
  for (int64_t i = 0; i < K; ++i) eye[static_cast<size_t>(i * K + i)] = 1;
  auto upload = [&](const Tensor& t, const std::vector<double>& v) {
    if (f == DType::F64) return params.backend().copy_from_host(t, v.data());
    const std::vector<float> h(v.begin(), v.end());
    params.backend().copy_from_host(t, h.data());
  };
  upload(eye_, eye);
  upload(ones_, ones);
}

AltUpLayer::Work AltUpLayer::Work::rows(int64_t M) const {
  auto head = [M](const Tensor& t) { return t.empty() ? t : t.rows(0, M); };
  const int64_t K = xhat.shape[0] / y.shape[0];
  return {xhat.rows(0, K * M), head(y), head(r), head(rms), head(m), wp, wg, head(p), head(g)};
}

AltUpLayer::Work AltUpLayer::carve(Carver& c, int64_t N) const {
  const int64_t K = cfg_.k, C = dims_.C;
  const DType f = P_->dtype();
  Work w;
  w.xhat = c.take(Shape{K * N, C}, f), w.y = c.take(Shape{N, C}, f);
  if (cfg_.input_dependent) {
    w.r = c.take(Shape{N, C}, f), w.rms = c.take(Shape{N}, f), w.m = c.take(Shape{N, K}, f);
    w.wp = c.take(Shape{K * K, K}, f), w.wg = c.take(Shape{K, K}, f);
    w.p = c.take(Shape{N, K * K}, f), w.g = c.take(Shape{N, K}, f);
  }
  return w;
}

void AltUpLayer::layout(int B, int T, Carver& saved, Carver& scratch) {
  N_ = static_cast<int64_t>(B) * T;
  const int64_t N = N_, K = cfg_.k, C = dims_.C;
  const DType f = P_->dtype();
  train_ = carve(saved, N);
  // This layer's scratch first: it stays live across the wrapped block's backward, whose own
  // scratch is carved after it.
  dxhat_ = scratch.take(Shape{K * N, C}, f), dy_ = scratch.take(Shape{N, C}, f);
  if (cfg_.input_dependent) {
    dp_ = scratch.take(Shape{N, K * K}, f), dg_ = scratch.take(Shape{N, K}, f), dm_ = scratch.take(Shape{N, K}, f);
    dz_ = scratch.take(Shape{N, K}, f), dr_ = scratch.take(Shape{N, C}, f);
    dwp_ = scratch.take(Shape{K * K, K}, f), dwg_ = scratch.take(Shape{K, K}, f);
  }
  inner_->layout(B, T, saved, scratch);
}

void AltUpLayer::prepare_decode(int sequences, int max_rows, Carver& scratch) {
  dec_ = carve(scratch, max_rows);
  inner_->prepare_decode(sequences, max_rows, scratch);
}

std::pair<Tensor, Tensor> AltUpLayer::coefficients_forward(const Tensor& xa, const Work& w, int64_t N) {
  const int64_t K = cfg_.k;
  if (!cfg_.input_dependent) return {param("predict"), param("correct")};
  Backend& b = P_->backend();
  b.rmsnorm_forward(w.r, w.rms, xa, param("router_norm_weight"), dims_.eps);
  b.matmul_forward(w.m, w.r, param("router_weight"), Tensor{});
  b.scale(w.m, 1.0 / dims_.C);
  b.tanh_forward(w.m, w.m);
  b.clamp_forward(w.wp, param("predict_weight"), kCoefficientClamp);
  b.clamp_forward(w.wg, param("correct_weight"), kCoefficientClamp);
  b.matmul_forward(w.p, w.m, w.wp, eye_);   // p = I + W_p·m
  b.matmul_forward(w.g, w.m, w.wg, ones_);  // g = 1 + W_g·m
  return {w.p.reshaped(Shape{N, K, K}), w.g};
}

void AltUpLayer::coefficients_backward(const Tensor& xa, const Tensor& dxa) {
  Backend& b = P_->backend();
  const Work& w = train_;
  for (const Tensor* t : {&dm_, &dwp_, &dwg_, &dz_, &dr_}) b.zero(*t);
  b.matmul_backward(dm_, dwp_, Tensor{}, dp_, w.m, w.wp);
  b.matmul_backward(dm_, dwg_, Tensor{}, dg_, w.m, w.wg);
  b.clamp_backward(grad("predict_weight"), param("predict_weight"), dwp_, kCoefficientClamp);
  b.clamp_backward(grad("correct_weight"), param("correct_weight"), dwg_, kCoefficientClamp);
  b.tanh_backward(dz_, w.m, dm_);
  b.scale(dz_, 1.0 / dims_.C);
  b.matmul_backward(dr_, grad("router_weight"), Tensor{}, dz_, w.r, param("router_weight"));
  b.rmsnorm_backward(dxa, grad("router_norm_weight"), dr_, xa, param("router_norm_weight"), w.rms, dims_.eps);
}

void AltUpLayer::forward(const Tensor& x_in, const Tensor& x_out) {
  Backend& b = P_->backend();
  const int64_t K = cfg_.k, N = N_, C = dims_.C;
  const Shape KNC{K, N, C};
  const Tensor xa = block(x_in, active_, N);
  const auto [p, g] = coefficients_forward(xa, train_, N);
  b.altup_predict_forward(train_.xhat.reshaped(KNC), x_in.reshaped(KNC), p);
  inner_->forward(cfg_.predicted_input ? block(train_.xhat, active_, N) : xa, train_.y);
  b.altup_correct_forward(x_out.reshaped(KNC), train_.xhat.reshaped(KNC), train_.y, g, active_);
}

void AltUpLayer::decode(const Tensor& x, const DecodeRows& rows) {
  Backend& b = P_->backend();
  const int64_t K = cfg_.k, M = rows.M, C = dims_.C;
  const Shape KMC{K, M, C};
  const Work w = dec_.rows(M);
  const auto [p, g] = coefficients_forward(block(x, active_, M), w, M);
  b.altup_predict_forward(w.xhat.reshaped(KMC), x.reshaped(KMC), p);
  b.copy(w.y, cfg_.predicted_input ? block(w.xhat, active_, M) : block(x, active_, M));
  inner_->decode(w.y, rows);  // y = L(u), in place
  b.altup_correct_forward(x.reshaped(KMC), w.xhat.reshaped(KMC), w.y, g, active_);
}

void AltUpLayer::backward(const Tensor& x_in, const Tensor& dres, double loss_scale) {
  Backend& b = P_->backend();
  const int64_t K = cfg_.k, N = N_, C = dims_.C;
  const Shape KNC{K, N, C};
  const Work& w = train_;
  const Tensor xa = block(x_in, active_, N);
  const Tensor p = cfg_.input_dependent ? w.p.reshaped(Shape{N, K, K}) : param("predict");
  const Tensor g = cfg_.input_dependent ? w.g : param("correct");
  const Tensor dp = cfg_.input_dependent ? dp_.reshaped(Shape{N, K, K}) : grad("predict");
  const Tensor dg = cfg_.input_dependent ? dg_ : grad("correct");
  b.zero(dxhat_);
  b.zero(dy_);
  if (cfg_.input_dependent) b.zero(dp_), b.zero(dg_);
  b.altup_correct_backward(dxhat_.reshaped(KNC), dy_, dg, dres.reshaped(KNC), w.xhat.reshaped(KNC), w.y, g, active_);
  const Tensor u = cfg_.predicted_input ? block(w.xhat, active_, N) : xa;
  inner_->backward(u, dy_, loss_scale);  // dy_ becomes ∂L/∂u
  if (cfg_.predicted_input) b.accumulate(block(dxhat_, active_, N), dy_);
  b.zero(dres);
  b.altup_predict_backward(dres.reshaped(KNC), dp, dxhat_.reshaped(KNC), x_in.reshaped(KNC), p);
  if (!cfg_.predicted_input) b.accumulate(block(dres, active_, N), dy_);
  if (cfg_.input_dependent) coefficients_backward(xa, block(dres, active_, N));
}

AltUpStream::AltUpStream(const AltUpConfig& cfg, Backend& backend, int C, int vocab_size)
    : cfg_(cfg), be_(backend), C_(C), V_(vocab_size) {}

void AltUpStream::prepare(int64_t N) {
  if (N == N_ || !cfg_.wide) {
    N_ = N;
    return;
  }
  N_ = N;
  const int64_t K = cfg_.k, V = V_;
  std::vector<int32_t> to_blocks(static_cast<size_t>(K * N)), to_tokens(static_cast<size_t>(K * N));
  for (int64_t j = 0; j < K; ++j)
    for (int64_t n = 0; n < N; ++n) {
      to_blocks[static_cast<size_t>(j * N + n)] = static_cast<int32_t>(n * K + j);
      to_tokens[static_cast<size_t>(n * K + j)] = static_cast<int32_t>(j * N + n);
    }
  ArenaPlan plan;
  plan.add(Shape{K * N}, DType::I32);
  plan.add(Shape{K * N}, DType::I32);
  arena_.reset();
  arena_ = std::make_unique<Arena>(be_, plan.bytes());
  to_blocks_ = arena_->alloc(Shape{K * N}, DType::I32);
  to_tokens_ = arena_->alloc(Shape{N * K, 1}, DType::I32);
  be_.copy_from_host(to_blocks_, to_blocks.data());
  be_.copy_from_host(to_tokens_, to_tokens.data());
  if (head_arena_) return;  // the head's indices depend on V and K only
  std::vector<int32_t> slots(static_cast<size_t>(V * K)), spread(static_cast<size_t>(V * K));
  for (int64_t m = 0; m < V * K; ++m)
    slots[static_cast<size_t>(m)] = static_cast<int32_t>(m), spread[m] = static_cast<int32_t>(m / K);
  ArenaPlan head_plan;
  head_plan.add(Shape{V * K}, DType::I32);
  head_plan.add(Shape{V * K}, DType::I32);
  head_arena_ = std::make_unique<Arena>(be_, head_plan.bytes());
  head_slots_ = head_arena_->alloc(Shape{V, K}, DType::I32);
  head_spread_ = head_arena_->alloc(Shape{V * K, 1}, DType::I32);
  be_.copy_from_host(head_slots_, slots.data());
  be_.copy_from_host(head_spread_, spread.data());
}

void AltUpStream::widen(const Tensor& encoded, const Tensor& stream) {
  const int64_t N = N_, K = cfg_.k;
  if (cfg_.wide) return be_.gather_rows(stream, encoded.reshaped(Shape{N * K, C_}), to_blocks_);
  for (int64_t j = 0; j < K; ++j) be_.copy(stream.rows(j * N, (j + 1) * N), encoded);
}

void AltUpStream::widen_backward(const Tensor& dencoded, const Tensor& dstream) {
  const int64_t N = N_, K = cfg_.k;
  if (cfg_.wide) {
    be_.zero(dencoded);
    return be_.combine_rows(dencoded.reshaped(Shape{N * K, C_}), dstream, to_tokens_, Tensor{});
  }
  be_.copy(dencoded, dstream.rows(0, N));
  for (int64_t j = 1; j < K; ++j) be_.accumulate(dencoded, dstream.rows(j * N, (j + 1) * N));
}

void AltUpStream::narrow(const Tensor& stream, const Tensor& sum) {
  const int64_t N = N_;
  be_.copy(sum, stream.rows(0, N));
  for (int64_t j = 1; j < cfg_.k; ++j) be_.accumulate(sum, stream.rows(j * N, (j + 1) * N));
}

void AltUpStream::narrow_backward(const Tensor& dsum, const Tensor& dstream) {
  const int64_t N = N_;
  for (int64_t j = 0; j < cfg_.k; ++j) be_.copy(dstream.rows(j * N, (j + 1) * N), dsum);
}

void AltUpStream::fold_head(const Tensor& wte, const Tensor& head) {
  be_.zero(head);
  be_.combine_rows(head, wte.reshaped(Shape{static_cast<int64_t>(V_) * cfg_.k, C_}), head_slots_, Tensor{});
}

void AltUpStream::fold_head_backward(const Tensor& dhead, const Tensor& dwte) {
  be_.combine_rows(dwte.reshaped(Shape{static_cast<int64_t>(V_) * cfg_.k, C_}), dhead, head_spread_, Tensor{});
}

}  // namespace mom
