// Elementwise pieces of the decoder runtime that run as one fused CUDA pass where they can: the
// rotary embedding of queries and keys, and the gated MLP's silu(gate) * up. Each CUDA kernel
// rounds where the LibTorch composition does, so its output is bit-identical to the reference's.
#pragma once

#include <ATen/core/Tensor.h>

namespace hyb::kernels {

// x: [B, H, T, D]; cos, sin: [T, D]. Returns x * cos + rotate_half(x) * sin, rotate_half(x) =
// cat(-x[..., D/2:], x[..., :D/2]) (transformers' apply_rotary_pos_emb), in x's layout.
// On CUDA (HYB_CUDA builds) without a gradient, with bf16 x, cos and sin on one device, x's last
// dim contiguous and its other strides even, cos and sin contiguous [T, D], D a multiple of 4:
// kernels/cuda/fused_elementwise.cu; else RotaryReference.
at::Tensor Rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor RotaryReference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// silu(gate) * up for tensors of one shape. On CUDA without a gradient, both bf16, contiguous and
// on one device: the fused kernel; else SiluMulReference (at::silu(gate) * up).
at::Tensor SiluMul(const at::Tensor& gate, const at::Tensor& up);
at::Tensor SiluMulReference(const at::Tensor& gate, const at::Tensor& up);

}  // namespace hyb::kernels
