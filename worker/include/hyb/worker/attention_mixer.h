// Softmax self-attention as a TokenMixer: the teacher's layer (llama, qwen2, qwen3, mistral).
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <utility>

#include "hyb/worker/storage_types.h"
#include "hyb/worker/token_mixer.h"

namespace hyb::worker {

struct AttentionWeights {
  at::Tensor q_proj, k_proj, v_proj, o_proj;  // [out, in]
  at::Tensor q_bias, k_bias, v_bias, o_bias;  // [out] or undefined
  at::Tensor q_norm, k_norm;                  // [head_dim] (qwen3) or undefined
};

// Keys and values of all tokens seen so far, in buffers of `capacity` tokens
// ([B, Hkv, capacity, head_dim] each) that grow geometrically when a call needs more room, so a
// decoding step writes one position instead of copying the whole cache. Reserve() sizes them for
// a known length up front (then they never move: what a captured CUDA graph needs).
class KvCache : public MixerState {
 public:
  int64_t Bytes() const override;
  std::unique_ptr<MixerState> Clone() const override;  // tight: capacity = length
  // Room for `capacity` tokens: buffers allocated later get it, smaller existing ones move.
  void Reserve(int64_t capacity);
  int64_t length() const { return length_; }
  int64_t capacity() const { return k_buf_.defined() ? k_buf_.size(2) : 0; }
  // Appends k, v [B, Hkv, T, D] at the current length and returns the keys and values of every
  // token so far (views of the buffers).
  std::pair<at::Tensor, at::Tensor> Append(const at::Tensor& k, const at::Tensor& v);
  // Writes one token's k, v [B, Hkv, 1, D] at the device position `position` (int64 [1]) of the
  // buffers, which must already hold room for it; the host length is not advanced (Advance).
  void WriteAt(const at::Tensor& position, const at::Tensor& k, const at::Tensor& v);
  void Advance(int64_t n) { length_ += n; }
  // The whole buffers (every position up to capacity()).
  const at::Tensor& key_buffer() const { return k_buf_; }
  const at::Tensor& value_buffer() const { return v_buf_; }
  // The cached keys and values [B, Hkv, length, D] (views).
  at::Tensor k() const;
  at::Tensor v() const;

 private:
  at::Tensor k_buf_, v_buf_;
  int64_t length_ = 0;
  int64_t reserve_ = 0;
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
