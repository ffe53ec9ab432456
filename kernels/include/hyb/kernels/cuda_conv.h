// Entry points of the CUDA depthwise causal short convolution (+ optional silu) of the
// linear-attention mixers, forward with the decoding cache and backward
// (kernels/cuda/short_conv.cu; defined only when built with HYB_CUDA=ON: callers guard with
// HYB_WITH_CUDA). Each checks its inputs (c10::Error when unsupported) and runs on the current
// stream. kernels::ShortConv (short_conv.h) is the dispatch point the mixers call.
//
// The function, for u [B, T, C], w [C, K] and the previous inputs prev [B, C, K-1] (zeros when
// undefined):
//   x = cat(prev, u over time)                     (x[b, s, c], s < K-1 + T)
//   y[b, t, c] = sum_j w[c, j] * x[b, t + j, c]    (fp32 accumulation, rounded to u's dtype)
//   out = silu ? silu(y) : y
// with the roundings of kernels::ShortConvReference; the output is contiguous [B, T, C] in u's
// dtype.
#pragma once

#include <ATen/core/Tensor.h>

namespace hyb::kernels::cuda {

// True when the functions below take these tensors: u [B, T, C] and w [C, K] on one CUDA device,
// both fp32, bf16 or fp16 alike, C a multiple of 4, 2 <= K <= 8; `cache` undefined, or
// [B, C, K-1] of u's dtype on u's device and contiguous.
//
// Strides: u is read in place when its last dim has stride 1 and its data pointer and batch and
// time strides are whole 4-element vectors (a column slice of a [B, T, N] projection at a
// multiple of 4 columns is), else through a contiguous copy. w and the incoming gradient are
// read through .contiguous().
bool ShortConvSupported(const at::Tensor& u, const at::Tensor& w, const at::Tensor& cache);

// The forward, without autograd. cache: nullptr (no previous inputs, nothing kept), or the
// decoding cache: when defined (ShortConvSupported with it), its values are the previous inputs
// and it receives the last K-1 inputs of cat(cache, u) in place (the same storage, as a
// CUDA-graph-captured step needs); when undefined, zeros are the previous inputs and it is set
// to a new [B, C, K-1] tensor holding the last K-1 inputs.
at::Tensor ShortConv(const at::Tensor& u, const at::Tensor& w, at::Tensor* cache, bool silu);

// The same forward as an autograd function whose backward runs the CUDA backward kernel:
// gradients for u (u's sizes and dtype, contiguous) and w (w's sizes and dtype, summed over B
// and T in fp32 in a fixed order: deterministic on one device). prev: undefined (zeros) or
// [B, C, K-1] previous inputs, read (never written) and not differentiated; it must not change
// before the backward runs (pass a copy of a cache that is updated in place). No double
// backward.
at::Tensor ShortConvWithGrad(const at::Tensor& u, const at::Tensor& w, const at::Tensor& prev,
                             bool silu);

// The backward alone (what the autograd function runs), for tests and benchmarks. d_out: the
// gradient of the output, B * T * C elements.
struct ShortConvGradients {
  at::Tensor d_u, d_w;
};
ShortConvGradients ShortConvBackward(const at::Tensor& u, const at::Tensor& w,
                                     const at::Tensor& prev, const at::Tensor& d_out, bool silu);

}  // namespace hyb::kernels::cuda
