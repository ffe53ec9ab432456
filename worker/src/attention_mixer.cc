#include "hyb/worker/attention_mixer.h"

#include <torch/torch.h>

#include <cmath>

#include "hyb/kernels/linear.h"
#include "hyb/kernels/attention.h"
#include "hyb/kernels/norm.h"
#include "hyb/worker/rope.h"

namespace hyb::worker {

std::unique_ptr<MixerState> KvCache::Clone() const {
  auto c = std::make_unique<KvCache>();
  if (k.defined()) {
    c->k = k.clone();
    c->v = v.clone();
  }
  return c;
}

int64_t KvCache::Bytes() const {
  if (!k.defined()) return 0;
  return (k.numel() + v.numel()) * static_cast<int64_t>(k.element_size());
}

at::Tensor SoftmaxAttentionMixer::Forward(const at::Tensor& x, const MixerContext& ctx,
                                          MixerState* state) const {
  const int64_t b = x.size(0), t = x.size(1), d = shape_.head_dim;
  // [B, T, H, D] -> optional per-head norm -> [B, H, T, D] -> rotary.
  at::Tensor q = kernels::Linear(x, w_.q_proj, w_.q_bias).view({b, t, shape_.num_heads, d});
  at::Tensor k = kernels::Linear(x, w_.k_proj, w_.k_bias).view({b, t, shape_.num_kv_heads, d});
  at::Tensor v = kernels::Linear(x, w_.v_proj, w_.v_bias).view({b, t, shape_.num_kv_heads, d});
  if (w_.q_norm.defined()) {
    q = kernels::RmsNorm(q, w_.q_norm, shape_.rms_norm_eps);
    k = kernels::RmsNorm(k, w_.k_norm, shape_.rms_norm_eps);
  }
  q = ApplyRotary(q.transpose(1, 2), ctx.cos, ctx.sin);
  k = ApplyRotary(k.transpose(1, 2), ctx.cos, ctx.sin);
  v = v.transpose(1, 2);
  int64_t offset = 0;
  if (state != nullptr) {
    auto* cache = dynamic_cast<KvCache*>(state);
    TORCH_CHECK(cache != nullptr, "softmax attention was given a state that is not a KvCache");
    TORCH_CHECK(cache->length() == ctx.position_offset, "KV cache holds ", cache->length(),
                " tokens but the call starts at position ", ctx.position_offset);
    offset = cache->length();
    if (offset > 0) {
      k = at::cat({cache->k, k}, 2);
      v = at::cat({cache->v, v}, 2);
    }
    cache->k = k;
    cache->v = v;
  }
  kernels::AttentionOptions options;
  options.q_offset = offset;
  options.sliding_window = shape_.sliding_window;
  options.scale = 1.0 / std::sqrt(static_cast<double>(d));
  const at::Tensor o = kernels::SoftmaxAttention(q, k, v, options);  // [B, H, T, D]
  return kernels::Linear(o.transpose(1, 2).reshape({b, t, shape_.num_heads * d}), w_.o_proj,
                    w_.o_bias);
}

std::vector<std::pair<std::string, at::Tensor>> SoftmaxAttentionMixer::NamedTensors() const {
  std::vector<std::pair<std::string, at::Tensor>> out = {
      {"self_attn.q_proj.weight", w_.q_proj},
      {"self_attn.k_proj.weight", w_.k_proj},
      {"self_attn.v_proj.weight", w_.v_proj},
      {"self_attn.o_proj.weight", w_.o_proj},
  };
  auto add = [&](const char* name, const at::Tensor& t) {
    if (t.defined()) out.emplace_back(name, t);
  };
  add("self_attn.q_proj.bias", w_.q_bias);
  add("self_attn.k_proj.bias", w_.k_bias);
  add("self_attn.v_proj.bias", w_.v_bias);
  add("self_attn.o_proj.bias", w_.o_bias);
  add("self_attn.q_norm.weight", w_.q_norm);
  add("self_attn.k_norm.weight", w_.k_norm);
  return out;
}

}  // namespace hyb::worker
