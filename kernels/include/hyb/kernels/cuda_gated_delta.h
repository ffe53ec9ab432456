// Entry points of the chunk-parallel Gated DeltaNet CUDA kernels (kernels/cuda/
// gated_delta_fast*.cu; defined only when built with HYB_CUDA=ON, callers guard with
// HYB_WITH_CUDA). Same arguments and results as cuda::GatedDeltaChunked* in cuda_ops.h, so a
// dispatch point can take either. Each checks types and shapes and runs on the current stream.
//
// Unlike the sequential kernels of cuda_ops.h, these split every sequence into chunks of 64
// tokens processed in parallel (only the state recurrence walks the chunks in order, split over
// slices of value columns), with bf16 tensor-core products: the per-chunk intermediates
// (WY-form pseudo keys and values, chunk-start states) are stored in bf16, as fla's kernels do,
// so results carry bf16 rounding of those intermediates rather than fp32 round-off alone.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "hyb/kernels/linear_attention.h"

namespace hyb::kernels::cuda {

// Supported: q, k, v bf16 on one CUDA device, [B, H, T, K] / [B, H, T, V] with K = V in
// {64, 128} (k L2-normalised by the caller), B * H <= 65535; g (log decay, <= 0) and beta
// [B, H, T] of any float type (used as fp32); initial_state undefined or [B, H, K, V] of any
// float type (used as fp32). `forward_only`: for GatedDeltaChunkedFast (and ...Varlen) alone,
// which also take K = V = 256 (the backward kernels do not).
bool GatedDeltaChunkedFastSupported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& g, const at::Tensor& beta,
                                    const at::Tensor& initial_state, bool forward_only = false);
// Forward only (no autograd): the output in bf16 and the final state in fp32.
LinearAttentionOutput GatedDeltaChunkedFast(const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& v, const at::Tensor& g,
                                            const at::Tensor& beta, double scale,
                                            const at::Tensor& initial_state);
// The same forward as an autograd function: keeps the forward's per-chunk intermediates
// (bf16, about 3 V + K V / 64 elements per token and head) for the backward below, whose
// gradients it returns in the inputs' dtypes.
LinearAttentionOutput GatedDeltaChunkedFastWithGrad(const at::Tensor& q, const at::Tensor& k,
                                                    const at::Tensor& v, const at::Tensor& g,
                                                    const at::Tensor& beta, double scale,
                                                    const at::Tensor& initial_state);
// The backward alone (runs the forward again for its intermediates): gradients of a loss given
// d_output = dL/do ([B, H, T, V], used as bf16; undefined = zeros) and d_final_state = dL/dS_T
// ([B, H, K, V], used as fp32; undefined = zeros). Every gradient in fp32, the initial state's
// one also when initial_state is undefined (the gradient for a zero state).
GatedDeltaChunkedGradients GatedDeltaChunkedFastBackward(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v, const at::Tensor& g,
                                                         const at::Tensor& beta, double scale,
                                                         const at::Tensor& initial_state,
                                                         const at::Tensor& d_output,
                                                         const at::Tensor& d_final_state);

// Packed sequences of different lengths (kernels::GatedDeltaChunkedVarlen's contract, as
// cuda::GatedDeltaChunkedVarlen* in cuda_ops.h): q, k, v [1, H, T, .] and g, beta [1, H, T] with
// T = cu_seqlens.back(), `cu_seqlens` the N + 1 host offsets (checked with CheckCuSeqlens; on the
// host, so grid sizes need no device synchronisation), initial_state undefined or [N, H, K, V];
// final state (and its gradient, and the initial state's) [N, H, K, V]. Chunks never cross a
// sequence boundary: every sequence gets the arithmetic it gets alone through the functions
// above. A sequence of length 0 passes its initial state through (and the final state's
// gradient back). One launch per kernel whatever the lengths. Supported as
// GatedDeltaChunkedFastSupported with B = 1 and N * H <= 65535.
bool GatedDeltaChunkedFastVarlenSupported(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const at::Tensor& g,
                                          const at::Tensor& beta, const at::Tensor& initial_state,
                                          int64_t num_seqs, bool forward_only = false);
LinearAttentionOutput GatedDeltaChunkedFastVarlen(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, const at::Tensor& g,
                                                  const at::Tensor& beta, double scale,
                                                  const at::Tensor& initial_state,
                                                  const std::vector<int64_t>& cu_seqlens);
LinearAttentionOutput GatedDeltaChunkedFastVarlenWithGrad(const at::Tensor& q, const at::Tensor& k,
                                                          const at::Tensor& v, const at::Tensor& g,
                                                          const at::Tensor& beta, double scale,
                                                          const at::Tensor& initial_state,
                                                          const std::vector<int64_t>& cu_seqlens);
GatedDeltaChunkedGradients GatedDeltaChunkedFastVarlenBackward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
    const at::Tensor& beta, double scale, const at::Tensor& initial_state,
    const at::Tensor& d_output, const at::Tensor& d_final_state,
    const std::vector<int64_t>& cu_seqlens);

}  // namespace hyb::kernels::cuda
