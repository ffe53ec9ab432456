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
  if (length_ > 0) {
    c->k_buf_ = k().clone();
    c->v_buf_ = v().clone();
    c->length_ = length_;
  }
  c->reserve_ = reserve_;
  return c;
}

int64_t KvCache::Bytes() const {
  if (!k_buf_.defined()) return 0;
  return (k_buf_.numel() + v_buf_.numel()) * static_cast<int64_t>(k_buf_.element_size());
}

void KvCache::Reserve(int64_t capacity) {
  reserve_ = std::max(reserve_, capacity);
  if (!k_buf_.defined() || k_buf_.size(2) >= reserve_) return;
  at::Tensor nk = at::zeros({k_buf_.size(0), k_buf_.size(1), reserve_, k_buf_.size(3)},
                            k_buf_.options());
  at::Tensor nv = at::zeros({v_buf_.size(0), v_buf_.size(1), reserve_, v_buf_.size(3)},
                            v_buf_.options());
  nk.narrow(2, 0, length_).copy_(k());
  nv.narrow(2, 0, length_).copy_(v());
  k_buf_ = nk;
  v_buf_ = nv;
}

at::Tensor KvCache::k() const { return k_buf_.defined() ? k_buf_.narrow(2, 0, length_) : k_buf_; }
at::Tensor KvCache::v() const { return v_buf_.defined() ? v_buf_.narrow(2, 0, length_) : v_buf_; }

std::pair<at::Tensor, at::Tensor> KvCache::Append(const at::Tensor& k, const at::Tensor& v) {
  const int64_t t = k.size(2), need = length_ + t;
  if (!k_buf_.defined() || need > k_buf_.size(2) || k_buf_.size(0) != k.size(0) ||
      k_buf_.scalar_type() != k.scalar_type() || k_buf_.device() != k.device()) {
    TORCH_CHECK(length_ == 0 || (k_buf_.size(0) == k.size(0) && k_buf_.size(1) == k.size(1) &&
                                 k_buf_.size(3) == k.size(3)),
                "KV cache holds [", k_buf_.sizes(), "] but the call appends [", k.sizes(), "]");
    // Room for the reserved length; past it (or without one), exactly the first call's tokens
    // and then twice what is needed (amortised O(1) appends).
    const int64_t cap = need <= reserve_ ? reserve_ : length_ == 0 ? need : 2 * need;
    at::Tensor nk = at::zeros({k.size(0), k.size(1), cap, k.size(3)}, k.options());
    at::Tensor nv = at::zeros({v.size(0), v.size(1), cap, v.size(3)}, v.options());
    if (length_ > 0) {
      nk.narrow(2, 0, length_).copy_(this->k());
      nv.narrow(2, 0, length_).copy_(this->v());
    }
    k_buf_ = nk;
    v_buf_ = nv;
  }
  k_buf_.narrow(2, length_, t).copy_(k);
  v_buf_.narrow(2, length_, t).copy_(v);
  length_ = need;
  return {this->k(), this->v()};
}

void KvCache::WriteAt(const at::Tensor& position, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(k_buf_.defined() && k.size(2) == 1 && k_buf_.size(0) == k.size(0),
              "KV cache: a positioned write needs reserved buffers and one token");
  k_buf_.index_copy_(2, position, k);
  v_buf_.index_copy_(2, position, v);
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
  kernels::AttentionOptions options;
  options.sliding_window = shape_.sliding_window;
  options.scale = 1.0 / std::sqrt(static_cast<double>(d));
  at::Tensor o;  // [B, H, T, D]
  if (state != nullptr) {
    auto* cache = dynamic_cast<KvCache*>(state);
    TORCH_CHECK(cache != nullptr, "softmax attention was given a state that is not a KvCache");
    if (ctx.position.defined()) {
      // Positioned step (a captured graph replays it): write at the device position and attend
      // over the buffer up to it (and inside the sliding window), the position read on the
      // device.
      TORCH_CHECK(t == 1, "a positioned attention step takes one token, got ", t);
      cache->WriteAt(ctx.position, k, v);
      options.key_end = ctx.position;
      o = kernels::SoftmaxAttention(q, cache->key_buffer(), cache->value_buffer(), options);
    } else {
      TORCH_CHECK(cache->length() == ctx.position_offset, "KV cache holds ", cache->length(),
                  " tokens but the call starts at position ", ctx.position_offset);
      options.q_offset = cache->length();
      auto [keys, values] = cache->Append(k, v);
      o = kernels::SoftmaxAttention(q, keys, values, options);
    }
  } else {
    o = kernels::SoftmaxAttention(q, k, v, options);
  }
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
