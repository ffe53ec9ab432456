// Linear-attention token mixers that replace a softmax attention layer: Gated DeltaNet, GLA and
// normalised linear attention with an elu+1 feature map. Same hidden size as the teacher layer;
// no rotary embedding (positions enter through the recurrence and, for Gated DeltaNet, the short
// convolutions).
//
// Head layout: the teacher's query heads are kept (H = num_attention_heads, head dim D); grouped
// key/value heads (GQA) are *expanded*, each query head getting its own copy of its group's key
// and value projection. A linear mixer's state is per head ([D, D]) and its gates (decay, write
// strength) are per head, so heads sharing one k/v projection would still hold different states;
// expanding lets distillation specialise each head's keys and values to its own gates and costs
// only (H - Hkv) * D * hidden extra parameters per projection. Transferred weights start equal
// within a group, so the transferred map is unchanged by the expansion.
//
// Tensor names (relative to "model.layers.{i}.", all under "linear_attn."):
//   q_proj.weight [H*D, hidden], k_proj.weight, v_proj.weight  (+ .bias when the teacher had
//   q/k/v biases), o_proj.weight [hidden, H*D] (+ .bias)
//   gated_deltanet: q_conv1d.weight, k_conv1d.weight, v_conv1d.weight [H*D, conv_size];
//     b_proj.weight [H, hidden] (write strength beta = sigmoid); a_proj.weight [H, hidden],
//     A_log [H], dt_bias [H] (log decay g = -exp(A_log) * softplus(a_proj x + dt_bias));
//     g_proj.weight [H*D, hidden], g_proj.bias [H*D] (output gate, SiLU); o_norm.weight [D]
//   gla: gk_proj.0.weight [rank, hidden], gk_proj.1.weight [H*D, rank], gk_proj.1.bias [H*D]
//     (log decay = logsigmoid(gk_proj(x)) / gate_logit_normalizer); g_proj.*, o_norm.weight
//   linear_elu: the projections only.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "hyb/common/status.h"
#include "hyb/worker/attention_mixer.h"
#include "hyb/worker/storage_types.h"
#include "hyb/worker/token_mixer.h"

namespace hyb::worker {

// Recurrent state of a linear layer: [B, H, D, D] (D + 1 value columns for linear_elu, the last
// holding the normaliser) plus, for Gated DeltaNet, the last conv_size - 1 inputs of each
// convolution ([B, H*D, conv_size - 1]).
class LinearState : public MixerState {
 public:
  int64_t Bytes() const override;
  std::unique_ptr<MixerState> Clone() const override;
  at::Tensor state;
  at::Tensor conv_q, conv_k, conv_v;
};

class LinearMixer : public TokenMixer {
 public:
  // Initialised from a teacher attention layer (weights are copied, never aliased): Q, K, V, O
  // and their biases transferred (K/V expanded over each GQA group), new parameters set so the
  // mixer starts near the transferred map: identity convolutions, output gate ~1, slow decays
  // spread over the heads, norm weights 1.
  static std::shared_ptr<LinearMixer> Transfer(const AttentionShape& shape,
                                               const AttentionWeights& teacher,
                                               const LinearMixerOptions& options);
  // The same architecture with q/k/v/o drawn at random (N(0, 1/fan_in)), everything else as in
  // Transfer: the baseline that weight transfer is measured against.
  static std::shared_ptr<LinearMixer> Random(const AttentionShape& shape,
                                             const LinearMixerOptions& options, bool qkv_bias,
                                             bool o_bias, uint64_t seed, at::ScalarType dtype,
                                             const at::Device& device);
  // From stored tensors. `get(name, shape)` returns the tensor with that layer-relative name
  // (e.g. "linear_attn.q_proj.weight") or an error; `has(name)` tells whether an optional one
  // (biases) exists.
  using TensorGetter = std::function<StatusOr<at::Tensor>(const std::string&, std::vector<int64_t>)>;
  static StatusOr<std::shared_ptr<LinearMixer>> FromTensors(
      const AttentionShape& shape, const LinearMixerOptions& options, const TensorGetter& get,
      const std::function<bool(const std::string&)>& has);

  // Data-dependent finish of the transfer: Gated DeltaNet and GLA normalise each head's output
  // (RMSNorm), so their transferred output has unit scale where the teacher's attention output
  // is usually much smaller. Given the teacher layer's input x [B, T, hidden] and output y, sets
  // o_norm.weight to the scalar c minimising ||mixer(x) - y||^2 (closed form; the output is affine
  // in c), which is never worse than outputting the o_proj bias alone. Returns c. linear_elu
  // outputs a convex combination of values as attention does and is left unchanged (returns 1).
  // Call without gradient tracking on the mixer's tensors.
  double CalibrateOutputScale(const at::Tensor& x, const at::Tensor& y);
  // The two sums the closed form divides, sum(u * (y - bias)) and sum(u * u) with u the output
  // at c = 1 minus the bias, as a double tensor [2] on the mixer's device: what data-parallel
  // replicas add up before SetOutputScale(sums[0] / sums[1]). Leaves o_norm.weight at 1.
  // Undefined for linear_elu (nothing to calibrate).
  at::Tensor OutputScaleSums(const at::Tensor& x, const at::Tensor& y);
  void SetOutputScale(double c);

  std::string LayerType() const override { return "linear_attention"; }
  at::Tensor Forward(const at::Tensor& x, const MixerContext& ctx,
                     MixerState* state) const override;
  std::unique_ptr<MixerState> NewState() const override;
  std::vector<std::pair<std::string, at::Tensor>> NamedTensors() const override;

  // Every tensor of the mixer (all are trainable). Setting requires_grad on them is the
  // caller's business.
  std::vector<at::Tensor> Parameters() const;
  const LinearMixerOptions& options() const { return options_; }
  const AttentionShape& shape() const { return shape_; }

 private:
  LinearMixer(AttentionShape shape, LinearMixerOptions options)
      : shape_(shape), options_(options) {}
  const at::Tensor& P(const std::string& name) const;  // undefined tensor if absent
  at::Tensor Project(const at::Tensor& x, const std::string& name) const;
  void InitNewParameters(at::ScalarType dtype, const at::Device& device);

  AttentionShape shape_;
  LinearMixerOptions options_;
  std::map<std::string, at::Tensor> params_;  // layer-relative name without "linear_attn."
};

}  // namespace hyb::worker
