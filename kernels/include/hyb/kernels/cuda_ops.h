// Entry points of the CUDA kernels (defined only when built with HYB_CUDA=ON; callers guard
// with HYB_WITH_CUDA). Each checks types and shapes and runs on the current stream.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "hyb/kernels/linear_attention.h"

namespace hyb::kernels::cuda {

// True when RmsNorm below handles these tensors (same CUDA device, fp32/bf16/fp16, same dtype).
bool RmsNormSupported(const at::Tensor& x, const at::Tensor& weight);
// Forward only (no autograd). Same numerics as kernels::RmsNorm's reference path.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);
// Threads per block the RMSNorm kernel uses for rows of `cols` elements.
int RmsNormBlockSize(int64_t cols);

// Chunked GLA forward (kernels/cuda/gla_chunked.cu). Supported: q, k, v bf16 on one CUDA device,
// [B, H, T, K] / [B, H, T, V] with K, V in {64, 128, 256}; g any float type (used as fp32);
// initial_state undefined or [B, H, K, V] of any float type (used as fp32). Returns the output
// in bf16 and the final state in fp32. Forward only (no autograd).
bool GlaChunkedSupported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& g, const at::Tensor& initial_state);
LinearAttentionOutput GlaChunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& g, double scale,
                                 const at::Tensor& initial_state);
// The same forward as an autograd function (same support as above): the backward runs the CUDA
// kernels of gla_chunked_bwd.cu and returns gradients for q, k, v, g and initial_state in their
// dtypes. Keeps the state at every chunk start (fp32, K * V * 4 / 64 bytes per token and head)
// from the forward to the backward.
LinearAttentionOutput GlaChunkedWithGrad(const at::Tensor& q, const at::Tensor& k,
                                         const at::Tensor& v, const at::Tensor& g, double scale,
                                         const at::Tensor& initial_state);
// The backward alone (recomputes the forward's chunk states): gradients of a loss given
// d_output = dL/do ([B, H, T, V], used as bf16) and d_final_state = dL/dS_T ([B, H, K, V], used
// as fp32; undefined = zeros). Same support as GlaChunked; every gradient in fp32, the initial
// state's one also when initial_state is undefined (the gradient for a zero state).
GlaChunkedGradients GlaChunkedBackward(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& g, double scale,
                                       const at::Tensor& initial_state, const at::Tensor& d_output,
                                       const at::Tensor& d_final_state);
// Packed sequences of different lengths (kernels::GlaChunkedVarlen's contract): q, k, v, g
// [1, H, T, .] with T = cu_seqlens.back(), `cu_seqlens` the N + 1 host offsets (checked with
// CheckCuSeqlens; on the host so that grid sizes need no device synchronisation), initial_state
// undefined or [N, H, K, V]; final state [N, H, K, V]. One launch per kernel whatever the
// lengths. Supported as GlaChunked above, with B = 1.
bool GlaChunkedVarlenSupported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& g, const at::Tensor& initial_state,
                               int64_t num_seqs);
LinearAttentionOutput GlaChunkedVarlen(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& g, double scale,
                                       const at::Tensor& initial_state,
                                       const std::vector<int64_t>& cu_seqlens);
LinearAttentionOutput GlaChunkedVarlenWithGrad(const at::Tensor& q, const at::Tensor& k,
                                               const at::Tensor& v, const at::Tensor& g,
                                               double scale, const at::Tensor& initial_state,
                                               const std::vector<int64_t>& cu_seqlens);
GlaChunkedGradients GlaChunkedVarlenBackward(const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& v, const at::Tensor& g, double scale,
                                             const at::Tensor& initial_state,
                                             const at::Tensor& d_output,
                                             const at::Tensor& d_final_state,
                                             const std::vector<int64_t>& cu_seqlens);
// Chunks per parallel segment the GLA kernel uses for B*H sequences of `tokens` on a device
// with `num_sms` multiprocessors (host-testable tile math; the whole sequence when B*H fills it).
int GlaSegmentChunks(int64_t batch_heads, int64_t tokens, int num_sms);

