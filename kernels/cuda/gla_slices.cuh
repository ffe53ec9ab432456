// Head dims above 128 in the chunked GLA kernels (gla_chunked.cu, gla_chunked_bwd.cu), by an
// exact decomposition into slices the 64/128 kernels already handle.
//
// GLA's decay is diagonal in the key dim and nothing mixes value columns, so with the key dim cut
// into slices a (K' columns) and the value dim into slices b (V' columns):
//   - the state block S[a, b] evolves alone: S[a, b] <- 2^b_C[a] S[a, b] + (k[a] decayed)^T v[b];
//   - o[:, b] = sum_a o^(a, b), o^(a, b) being the output of the GLA with inputs q[a], k[a],
//     g[a], v[b] and state S[a, b] (the scores A = sum_a A^(a) and q S = sum_a q[a] S[a, :]);
//   - the loss sum(o * do) + sum(S_T * dS_T) is the sum over (a, b) of the slices' losses, so
//     dq[a], dk[a], dg[a] = sum_b of the slice (a, b) gradients, dv[b] = sum_a of them, and the
//     state gradients dS[a, b] (at every chunk end and the start) are the slice's own.
// A block runs the 64/128 kernel on one slice (a, b) = blockIdx.y, reading its columns of the
// full tensors and its [K', V'] block of the full [K, V] states. Outputs that are sums over
// slices (o for K = 256; dq, dk, dg for V = 256; dv for K = 256) are added in fp32 with atomicAdd
// into a zeroed workspace ([rows, T, D]: rows = B * H, or H for packed sequences) and stored once
// in their type afterwards (GlaStoreAccumulated). Every such sum has exactly two terms, added to
// zero: 0 + x = x and x + y = y + x, so the result does not depend on the order the blocks run
// in. Numerics are those of the 64/128 kernels: bf16 operands, fp32 accumulation and states, one
// rounding of each output.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda_check.h"
#include "linear_attention_launch.h"

namespace hyb::kernels::cuda {

// Head dim of the slices a kernel instance runs for a full head dim of 64, 128 or 256.
constexpr int GlaSliceDim(int dim) { return dim > 128 ? 128 : dim; }

// Slices of a head dim: 1 for 64 and 128, 2 for 256.
constexpr int GlaSlices(int dim) { return dim / GlaSliceDim(dim); }

// Rows of the per-token tensors: B * H, or H for packed sequences ([1, H, T, D]).
inline int64_t GlaTokenRows(bool packed, int64_t batch, int64_t heads) {
  return packed ? heads : batch * heads;
}

// Offsets into the per-token tensors, (batch, head, token) strides s (the forward's and the
// backward's kernels alike). Element offset of token 0 of sequence bh = batch * heads + head:
__device__ __forceinline__ int64_t SeqOffset(const GlaStrides& s, int64_t bh, int64_t heads) {
  return (bh / heads) * s.batch + (bh % heads) * s.head;
}
// ... and of its token `token`.
__device__ __forceinline__ int64_t TokenOffset(const GlaStrides& s, int64_t bh, int64_t heads,
                                               int64_t token) {
  return SeqOffset(s, bh, heads) + token * s.token;
}
// The bytes of `base` (a per-token tensor) from column `col` of token `token` of sequence bh.
template <typename T>
__device__ __forceinline__ const char* TokenBytes(const T* base, const GlaStrides& s, int64_t bh,
                                                  int64_t heads, int64_t token, int col) {
  return reinterpret_cast<const char*>(base + TokenOffset(s, bh, heads, token) + col);
}

// f(kf, vf) with kf, vf std::integral_constant<int, D> of the dims (each 64, 128 or 256, checked
// by the caller: anything else runs as 256).
template <typename F>
cudaError_t GlaDispatchDims(int key_dim, int value_dim, F&& f) {
  auto with_value = [&](auto kf) {
    if (value_dim == 64) return f(kf, std::integral_constant<int, 64>{});
    if (value_dim == 128) return f(kf, std::integral_constant<int, 128>{});
    return f(kf, std::integral_constant<int, 256>{});
  };
  if (key_dim == 64) return with_value(std::integral_constant<int, 64>{});
  if (key_dim == 128) return with_value(std::integral_constant<int, 128>{});
  return with_value(std::integral_constant<int, 256>{});
}

namespace gla_slices_detail {

__device__ __forceinline__ void StorePair(float* p, float2 x) { *reinterpret_cast<float2*>(p) = x; }
__device__ __forceinline__ void StorePair(__nv_bfloat16* p, float2 x) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(x.x, x.y);
}

// out[row, t, :] (strides s; row = batch * heads + head) = acc[row * tokens + t, :] ([.., dim]
// contiguous, dim even): one warp per token row, a pair of columns per lane and step.
template <typename T>
__global__ void GlaStoreAccumulatedKernel(const float* acc, T* out, GlaStrides s, int64_t heads,
                                          int64_t tokens, int dim, int64_t token_rows) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t rt = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
       rt < token_rows; rt += warps) {
    const int64_t t = rt % tokens, row = rt / tokens;
    const float* src = acc + rt * dim;
    T* dst = out + (row / heads) * s.batch + (row % heads) * s.head + t * s.token;
    for (int d = 2 * lane; d < dim; d += 64) {
      StorePair(dst + d, *reinterpret_cast<const float2*>(src + d));
    }
  }
}

}  // namespace gla_slices_detail

// Stores the fp32 sums `acc` ([rows, tokens, dim] contiguous) into `out` ([B, H, T, dim] with
// resolved strides `s`, element type T: float or __nv_bfloat16).
template <typename T>
cudaError_t GlaStoreAccumulated(const float* acc, T* out, const GlaStrides& s, int64_t rows,
                                int64_t heads, int64_t tokens, int dim, cudaStream_t stream) {
  const int64_t token_rows = rows * tokens;
  if (token_rows == 0) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>((token_rows + 7) / 8, 65536 * 8);  // 8 warps each
  gla_slices_detail::GlaStoreAccumulatedKernel<T>
      <<<static_cast<unsigned>(blocks), 256, 0, stream>>>(acc, out, s, heads, tokens, dim,
                                                          token_rows);
  HYB_CUDA_TRY(cudaGetLastError());
  return cudaSuccess;
}

}  // namespace hyb::kernels::cuda
