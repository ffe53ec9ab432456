// RMSNorm with the numerics of transformers' LlamaRMSNorm: normalise in fp32, cast back to the
// input dtype, then multiply by the weight.
#pragma once

#include <ATen/core/Tensor.h>

namespace hyb::kernels {

// x: [..., D]; weight: [D]. Returns x's shape, dtype promoted with weight's. Dispatches to the
// fused CUDA kernel for CUDA tensors that need no gradient (HYB_CUDA builds), else the reference.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);

// The LibTorch-ops implementation: always built, the oracle for the CUDA kernel.
at::Tensor RmsNormReference(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace hyb::kernels
