// Softmax self-attention as a TokenMixer: the teacher's layer (llama, qwen2, qwen3, mistral).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>

#include "hyb/worker/storage_types.h"
#include "hyb/worker/token_mixer.h"

namespace hyb::worker {

struct AttentionWeights {
  at::Tensor q_proj, k_proj, v_proj, o_proj;  // [out, in]
  at::Tensor q_bias, k_bias, v_bias, o_bias;  // [out] or undefined
  at::Tensor q_norm, k_norm;                  // [head_dim] (qwen3) or undefined
};

// Keys and values of all tokens seen so far: [B, Hkv, T, head_dim] each.
class KvCache : public MixerState {
 public:
  int64_t Bytes() const override;
  std::unique_ptr<MixerState> Clone() const override;
  int64_t length() const { return k.defined() ? k.size(2) : 0; }
  at::Tensor k, v;
};

struct AttentionShape {
  int64_t hidden_size = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t sliding_window = 0;  // 0: full causal
  double rms_norm_eps = 1e-6;  // for q/k norm
};

class SoftmaxAttentionMixer : public TokenMixer {
 public:
  SoftmaxAttentionMixer(AttentionShape shape, AttentionWeights weights)
      : shape_(shape), w_(std::move(weights)) {}

  std::string LayerType() const override { return "full_attention"; }
  at::Tensor Forward(const at::Tensor& x, const MixerContext& ctx,
                     MixerState* state) const override;
  std::unique_ptr<MixerState> NewState() const override { return std::make_unique<KvCache>(); }
  std::vector<std::pair<std::string, at::Tensor>> NamedTensors() const override;

  const AttentionShape& shape() const { return shape_; }
  const AttentionWeights& weights() const { return w_; }

 private:
  AttentionShape shape_;
  AttentionWeights w_;
};

}  // namespace hyb::worker
