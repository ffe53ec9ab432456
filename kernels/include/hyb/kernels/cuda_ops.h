// Entry points of the CUDA kernels (defined only when built with HYB_CUDA=ON; callers guard
// with HYB_WITH_CUDA). Each checks types and shapes and runs on the current stream.
#pragma once

#include <ATen/core/Tensor.h>

namespace hyb::kernels::cuda {

// True when RmsNorm below handles these tensors (same CUDA device, fp32/bf16/fp16, same dtype).
bool RmsNormSupported(const at::Tensor& x, const at::Tensor& weight);
// Forward only (no autograd). Same numerics as kernels::RmsNorm's reference path.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);
// Threads per block the RMSNorm kernel uses for rows of `cols` elements.
int RmsNormBlockSize(int64_t cols);

}  // namespace hyb::kernels::cuda
