#include "hyb/worker/linear_mixer.h"

#include <torch/torch.h>

#include <cmath>

#include "hyb/kernels/linear.h"
#include "hyb/kernels/linear_attention.h"
#include "hyb/kernels/norm.h"
#include "hyb/kernels/short_conv.h"

namespace hyb::worker {
namespace {

constexpr char kPrefix[] = "linear_attn.";
// silu(z) = 1 at z = 1.27846454...: an output gate whose weight is zero starts as the identity.
constexpr double kUnitSiluInput = 1.2784645427610738;

// [Hkv * D, ...] -> [H * D, ...]: each key/value head's rows repeated for every query head of its
// group (query head h reads key/value head h / group, as in transformers' repeat_kv).
at::Tensor ExpandHeads(const at::Tensor& w, int64_t kv_heads, int64_t group) {
  if (!w.defined()) return w;
  if (group == 1) return w.clone();
  std::vector<int64_t> out_shape = w.sizes().vec();
  out_shape[0] *= group;
  return w.reshape({kv_heads, w.size(0) / kv_heads, -1})
      .repeat_interleave(group, 0)
      .reshape(out_shape)
      .clone();
}

at::Tensor InverseSoftplus(const at::Tensor& y) { return y + at::log(-at::expm1(-y)); }

// Per-head decay rates spread log-uniformly over [1e-3, 1e-1] per token: heads keep memories of
// ~10 to ~1000 tokens, deterministic (no randomness in the transfer).
at::Tensor DecayRates(int64_t heads, const at::TensorOptions& o) {
  if (heads == 1) return at::full({1}, 1e-2, o);
  return at::exp(at::linspace(std::log(1e-3), std::log(1e-1), heads, o));
}

at::Tensor L2Normalize(const at::Tensor& x) {
  return x * at::rsqrt(x.pow(2).sum(-1, true) + 1e-6);
}

}  // namespace

std::unique_ptr<MixerState> LinearState::Clone() const {
  auto c = std::make_unique<LinearState>();
  auto copy = [](const at::Tensor& t) { return t.defined() ? t.clone() : t; };
  c->state = copy(state);
  c->conv_q = copy(conv_q);
  c->conv_k = copy(conv_k);
  c->conv_v = copy(conv_v);
  return c;
}

int64_t LinearState::Bytes() const {
  int64_t n = 0;
  for (const at::Tensor* t : {&state, &conv_q, &conv_k, &conv_v}) {
    if (t->defined()) n += t->numel() * static_cast<int64_t>(t->element_size());
  }
  return n;
}

const at::Tensor& LinearMixer::P(const std::string& name) const {
  static const at::Tensor kUndefined;
  auto it = params_.find(name);
  return it == params_.end() ? kUndefined : it->second;
}

at::Tensor LinearMixer::Project(const at::Tensor& x, const std::string& name) const {
  return kernels::Linear(x, P(name + ".weight"), P(name + ".bias"));
}

void LinearMixer::InitNewParameters(at::ScalarType dtype, const at::Device& device) {
  const int64_t h = shape_.num_heads, d = shape_.head_dim, hidden = shape_.hidden_size;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto put = [&](const std::string& name, const at::Tensor& t) {
    params_[name] = t.to(device, dtype);
  };
  if (options_.type == LinearMixerType::kLinearElu) return;
  put("g_proj.weight", at::zeros({h * d, hidden}, f32));
  put("g_proj.bias", at::full({h * d}, kUnitSiluInput, f32));
  put("o_norm.weight", at::ones({d}, f32));
  const at::Tensor rates = DecayRates(h, f32);  // per-token decay rates, one per head
  if (options_.type == LinearMixerType::kGatedDeltaNet) {
    at::Tensor identity = at::zeros({h * d, options_.conv_size}, f32);
    identity.select(1, options_.conv_size - 1).fill_(1.0);
    put("q_conv1d.weight", identity);
    put("k_conv1d.weight", identity);
    put("v_conv1d.weight", identity);
    put("b_proj.weight", at::zeros({h, hidden}, f32));  // beta = 0.5
    put("a_proj.weight", at::zeros({h, hidden}, f32));
    put("A_log", at::zeros({h}, f32));
    put("dt_bias", InverseSoftplus(rates));  // g = -softplus(dt_bias) = -rate
  } else {  // GLA
    auto gen = at::make_generator<at::CPUGeneratorImpl>(0x61a);
    put("gk_proj.0.weight", at::normal(0.0, 1.0 / std::sqrt(static_cast<double>(hidden)),
                                       {options_.gate_rank, hidden}, gen, f32));
    put("gk_proj.1.weight", at::zeros({h * d, options_.gate_rank}, f32));
    // logsigmoid(bias) / normalizer = -rate  =>  bias = -softplus^-1(normalizer * rate)
    put("gk_proj.1.bias",
        (-InverseSoftplus(rates * options_.gate_logit_normalizer)).repeat_interleave(d));
  }
}

std::shared_ptr<LinearMixer> LinearMixer::Transfer(const AttentionShape& shape,
                                                   const AttentionWeights& t,
                                                   const LinearMixerOptions& options) {
  std::shared_ptr<LinearMixer> m(new LinearMixer(shape, options));
  const int64_t group = shape.num_heads / shape.num_kv_heads;
  m->params_["q_proj.weight"] = t.q_proj.detach().clone();
  m->params_["k_proj.weight"] = ExpandHeads(t.k_proj.detach(), shape.num_kv_heads, group);
  m->params_["v_proj.weight"] = ExpandHeads(t.v_proj.detach(), shape.num_kv_heads, group);
  m->params_["o_proj.weight"] = t.o_proj.detach().clone();
  if (t.q_bias.defined()) {
    m->params_["q_proj.bias"] = t.q_bias.detach().clone();
    m->params_["k_proj.bias"] = ExpandHeads(t.k_bias.detach(), shape.num_kv_heads, group);
    m->params_["v_proj.bias"] = ExpandHeads(t.v_bias.detach(), shape.num_kv_heads, group);
  }
  if (t.o_bias.defined()) m->params_["o_proj.bias"] = t.o_bias.detach().clone();
  m->InitNewParameters(t.q_proj.scalar_type(), t.q_proj.device());
  return m;
}

std::shared_ptr<LinearMixer> LinearMixer::Random(const AttentionShape& shape,
                                                 const LinearMixerOptions& options, bool qkv_bias,
                                                 bool o_bias, uint64_t seed, at::ScalarType dtype,
                                                 const at::Device& device) {
  std::shared_ptr<LinearMixer> m(new LinearMixer(shape, options));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const int64_t hd = shape.num_heads * shape.head_dim, hidden = shape.hidden_size;
  auto randn = [&](int64_t out, int64_t in) {
    return at::normal(0.0, 1.0 / std::sqrt(static_cast<double>(in)), {out, in}, gen,
                      at::TensorOptions().dtype(at::kFloat))
        .to(device, dtype);
  };
  m->params_["q_proj.weight"] = randn(hd, hidden);
  m->params_["k_proj.weight"] = randn(hd, hidden);
  m->params_["v_proj.weight"] = randn(hd, hidden);
  m->params_["o_proj.weight"] = randn(hidden, hd);
  const auto zeros_opts = at::TensorOptions().dtype(dtype).device(device);
  if (qkv_bias) {
    for (const char* n : {"q_proj.bias", "k_proj.bias", "v_proj.bias"}) {
      m->params_[n] = at::zeros({hd}, zeros_opts);
    }
  }
  if (o_bias) m->params_["o_proj.bias"] = at::zeros({hidden}, zeros_opts);
  m->InitNewParameters(dtype, device);
  return m;
}

StatusOr<std::shared_ptr<LinearMixer>> LinearMixer::FromTensors(
    const AttentionShape& shape, const LinearMixerOptions& options, const TensorGetter& get,
    const std::function<bool(const std::string&)>& has) {
  std::shared_ptr<LinearMixer> m(new LinearMixer(shape, options));
  const int64_t h = shape.num_heads, d = shape.head_dim, hd = h * d, hidden = shape.hidden_size;
  std::vector<std::pair<std::string, std::vector<int64_t>>> required = {
      {"q_proj.weight", {hd, hidden}},
      {"k_proj.weight", {hd, hidden}},
      {"v_proj.weight", {hd, hidden}},
      {"o_proj.weight", {hidden, hd}}};
  if (options.type != LinearMixerType::kLinearElu) {
    required.push_back({"g_proj.weight", {hd, hidden}});
    required.push_back({"g_proj.bias", {hd}});
    required.push_back({"o_norm.weight", {d}});
  }
  if (options.type == LinearMixerType::kGatedDeltaNet) {
    for (const char* n : {"q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight"}) {
      required.push_back({n, {hd, options.conv_size}});
    }
    required.push_back({"b_proj.weight", {h, hidden}});
    required.push_back({"a_proj.weight", {h, hidden}});
    required.push_back({"A_log", {h}});
    required.push_back({"dt_bias", {h}});
  } else if (options.type == LinearMixerType::kGla) {
    required.push_back({"gk_proj.0.weight", {options.gate_rank, hidden}});
    required.push_back({"gk_proj.1.weight", {hd, options.gate_rank}});
    required.push_back({"gk_proj.1.bias", {hd}});
  }
  for (const auto& [name, dims] : required) {
    HYB_ASSIGN_OR_RETURN(m->params_[name], get(kPrefix + name, dims));
  }
  for (const auto& [name, dim] : std::vector<std::pair<std::string, int64_t>>{
           {"q_proj.bias", hd}, {"k_proj.bias", hd}, {"v_proj.bias", hd}, {"o_proj.bias", hidden}}) {
    if (has(kPrefix + name)) {
      HYB_ASSIGN_OR_RETURN(m->params_[name], get(kPrefix + name, {dim}));
    }
  }
  return m;
}

double LinearMixer::CalibrateOutputScale(const at::Tensor& x, const at::Tensor& y) {
  const at::Tensor sums = OutputScaleSums(x, y);
  if (!sums.defined()) return 1.0;
  const double num = sums[0].item<double>(), denom = sums[1].item<double>();
  const double c = denom > 0 ? num / denom : 1.0;
  SetOutputScale(c);
  return c;
}

at::Tensor LinearMixer::OutputScaleSums(const at::Tensor& x, const at::Tensor& y) {
  if (options_.type == LinearMixerType::kLinearElu) return at::Tensor();
  at::NoGradGuard no_grad;
  params_.at("o_norm.weight").fill_(1.0);
  const at::Tensor bias = P("o_proj.bias");
  at::Tensor unit = Forward(x, {}, nullptr).to(at::kDouble);  // output at c = 1
  at::Tensor target = y.to(at::kDouble);
  if (bias.defined()) {
    unit = unit - bias.to(at::kDouble);
    target = target - bias.to(at::kDouble);
  }
  return at::stack({(unit * target).sum(), unit.pow(2).sum()});
}

void LinearMixer::SetOutputScale(double c) {
  if (options_.type == LinearMixerType::kLinearElu) return;
  at::NoGradGuard no_grad;
  params_.at("o_norm.weight").fill_(c);
}

std::unique_ptr<MixerState> LinearMixer::NewState() const {
  return std::make_unique<LinearState>();
}

std::vector<std::pair<std::string, at::Tensor>> LinearMixer::NamedTensors() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& [name, t] : params_) out.emplace_back(kPrefix + name, t);
  return out;
}