// Chunked Gated DeltaNet forward (kernels/cuda/gated_delta_chunked.cu). Supported: q, k, v bf16
// on one CUDA device, [B, H, T, K] / [B, H, T, V] with K, V in {64, 128, 256} (k L2-normalised
// by the caller); g (log decay, <= 0) and beta [B, H, T] of any float type (used as fp32);
// initial_state undefined or [B, H, K, V] of any float type (used as fp32). Returns the output
// in bf16 and the final state in fp32. Forward only (no autograd).
bool GatedDeltaChunkedSupported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& g, const at::Tensor& beta,
                                const at::Tensor& initial_state);
LinearAttentionOutput GatedDeltaChunked(const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v, const at::Tensor& g,
                                        const at::Tensor& beta, double scale,
                                        const at::Tensor& initial_state);
// The same forward as an autograd function (same support as above): the backward runs the CUDA
// kernels of gated_delta_chunked_bwd.cu and returns gradients for q, k, v, g, beta and
// initial_state in their dtypes. Keeps the state at every chunk start (fp32, K * V * 4 / 64
// bytes per token and head) from the forward to the backward.
LinearAttentionOutput GatedDeltaChunkedWithGrad(const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v, const at::Tensor& g,
                                                const at::Tensor& beta, double scale,
                                                const at::Tensor& initial_state);
// The backward alone (recomputes the forward's chunk states): gradients of a loss given
// d_output = dL/do ([B, H, T, V], used as bf16; undefined = zeros) and d_final_state = dL/dS_T
// ([B, H, K, V], used as fp32; undefined = zeros). Same support as GatedDeltaChunked; every
// gradient in fp32, the initial state's one also when initial_state is undefined.
GatedDeltaChunkedGradients GatedDeltaChunkedBackward(const at::Tensor& q, const at::Tensor& k,
                                                     const at::Tensor& v, const at::Tensor& g,
                                                     const at::Tensor& beta, double scale,
                                                     const at::Tensor& initial_state,
                                                     const at::Tensor& d_output,
                                                     const at::Tensor& d_final_state);

// Packed sequences (kernels::GatedDeltaChunkedVarlen's contract): as GlaChunkedVarlen above, g
// and beta [1, H, T]. Supported as GatedDeltaChunked, with B = 1.
bool GatedDeltaChunkedVarlenSupported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& g, const at::Tensor& beta,
                                      const at::Tensor& initial_state, int64_t num_seqs);
LinearAttentionOutput GatedDeltaChunkedVarlen(const at::Tensor& q, const at::Tensor& k,
                                              const at::Tensor& v, const at::Tensor& g,
                                              const at::Tensor& beta, double scale,
                                              const at::Tensor& initial_state,
                                              const std::vector<int64_t>& cu_seqlens);
LinearAttentionOutput GatedDeltaChunkedVarlenWithGrad(const at::Tensor& q, const at::Tensor& k,
                                                      const at::Tensor& v, const at::Tensor& g,
                                                      const at::Tensor& beta, double scale,
                                                      const at::Tensor& initial_state,
                                                      const std::vector<int64_t>& cu_seqlens);
GatedDeltaChunkedGradients GatedDeltaChunkedVarlenBackward(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v, const at::Tensor& g,
                                                           const at::Tensor& beta, double scale,
                                                           const at::Tensor& initial_state,
                                                           const at::Tensor& d_output,
                                                           const at::Tensor& d_final_state,
                                                           const std::vector<int64_t>& cu_seqlens);

// Single-token decoding steps (kernels/cuda/linear_attention_step.cu). Supported: q, k, v
// [B, H, K] / [B, H, V] all fp32 or all bf16 on one CUDA device, state fp32 [B, H, K, V],
// K <= 256, V a multiple of 4, B*H <= 65535. g (and beta) are converted to q's type. Returns o in
// q's type and a new fp32 state. Forward only (no autograd).
bool LinearStepSupported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& state);
LinearAttentionOutput GlaStep(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& g, double scale, const at::Tensor& state);
LinearAttentionOutput GatedDeltaStep(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& g, const at::Tensor& beta, double scale,
                                     const at::Tensor& state);

}  // namespace hyb::kernels::cuda
