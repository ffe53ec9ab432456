// RMSNorm with the numerics of transformers' LlamaRMSNorm: normalise in fp32, cast back to the
// input dtype, then multiply by the weight. And the gated RMSNorm of the linear-attention
// mixers' output (fla's FusedRMSNormGated with silu).
#pragma once

#include <ATen/core/Tensor.h>

namespace hyb::kernels {

// x: [..., D]; weight: [D]. Returns x's shape, dtype promoted with weight's. On CUDA (HYB_CUDA
// builds) with x and weight of one dtype: the fused kernels, through an autograd function with
// a CUDA backward when a gradient is needed (D a multiple of 16 bytes' worth of elements and at
// most 8192; else the reference). Elsewhere the reference.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);

// The LibTorch-ops implementation: always built, the oracle for the CUDA kernels.
at::Tensor RmsNormReference(const at::Tensor& x, const at::Tensor& weight, double eps);

// RmsNorm(x, weight, eps) * silu(gate), the norm over the last dim D per row:
//   out = (weight * (x * rsqrt(mean(x^2, -1) + eps)).to(x.dtype)) * silu(gate)
// x: [..., D] (any strides); weight: [D]; gate: x.numel() elements of any shape, read as
// gate.reshape(x.sizes()) (e.g. x a [B, T, H, D] view and gate the [B, T, H * D] projection).
// Returns x's shape, dtype promoted over x, weight and gate; gradients flow to all three (the
// gate's in its own shape). On CUDA (HYB_CUDA builds) with all three of one dtype (fp32, bf16,
// fp16) and D a multiple of 16 bytes' worth of elements, at most 8192: the fused kernels of
// kernels/cuda/rms_norm_gated.cu, forward and backward; else the reference.
at::Tensor RmsNormGated(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& gate,
                        double eps);

// The LibTorch-ops implementation, RmsNormReference(x, weight, eps) * at::silu(gate reshaped):
// the same roundings as the two ops it replaces. Always built; autograd through the ops.
at::Tensor RmsNormGatedReference(const at::Tensor& x, const at::Tensor& weight,
                                 const at::Tensor& gate, double eps);

}  // namespace hyb::kernels
