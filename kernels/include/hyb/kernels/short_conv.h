// The depthwise causal short convolution of the linear-attention mixers (Gated DeltaNet's
// q/k/v_conv1d, fla's ShortConvolution), with an optional silu and the decoding cache.
#pragma once

#include <ATen/core/Tensor.h>

namespace hyb::kernels {

// u: [B, T, C] (any strides); w: [C, K], one filter of K taps per channel; cache: nullptr, or the
// previous K-1 inputs of each sequence, [B, C, K-1]:
//   x = cat(cache or zeros, u over time)           // [B, K-1+T, C]
//   y[b, t, c] = sum_j w[c, j] * x[b, t + j, c]     // [B, T, C]
//   returns silu ? silu(y) : y, in u's dtype (promoted with w's)
// With a cache, the last K-1 inputs of x become the cache: written in place when *cache is
// defined with sizes [B, C, K-1] (a CUDA-graph-captured decoding step keeps writing the same
// buffer), else *cache is set to a new tensor. Gradients flow to u and w, never to the cache.
// On CUDA (HYB_CUDA builds) with u, w (and a defined cache) of one dtype (fp32, bf16, fp16),
// C a multiple of 4 and 2 <= K <= 8: the fused kernels of kernels/cuda/short_conv.cu, through an
// autograd function with a CUDA backward when a gradient is needed; else the reference.
at::Tensor ShortConv(const at::Tensor& u, const at::Tensor& w, at::Tensor* cache, bool silu);

// The LibTorch-ops implementation (transpose, cat, grouped at::conv1d, at::silu): always built,
// the oracle for the CUDA kernels; the same ops and roundings as the mixers' CausalConv.
at::Tensor ShortConvReference(const at::Tensor& u, const at::Tensor& w, at::Tensor* cache,
                              bool silu);

}  // namespace hyb::kernels
