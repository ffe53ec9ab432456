#include "hyb/worker/rope.h"

#include <torch/torch.h>

#include <cmath>

#include "hyb/kernels/elementwise.h"

namespace hyb::worker {
namespace {

// base ** (arange(0, dim, 2) / dim), fp32 as transformers computes it.
at::Tensor PosFreqs(double base, int64_t dim) {
  const at::Tensor exponents = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
  return at::pow(base, exponents);
}

double YarnMscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

}  // namespace

StatusOr<RotaryEmbedding> RotaryEmbedding::Create(const RopeConfig& rope, int64_t head_dim) {
  if (head_dim <= 0 || head_dim % 2 != 0) {
    return InvalidArgument("rotary embedding needs a positive even head_dim, got " +
                           std::to_string(head_dim));
  }
  if (!(rope.theta > 1.0)) return InvalidArgument("rope_theta must be > 1");
  RotaryEmbedding out;
  const int64_t dim = head_dim;
  const at::Tensor inv_freq = 1.0 / PosFreqs(rope.theta, dim);  // [dim/2]
  switch (rope.type) {
    case RopeType::kDefault:
      out.inv_freq_ = inv_freq;
      break;
    case RopeType::kLinear:
      out.inv_freq_ = inv_freq / rope.factor;
      break;
    case RopeType::kLlama3: {
      const double old_len = static_cast<double>(rope.original_max_position_embeddings);
      const double low_freq_wavelen = old_len / rope.low_freq_factor;
      const double high_freq_wavelen = old_len / rope.high_freq_factor;
      const at::Tensor wavelen = 2.0 * M_PI / inv_freq;
      at::Tensor f = at::where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq);
      const at::Tensor smooth = (old_len / wavelen - rope.low_freq_factor) /
                                (rope.high_freq_factor - rope.low_freq_factor);
      const at::Tensor smoothed = (1 - smooth) * f / rope.factor + smooth * f;
      const at::Tensor is_medium =
          wavelen.lt(high_freq_wavelen).logical_not().logical_and(
              wavelen.gt(low_freq_wavelen).logical_not());
      out.inv_freq_ = at::where(is_medium, smoothed, f);
      break;
    }
    case RopeType::kYarn: {
      const double base = rope.theta;
      const double factor = rope.factor;
      const double orig = static_cast<double>(rope.original_max_position_embeddings);
      auto correction_dim = [&](double rotations) {
        return (static_cast<double>(dim) * std::log(orig / (rotations * 2.0 * M_PI))) /
               (2.0 * std::log(base));
      };
      double low = correction_dim(rope.beta_fast);
      double high = correction_dim(rope.beta_slow);
      if (rope.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(dim - 1));
      if (low == high) high += 0.001;
      const at::Tensor ramp =
          at::clamp((at::arange(dim / 2, at::kFloat) - low) / (high - low), 0, 1);
      const at::Tensor pos_freqs = PosFreqs(base, dim);
      const at::Tensor extrapolation = 1.0 / pos_freqs;
      const at::Tensor interpolation = 1.0 / (factor * pos_freqs);
      const at::Tensor extrapolation_factor = 1 - ramp;
      out.inv_freq_ = interpolation * (1 - extrapolation_factor) +
                      extrapolation * extrapolation_factor;
      if (rope.attention_factor) {
        out.attention_scaling_ = *rope.attention_factor;
      } else if (rope.mscale && rope.mscale_all_dim && *rope.mscale != 0 &&
                 *rope.mscale_all_dim != 0) {
        out.attention_scaling_ =
            YarnMscale(factor, *rope.mscale) / YarnMscale(factor, *rope.mscale_all_dim);
      } else {
        out.attention_scaling_ = YarnMscale(factor, 1.0);
      }
      break;
    }
  }
  out.inv_freq_ = out.inv_freq_.to(at::kFloat).contiguous();
  return out;
}

std::pair<at::Tensor, at::Tensor> RotaryEmbedding::CosSin(int64_t offset, int64_t length,
                                                          const at::Device& device,
                                                          at::ScalarType dtype) const {
  const at::Tensor pos =
      at::arange(offset, offset + length, at::TensorOptions().dtype(at::kLong).device(device))
          .to(at::kFloat);
  const at::Tensor freqs = at::outer(pos, inv_freq_.to(device));  // [T, D/2] fp32
  const at::Tensor emb = at::cat({freqs, freqs}, -1);             // [T, D]
  at::Tensor cos = emb.cos(), sin = emb.sin();
  if (attention_scaling_ != 1.0) {
    cos = cos * attention_scaling_;
    sin = sin * attention_scaling_;
  }
  return {cos.to(dtype), sin.to(dtype)};
}

at::Tensor ApplyRotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return kernels::Rotary(x, cos, sin);  // one fused pass on CUDA, bit-identical to the reference
}

}  // namespace hyb::worker
