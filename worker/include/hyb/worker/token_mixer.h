// The per-layer token mixer seam: softmax attention in the teacher, linear-attention mixers in a
// hybrid. The decoder calls Forward() on the normalised hidden states of each layer and adds the
// result to the residual stream.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace hyb::worker {

// Per-layer decoding state (a KV cache, or a recurrent state). Owned by a DecodeState.
class MixerState {
 public:
  virtual ~MixerState() = default;
  // Bytes held on the device, for memory accounting.
  virtual int64_t Bytes() const = 0;
  // An independent copy (tensors cloned): a cached prefill state reused by several candidates.
  virtual std::unique_ptr<MixerState> Clone() const = 0;
};

// What a mixer sees besides its input for one forward call.
struct MixerContext {
  int64_t position_offset = 0;  // absolute position of the first of the T tokens
  at::Tensor cos;               // [T, head_dim] rotary tables for those positions
  at::Tensor sin;               // [T, head_dim]
  // Positioned decoding step (T = 1; what a captured CUDA graph replays): int64 [1] on the
  // model's device, the token's absolute position. Mixers then update their states in place at
  // that position without reading host-side lengths (position_offset is not meaningful) and
  // without allocating buffers that persist beyond the call.
  at::Tensor position;
};

class TokenMixer {
 public:
  virtual ~TokenMixer() = default;

  // "full_attention" or "linear_attention" (the names of transformers' hybrid layer_types).
  virtual std::string LayerType() const = 0;

  // x: [B, T, hidden] (after the layer's input norm). Returns [B, T, hidden] (before the residual
  // add). With `state` the call continues a sequence whose earlier tokens the state summarises,
  // and updates it (a state that already holds tensors of the right shape is updated in place);
  // without, the T tokens are a whole sequence. Throws c10::Error on shape errors (callers
  // convert at their boundary). Not thread-safe on one state.
  virtual at::Tensor Forward(const at::Tensor& x, const MixerContext& ctx,
                             MixerState* state) const = 0;

  // A fresh, empty state for incremental decoding.
  virtual std::unique_ptr<MixerState> NewState() const = 0;

  // Trainable and frozen tensors of this mixer with names relative to the layer
  // (e.g. "self_attn.q_proj.weight").
  virtual std::vector<std::pair<std::string, at::Tensor>> NamedTensors() const = 0;
};

}  // namespace hyb::worker
