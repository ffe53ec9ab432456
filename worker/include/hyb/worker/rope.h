// Rotary position embeddings with transformers' numerics: inverse frequencies and the
// attention scaling computed in fp32 from the RopeConfig, cos/sin in fp32 then cast.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>

#include "hyb/common/status.h"
#include "hyb/worker/storage_types.h"

namespace hyb::worker {

class RotaryEmbedding {
 public:
  // InvalidArgument if the settings cannot produce frequencies (e.g. odd head_dim).
  static StatusOr<RotaryEmbedding> Create(const RopeConfig& rope, int64_t head_dim);

  // [head_dim / 2] fp32, on the CPU unless moved by PlaceOn.
  const at::Tensor& inv_freq() const { return inv_freq_; }
  // Keeps the frequencies on `device`, where CosSin computes (no host-to-device copy per call).
  void PlaceOn(const at::Device& device) { inv_freq_ = inv_freq_.to(device); }
  // Multiplies cos and sin (yarn's attention factor; 1 otherwise).
  double attention_scaling() const { return attention_scaling_; }

  // cos and sin for positions offset .. offset+length-1: each [length, head_dim] in `dtype` on
  // `device` (computed in fp32 on that device).
  std::pair<at::Tensor, at::Tensor> CosSin(int64_t offset, int64_t length, const at::Device& device,
                                           at::ScalarType dtype) const;

 private:
  at::Tensor inv_freq_;
  double attention_scaling_ = 1.0;
};

// x: [B, H, T, D]; cos, sin: [T, D]. Rotates the two halves of D (transformers' rotate_half).
at::Tensor ApplyRotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace hyb::worker
