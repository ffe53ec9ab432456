// Entry points of the vectorised CUDA RMSNorm kernels with an optional silu gate, forward and
// backward (kernels/cuda/rms_norm_gated.cu; defined only when built with HYB_CUDA=ON: callers
// guard with HYB_WITH_CUDA). Each checks its inputs (c10::Error when unsupported) and runs on the
// current stream. The forward-only, any-length RMSNorm kernel stays in cuda_ops.h.
//
// The function, for x [..., D], weight [D] and gate with x's element count:
//   RmsNormGated(x, weight, gate) = RmsNorm(x, weight) * silu(gate.reshape(x.sizes()))
// with the roundings of kernels::RmsNormGatedReference in the forward (an undefined gate: plain
// RmsNorm). The output is contiguous with x's sizes and dtype.
#pragma once

#include <ATen/core/Tensor.h>

namespace hyb::kernels::cuda {

// True when the functions below take these tensors: x (at least 1 dim), weight [D] and gate
// (undefined, or x.numel() elements) on one CUDA device, all fp32, bf16 or fp16 alike, and D a
// multiple of 4 (fp32) or 8 (bf16, fp16) elements, at most 8192.
//
// Strides: x is read in place when its last dim has stride 1, its other dims collapse to at most
// three (a [B, T, H, D] transpose of a contiguous [B, H, T, D] does), and its data pointer and
// row strides are multiples of 16 bytes; otherwise a contiguous copy is read. The gate and the
// incoming gradient are read through .contiguous() (free when they already are), and copied
// again when their data pointer is not 16-byte aligned.
bool RmsNormGatedSupported(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& gate);

// The forward, without autograd. gate undefined: plain RmsNorm.
at::Tensor RmsNormGated(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& gate,
                        double eps);

// The same as an autograd function whose backward runs the CUDA backward kernel: gradients for
// x (x's sizes), weight and gate (gate's sizes), each in its input's dtype; the weight gradient
// is summed over the rows in fp32, deterministically. No double backward.
at::Tensor RmsNormGatedWithGrad(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& gate, double eps);
// Plain RmsNorm with the same backward (no gate).
at::Tensor RmsNormWithGrad(const at::Tensor& x, const at::Tensor& weight, double eps);

// The backward alone (what the autograd function runs), for tests and benchmarks. d_y: x's
// element count. d_x has x's sizes, d_gate the gate's (undefined without a gate), d_weight [D].
struct RmsNormGatedGradients {
  at::Tensor d_x, d_weight, d_gate;
};
RmsNormGatedGradients RmsNormGatedBackward(const at::Tensor& x, const at::Tensor& weight,
                                           const at::Tensor& gate, const at::Tensor& d_y,
                                           double eps);

}  // namespace hyb::kernels::cuda