std::vector<at::Tensor> LinearMixer::Parameters() const {
  std::vector<at::Tensor> out;
  for (const auto& [name, t] : params_) out.push_back(t);
  return out;
}

at::Tensor LinearMixer::Forward(const at::Tensor& x, const MixerContext& /*ctx*/,
                                MixerState* state) const {
  const int64_t b = x.size(0), t = x.size(1), h = shape_.num_heads, d = shape_.head_dim;
  LinearState* ls = nullptr;
  if (state != nullptr) {
    ls = dynamic_cast<LinearState*>(state);
    TORCH_CHECK(ls != nullptr, "linear mixer was given a state that is not a LinearState");
  }
  at::Tensor q = Project(x, "q_proj"), k = Project(x, "k_proj"), v = Project(x, "v_proj");
  if (options_.type == LinearMixerType::kGatedDeltaNet) {
    // Fused on CUDA (kernels/cuda/short_conv.cu), the ATen reference elsewhere.
    q = kernels::ShortConv(q, P("q_conv1d.weight"), ls ? &ls->conv_q : nullptr, options_.conv_silu);
    k = kernels::ShortConv(k, P("k_conv1d.weight"), ls ? &ls->conv_k : nullptr, options_.conv_silu);
    v = kernels::ShortConv(v, P("v_conv1d.weight"), ls ? &ls->conv_v : nullptr, options_.conv_silu);
  }
  // [B, T, H*D] -> [B, H, T, D], recurrences in fp32. In bf16 on CUDA, the chunked forms of GLA
  // and Gated DeltaNet get bf16 q/k/v instead (what the projections produced; Gated DeltaNet's q
  // and k L2-normalised in fp32 first): their CUDA kernels (forward and backward) accumulate and
  // keep their state in fp32 and take no fp32 q/k/v.
  const bool bf16_chunked = (options_.type == LinearMixerType::kGla ||
                             options_.type == LinearMixerType::kGatedDeltaNet) &&
                            t > 1 && x.is_cuda() && x.scalar_type() == at::kBFloat16 &&
                            (d == 64 || d == 128);
  auto heads = [&](const at::Tensor& u) {
    const at::Tensor r = u.view({b, t, h, -1}).transpose(1, 2);
    return bf16_chunked && r.scalar_type() == at::kBFloat16 ? r : r.to(at::kFloat);
  };
  q = heads(q);
  k = heads(k);
  v = heads(v);
  const at::Tensor initial = (ls != nullptr) ? ls->state : at::Tensor();
  const bool step = ls != nullptr && t == 1;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  kernels::LinearAttentionOutput r;
  if (options_.type == LinearMixerType::kGatedDeltaNet) {
    if (bf16_chunked) {
      q = L2Normalize(q.to(at::kFloat)).to(at::kBFloat16);
      k = L2Normalize(k.to(at::kFloat)).to(at::kBFloat16);
    } else {
      q = L2Normalize(q);
      k = L2Normalize(k);
    }
    const at::Tensor beta = at::sigmoid(Project(x, "b_proj")).transpose(1, 2).to(at::kFloat);
    const at::Tensor g = (-P("A_log").to(at::kFloat).exp() *
                          at::softplus(Project(x, "a_proj").to(at::kFloat) +
                                       P("dt_bias").to(at::kFloat)))
                             .transpose(1, 2);  // [B, H, T]
    const at::Tensor s0 =
        initial.defined() ? initial : at::zeros({b, h, d, d}, q.options().dtype(at::kFloat));
    r = step ? kernels::GatedDeltaStep(q.select(2, 0), k.select(2, 0), v.select(2, 0),
                                       g.select(2, 0), beta.select(2, 0), scale, s0)
             : kernels::GatedDeltaChunked(q, k, v, g, beta, scale, s0, options_.chunk_size);
  } else if (options_.type == LinearMixerType::kGla) {
    const at::Tensor gk = kernels::Linear(kernels::Linear(x, P("gk_proj.0.weight")), P("gk_proj.1.weight"),
                                     P("gk_proj.1.bias"));
    const at::Tensor g = heads(at::log_sigmoid(gk.to(at::kFloat)) / options_.gate_logit_normalizer);
    const at::Tensor s0 =
        initial.defined() ? initial : at::zeros({b, h, d, d}, q.options().dtype(at::kFloat));
    r = step ? kernels::GlaStep(q.select(2, 0), k.select(2, 0), v.select(2, 0), g.select(2, 0),
                                scale, s0)
             : kernels::GlaChunked(q, k, v, g, scale, s0, options_.chunk_size);
  } else {  // normalised linear attention, phi = elu + 1; the last value column is the normaliser
    q = at::elu(q) + 1;
    k = at::elu(k) + 1;
    const at::Tensor v1 = at::cat({v, at::ones({b, h, t, 1}, v.options())}, -1);
    const at::Tensor g = at::zeros_like(k);
    const at::Tensor s0 = initial.defined() ? initial : at::zeros({b, h, d, d + 1}, q.options());
    r = step ? kernels::GlaStep(q.select(2, 0), k.select(2, 0), v1.select(2, 0), g.select(2, 0),
                                1.0, s0)
             : kernels::GlaChunked(q, k, v1, g, 1.0, s0, options_.chunk_size);
  }
  if (ls != nullptr) {
    if (ls->state.defined() && ls->state.sizes() == r.final_state.sizes() &&
        ls->state.scalar_type() == r.final_state.scalar_type()) {
      ls->state.copy_(r.final_state);  // in place: a captured decoding step keeps its buffers
    } else {
      ls->state = r.final_state;
    }
  }
  at::Tensor o = step ? r.output.unsqueeze(2) : r.output;  // [B, H, T, V]
  if (options_.type == LinearMixerType::kLinearElu) {
    o = o.narrow(-1, 0, d) / (o.narrow(-1, d, 1) + 1e-6);
  }
  o = o.transpose(1, 2).to(x.scalar_type());  // [B, T, H, D]
  if (options_.type != LinearMixerType::kLinearElu) {
    o = kernels::RmsNormGated(o, P("o_norm.weight"), Project(x, "g_proj"), options_.norm_eps);
  }
  return kernels::Linear(o.reshape({b, t, h * d}), P("o_proj.weight"), P("o_proj.bias"));
}

}  // namespace hyb::worker
