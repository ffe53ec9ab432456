// CUDA entry points of the fused elementwise kernels (kernels/cuda/fused_elementwise.cu). Only in
// HYB_CUDA builds; kernels::Rotary and kernels::SiluMul (elementwise.h) are the dispatch points.
#pragma once

#include <ATen/core/Tensor.h>

namespace hyb::kernels::cuda {

// What the kernels take (elementwise.h); gradients are the caller's concern.
bool RotarySupported(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor Rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

bool SiluMulSupported(const at::Tensor& gate, const at::Tensor& up);
at::Tensor SiluMul(const at::Tensor& gate, const at::Tensor& up);

}  // namespace hyb::kernels::cuda
