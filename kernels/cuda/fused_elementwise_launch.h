// Torch-free launchers of the fused elementwise kernels (fused_elementwise.cu): the teacher's
// rotary embedding and its MLP's silu(gate) * up, each one pass over HBM instead of the five
// (rotary) or two (silu, mul) passes of the LibTorch composition, with the same bf16 roundings.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hyb::kernels::cuda {

// x: bf16 [B, H, T, D] at element strides (sb, sh, st, 1); out: bf16, the same sizes at its own
// strides (ob, oh, ot, 1); cos, sin: bf16 [T, D], contiguous. D even, D / 2 even.
struct RotaryParams {
  const void* x;
  const void* cos;
  const void* sin;
  void* out;
  int64_t batch, heads, tokens, dim;
  int64_t sb, sh, st;
  int64_t ob, oh, ot;
};
cudaError_t LaunchRotaryBf16(const RotaryParams& p, cudaStream_t stream);

// out[i] = bf16(bf16(silu(gate[i])) * up[i]) for i < n; all three bf16, contiguous.
cudaError_t LaunchSiluMulBf16(const void* gate, const void* up, void* out, int64_t n,
                              cudaStream_t stream);

}  // namespace hyb::kernels::cuda
