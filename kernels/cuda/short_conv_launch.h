// Torch-free launchers of the depthwise causal short convolution of the linear-attention mixers
// (short_conv.cu), forward with the decoding cache and backward, and the grid math they share
// with the host (define HYB_SHORT_CONV_PLAN_ONLY before including this header to get only that
// part, without the CUDA runtime).
//
// The function, for u [B, T, C], w [C, K] and prev [B, C, K-1] (the inputs before u; zeros when
// absent), with x = cat(prev, u) over time (x[b, s, c] = prev[b, c, s] for s < K-1, else
// u[b, s - (K-1), c]):
//   y[b, t, c] = sum_j w[c, j] * x[b, t + j, c]                 (fp32, then rounded to the type)
//   out = silu ? silu(y) : y                                    (silu of the rounded y, rounded)
//   new cache[b, c, i] = x[b, T + i, c]   for i < K-1           (the last K-1 inputs)
// the roundings of at::conv1d followed by at::silu. Backward, from d_out:
//   d_y = silu ? d_out * silu'(y) : d_out                       (y in fp32, not rounded)
//   d_u[b, t, c] = sum_j w[c, j] * d_y[b, t + K-1 - j, c]       (d_y zero past T)
//   d_w[c, j] = sum_{b, t} d_y[b, t, c] * x[b, t + j, c]        (fp32, fixed order)
// The cache is not differentiated.
//
// Work split: a thread owns kShortConvVec channels (one 8-byte (bf16, fp16) or 16-byte (fp32)
// vector) of a tile of kShortConvTimeTile consecutive time steps of one sequence, and keeps the
// last K inputs in registers; a block is 32 channel vectors x 8 tiles, and its blocks stride over
// the B * ceil(T / kShortConvTimeTile) tiles.
#pragma once

#include <cstdint>

namespace hyb::kernels::cuda {

enum class ShortConvType { kF32, kBF16, kF16 };

inline constexpr int kShortConvVec = 4;        // channels per thread
inline constexpr int kShortConvTimeTile = 32;  // time steps per thread and tile
inline constexpr int kShortConvBlockX = 32;    // channel vectors per block
inline constexpr int kShortConvBlockY = 8;     // tiles per block and pass
inline constexpr int kShortConvMinK = 2;
inline constexpr int kShortConvMaxK = 8;
// Time steps whose loads a thread issues together before using any (forward, backward): more
// bytes in flight per thread, at the price of registers (sm_90a, K = 4: about 128 registers per
// thread for both, so two 256-thread blocks per multiprocessor; the backward at 4 steps takes
// about 160). Not yet tuned on a GPU.
inline constexpr int kShortConvForwardSteps = 8;
inline constexpr int kShortConvBackwardSteps = 2;

// The launch grid: blocks_x covers the channels, blocks_y strides over the tiles. Sized to about
// `blocks_per_sm` resident blocks on each of `num_sms` multiprocessors, never more than the tiles
// need; the backward writes one partial weight gradient per blocks_y, so this also sizes its
// workspace. Every field at least 1.
struct ShortConvGrid {
  int64_t tiles_per_seq = 1;  // ceil(T / kShortConvTimeTile), at least 1
  int64_t blocks_x = 1;
  int64_t blocks_y = 1;
};

inline ShortConvGrid PlanShortConvGrid(int64_t batch, int64_t time, int64_t channels, int num_sms,
                                       int blocks_per_sm) {
  ShortConvGrid g;
  g.tiles_per_seq = time > 0 ? (time + kShortConvTimeTile - 1) / kShortConvTimeTile : 1;
  const int64_t vecs = (channels + kShortConvVec - 1) / kShortConvVec;
  g.blocks_x = vecs > 0 ? (vecs + kShortConvBlockX - 1) / kShortConvBlockX : 1;
  const int64_t tiles = (batch > 0 ? batch : 1) * g.tiles_per_seq;
  const int64_t needed = (tiles + kShortConvBlockY - 1) / kShortConvBlockY;
  const int64_t target =
      static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * (blocks_per_sm > 0 ? blocks_per_sm : 1);
  int64_t y = (target + g.blocks_x - 1) / g.blocks_x;
  if (y > needed) y = needed;
  g.blocks_y = y > 0 ? y : 1;
  return g;
}

// Resident 256-thread blocks per multiprocessor the launches aim at (the backward keeps about
// 4 * K * kShortConvVec floats per thread in registers).
inline constexpr int kShortConvForwardBlocksPerSm = 8;
inline constexpr int kShortConvBackwardBlocksPerSm = 4;

}  // namespace hyb::kernels::cuda

#if !defined(HYB_SHORT_CONV_PLAN_ONLY)
#include <cuda_runtime.h>

namespace hyb::kernels::cuda {

// Forward. u's element (b, t, c) is at u[b * u_stride_b + t * u_stride_t + c]; u's pointer and
// strides are whole vectors (kShortConvVec elements), as are y's and every other pointer; channels
// a multiple of kShortConvVec; 2 <= kernel <= 8.
struct ShortConvParams {
  const void* u = nullptr;
  int64_t u_stride_b = 0, u_stride_t = 0;
  const void* w = nullptr;     // [C, K], contiguous
  const void* prev = nullptr;  // [B, C, K-1], contiguous, or nullptr: zeros
  void* y = nullptr;           // [B, T, C], contiguous (the output, after silu when silu)
  // [B, C, K-1], contiguous, or nullptr: receives the last K-1 inputs. May be prev itself (the
  // decoding cache updated in place): the launch reads every prev value before it writes.
  void* cache_out = nullptr;
  int64_t batch = 0, time = 0, channels = 0;
  int kernel = 4;
  bool silu = false;
  ShortConvType type = ShortConvType::kBF16;  // of u, w, prev, y and cache_out alike
  ShortConvGrid grid;  // PlanShortConvGrid(..., kShortConvForwardBlocksPerSm)
};

// Enqueues the forward (and, when cache_out is set and T spans more than one tile, a second
// launch that copies the last K-1 inputs) on `stream`; returns the launch error.
cudaError_t LaunchShortConv(const ShortConvParams& params, cudaStream_t stream);

// Backward. forward: the forward's parameters (y and cache_out unused; grid from
// PlanShortConvGrid(..., kShortConvBackwardBlocksPerSm)).
struct ShortConvBackwardParams {
  ShortConvParams forward;
  const void* d_out = nullptr;   // [B, T, C], contiguous
  void* d_u = nullptr;           // [B, T, C], contiguous
  float* d_w_partial = nullptr;  // workspace [grid.blocks_y, C * K] floats
  void* d_w = nullptr;           // [C, K], contiguous
};

// Enqueues the backward (the per-tile kernel, then the fixed-order sum of the partial weight
// gradients) on `stream`; returns the launch error.
cudaError_t LaunchShortConvBackward(const ShortConvBackwardParams& params, cudaStream_t stream);

}  // namespace hyb::kernels::cuda
#endif  // !HYB_SHORT_CONV_PLAN_ONLY
