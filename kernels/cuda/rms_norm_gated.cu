// Vectorised RMSNorm with an optional silu gate, forward and backward (see rms_norm_launch.h for
// the formulas). A row is read in 16-byte vectors by a group of threads: 8..32 lanes of a warp
// for rows of up to 64 vectors (several rows per warp), else a whole block. fp32 arithmetic; the
// forward rounds where the LibTorch reference does, the backward only at its outputs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda_check.h"
#include "float_convert.cuh"
#include "rms_norm_launch.h"

namespace hyb::kernels::cuda {
namespace {

// Columns a block's shared weight-gradient row holds when rows share warps.
constexpr int kWarpModeMaxCols = static_cast<int>(kRmsNormMaxWarpRowVecs) * 8;

template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

template <typename T>
__device__ __forceinline__ void LoadVec(const T* p, float (&out)[kVec<T>]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int k = 0; k < kVec<T>; ++k) out[k] = ToFloat(e[k]);
}

template <typename T>
__device__ __forceinline__ void StoreVec(T* p, const float (&in)[kVec<T>]) {
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int k = 0; k < kVec<T>; ++k) e[k] = FromFloat<T>(in[k]);
  *reinterpret_cast<uint4*>(p) = raw;
}

__device__ __forceinline__ float Sigmoid(float g) { return 1.f / (1.f + expf(-g)); }

// Sum of v over the thread group of a row, in every thread of the group: threads_per_row <= 32
// aligned lanes of one warp, or the whole block. Every thread of the block calls it (the warp
// shuffles and the barriers need them all); the butterfly gives every lane the same bits.
__device__ __forceinline__ float GroupSum(float v, int threads_per_row, float* scratch) {
  if (threads_per_row <= 32) {
    for (int offset = threads_per_row / 2; offset > 0; offset /= 2) {
      v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.f;
  const int warps = static_cast<int>(blockDim.x / 32);
  for (int i = 0; i < warps; ++i) total += scratch[i];
  __syncthreads();  // the next call writes scratch again
  return total;
}

// Where a thread sits: lane in its row's group, the group in the block, groups per block.
struct RowThread {
  int lane, group, groups;
};

__device__ __forceinline__ RowThread ThisRowThread(int threads_per_row) {
  return {static_cast<int>(threadIdx.x) & (threads_per_row - 1),
          static_cast<int>(threadIdx.x) / threads_per_row,
          static_cast<int>(blockDim.x) / threads_per_row};
}

// The weight's vectors this thread owns, for every row it serves.
template <typename T, int kVecs>
__device__ __forceinline__ void LoadWeight(const T* weight, int lane, int threads_per_row,
                                           int64_t nvec, float (&w)[kVecs][kVec<T>]) {
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int64_t j = lane + static_cast<int64_t>(i) * threads_per_row;
    if (j < nvec) {
      LoadVec(weight + j * kVec<T>, w[i]);
    } else {
#pragma unroll
      for (int k = 0; k < kVec<T>; ++k) w[i][k] = 0.f;
    }
  }
}

// x's vectors of `row` this thread owns (zeros past the row or for an inactive row), and their
// sum of squares.
template <typename T, int kVecs>
__device__ __forceinline__ float LoadRow(const T* x, const RmsNormRows& rows, int64_t row,
                                         bool active, int lane, int threads_per_row, int64_t nvec,
                                         float (&v)[kVecs][kVec<T>]) {
  const T* xr = x + (active ? RmsNormRowOffset(rows, row) : 0);
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int64_t j = lane + static_cast<int64_t>(i) * threads_per_row;
    if (active && j < nvec) {
      LoadVec(xr + j * kVec<T>, v[i]);
#pragma unroll
      for (int k = 0; k < kVec<T>; ++k) ss += v[i][k] * v[i][k];
    } else {
#pragma unroll
      for (int k = 0; k < kVec<T>; ++k) v[i][k] = 0.f;
    }
  }
  return ss;
}

template <typename T, int kVecs, bool kGated>
__global__ void __launch_bounds__(kRmsNormMaxBlock)
    RmsNormGatedKernel(const RmsNormGatedParams p) {
  constexpr int kN = kVec<T>;
  __shared__ float scratch[32];
  const int tpr = p.tile.threads_per_row;
  const RowThread rt = ThisRowThread(tpr);
  const int64_t nvec = p.cols / kN;
  const T* x = static_cast<const T*>(p.x);
  const T* gate = static_cast<const T*>(p.gate);
  T* y = static_cast<T*>(p.y);
  float w[kVecs][kN];
  LoadWeight<T, kVecs>(static_cast<const T*>(p.weight), rt.lane, tpr, nvec, w);
  const float cols = static_cast<float>(p.cols);
  // The trip count is the same for every thread of the block (GroupSum needs them all).
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * rt.groups; base < p.rows;
       base += static_cast<int64_t>(gridDim.x) * rt.groups) {
    const int64_t row = base + rt.group;
    const bool active = row < p.rows;
    float v[kVecs][kN];
    float ss = LoadRow<T, kVecs>(x, p.x_rows, row, active, rt.lane, tpr, nvec, v);
    ss = GroupSum(ss, tpr, scratch);
    const float inv = rsqrtf(ss / cols + p.eps);
    if (!active) continue;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int64_t j = rt.lane + static_cast<int64_t>(i) * tpr;
      if (j >= nvec) continue;
      const int64_t at = row * p.cols + j * kN;
      float out[kN];
      float g[kN];
      if constexpr (kGated) LoadVec(gate + at, g);
#pragma unroll
      for (int k = 0; k < kN; ++k) {
        out[k] = Round<T>(w[i][k] * Round<T>(v[i][k] * inv));
        if constexpr (kGated) out[k] = out[k] * Round<T>(g[k] * Sigmoid(g[k]));
      }
      StoreVec(y + at, out);
    }
  }
}

template <typename T, int kVecs, bool kGated>
__global__ void __launch_bounds__(kRmsNormMaxBlock)
    RmsNormGatedBackwardKernel(const RmsNormGatedBackwardParams bp) {
  constexpr int kN = kVec<T>;
  __shared__ float scratch[32];
  __shared__ float dw_shared[kWarpModeMaxCols];
  const RmsNormGatedParams& p = bp.forward;
  const int tpr = p.tile.threads_per_row;
  const RowThread rt = ThisRowThread(tpr);
  const int64_t nvec = p.cols / kN;
  const T* x = static_cast<const T*>(p.x);
  const T* gate = static_cast<const T*>(p.gate);
  const T* d_y = static_cast<const T*>(bp.d_y);
  T* d_x = static_cast<T*>(bp.d_x);
  T* d_gate = static_cast<T*>(bp.d_gate);
  float w[kVecs][kN];
  LoadWeight<T, kVecs>(static_cast<const T*>(p.weight), rt.lane, tpr, nvec, w);
  float dw[kVecs][kN];
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
#pragma unroll
    for (int k = 0; k < kN; ++k) dw[i][k] = 0.f;
  }
  const float cols = static_cast<float>(p.cols);
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * rt.groups; base < p.rows;
       base += static_cast<int64_t>(gridDim.x) * rt.groups) {
    const int64_t row = base + rt.group;
    const bool active = row < p.rows;
    float n[kVecs][kN];  // x, then the normalised x
    float ss = LoadRow<T, kVecs>(x, p.x_rows, row, active, rt.lane, tpr, nvec, n);
    ss = GroupSum(ss, tpr, scratch);
    const float inv = rsqrtf(ss / cols + p.eps);
    float dn[kVecs][kN];  // d(loss)/d(n)
    float dot = 0.f;      // sum of dn * n over this thread's part of the row
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int64_t j = rt.lane + static_cast<int64_t>(i) * tpr;
      if (!active || j >= nvec) {
#pragma unroll
        for (int k = 0; k < kN; ++k) dn[i][k] = 0.f;
        continue;
      }
      const int64_t at = row * p.cols + j * kN;
      float dy[kN], g[kN], dg[kN];
      LoadVec(d_y + at, dy);
      if constexpr (kGated) LoadVec(gate + at, g);
#pragma unroll
      for (int k = 0; k < kN; ++k) {
        n[i][k] *= inv;
        float dys = dy[k];  // d(loss)/d(weight * n)
        if constexpr (kGated) {
          const float sig = Sigmoid(g[k]);
          dys = dy[k] * g[k] * sig;
          dg[k] = dy[k] * w[i][k] * n[i][k] * sig * (1.f + g[k] * (1.f - sig));
        }
        dw[i][k] += dys * n[i][k];
        dn[i][k] = dys * w[i][k];
        dot += dn[i][k] * n[i][k];
      }
      if constexpr (kGated) StoreVec(d_gate + at, dg);
    }
    dot = GroupSum(dot, tpr, scratch);
    if (!active) continue;
    const float mean_dot = dot / cols;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int64_t j = rt.lane + static_cast<int64_t>(i) * tpr;
      if (j >= nvec) continue;
      float dx[kN];
#pragma unroll
      for (int k = 0; k < kN; ++k) dx[k] = inv * (dn[i][k] - n[i][k] * mean_dot);
      StoreVec(d_x + row * p.cols + j * kN, dx);
    }
  }
  // This block's weight gradient: one row of the workspace.
  float* partial = bp.d_weight_partial + static_cast<int64_t>(blockIdx.x) * p.cols;
  if (rt.groups == 1) {  // the block's threads own disjoint columns
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int64_t j = rt.lane + static_cast<int64_t>(i) * tpr;
      if (j >= nvec) continue;
#pragma unroll
      for (int k = 0; k < kN; ++k) partial[j * kN + k] = dw[i][k];
    }
    return;
  }
  // Rows share warps: the groups add their columns into shared memory one after the other (a
  // fixed order, so the result does not depend on scheduling).
  for (int group = 0; group < rt.groups; ++group) {
    if (rt.group == group) {
#pragma unroll
      for (int i = 0; i < kVecs; ++i) {
        const int64_t j = rt.lane + static_cast<int64_t>(i) * tpr;
        if (j >= nvec) continue;
#pragma unroll
        for (int k = 0; k < kN; ++k) {
          const int64_t c = j * kN + k;
          dw_shared[c] = (group == 0 ? 0.f : dw_shared[c]) + dw[i][k];
        }
      }
    }
    __syncthreads();
  }
  for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) partial[c] = dw_shared[c];
}

// d_weight[c] = sum over b of partial[b, c], in a fixed order. Blocks of 32 columns x 8 slices.
template <typename T>
__global__ void __launch_bounds__(256)
    RmsNormWeightGradKernel(const float* __restrict__ partial, int64_t parts, int64_t cols,
                            T* __restrict__ d_weight) {
  __shared__ float sums[8][33];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  float s = 0.f;
  if (c < cols) {
    for (int64_t b = threadIdx.y; b < parts; b += 8) s += partial[b * cols + c];
  }
  sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) total += sums[i][threadIdx.x];
    d_weight[c] = FromFloat<T>(total);
  }
}

template <typename T>
bool TileFits(const RmsNormGatedParams& p) {
  const RmsNormTile& t = p.tile;
  if (t.vec != kVec<T> || t.threads_per_row < 1 || t.block_threads > kRmsNormMaxBlock) {
    return false;
  }
  if ((t.threads_per_row & (t.threads_per_row - 1)) != 0) return false;
  if (t.block_threads % t.threads_per_row != 0 || t.block_threads % 32 != 0) return false;
  if (t.threads_per_row > 32 && t.threads_per_row != t.block_threads) return false;
  if (p.cols % kVec<T> != 0 ||
      p.cols > static_cast<int64_t>(t.threads_per_row) * t.vecs_per_thread * kVec<T>) {
    return false;
  }
  if (t.threads_per_row <= 32 && t.block_threads > t.threads_per_row &&
      p.cols > kWarpModeMaxCols) {
    return false;
  }
  return p.blocks > 0 && p.blocks <= 0x7fffffff;
}

template <typename T, int kVecs>
struct ForwardLaunch {
  static cudaError_t Run(const RmsNormGatedParams& p, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned>(p.blocks)), block(p.tile.block_threads);
    if (p.gate != nullptr) {
      RmsNormGatedKernel<T, kVecs, true><<<grid, block, 0, stream>>>(p);
    } else {
      RmsNormGatedKernel<T, kVecs, false><<<grid, block, 0, stream>>>(p);
    }
    HYB_CUDA_TRY(cudaGetLastError());
    return cudaSuccess;
  }
};

template <typename T, int kVecs>
struct BackwardLaunch {
  static cudaError_t Run(const RmsNormGatedBackwardParams& bp, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned>(bp.forward.blocks)), block(bp.forward.tile.block_threads);
    if (bp.forward.gate != nullptr) {
      RmsNormGatedBackwardKernel<T, kVecs, true><<<grid, block, 0, stream>>>(bp);
    } else {
      RmsNormGatedBackwardKernel<T, kVecs, false><<<grid, block, 0, stream>>>(bp);
    }
    HYB_CUDA_TRY(cudaGetLastError());
    return cudaSuccess;
  }
};

// Op<T, kVecs>::Run(params, stream) for the tile's vectors per thread.
template <typename T, template <typename, int> class Op, typename Params>
cudaError_t WithVecs(int vecs_per_thread, const Params& params, cudaStream_t stream) {
  switch (vecs_per_thread) {
    case 1: return Op<T, 1>::Run(params, stream);
    case 2: return Op<T, 2>::Run(params, stream);
    case 4: return Op<T, 4>::Run(params, stream);
    case 8:
      if constexpr (kVec<T> * 8 <= kRmsNormMaxThreadElems) return Op<T, 8>::Run(params, stream);
      break;
    default: break;
  }
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t LaunchForward(const RmsNormGatedParams& p, cudaStream_t stream) {
  if (!TileFits<T>(p)) return cudaErrorInvalidValue;
  return WithVecs<T, ForwardLaunch>(p.tile.vecs_per_thread, p, stream);
}

template <typename T>
cudaError_t LaunchBackward(const RmsNormGatedBackwardParams& bp, cudaStream_t stream) {
  const RmsNormGatedParams& p = bp.forward;
  if (!TileFits<T>(p)) return cudaErrorInvalidValue;
  if ((p.gate == nullptr) != (bp.d_gate == nullptr)) return cudaErrorInvalidValue;
  const cudaError_t err = WithVecs<T, BackwardLaunch>(p.tile.vecs_per_thread, bp, stream);
  if (err != cudaSuccess) return err;  // the site is recorded inside
  const dim3 reduce_grid(static_cast<unsigned>((p.cols + 31) / 32)), reduce_block(32, 8);
  RmsNormWeightGradKernel<T><<<reduce_grid, reduce_block, 0, stream>>>(
      bp.d_weight_partial, p.blocks, p.cols, static_cast<T*>(bp.d_weight));
  HYB_CUDA_TRY(cudaGetLastError());
  return cudaSuccess;
}

}  // namespace

cudaError_t LaunchRmsNormGated(const RmsNormGatedParams& params, cudaStream_t stream) {
  if (params.rows == 0) return cudaSuccess;
  switch (params.type) {
    case ElemType::kF32: return LaunchForward<float>(params, stream);
    case ElemType::kBF16: return LaunchForward<__nv_bfloat16>(params, stream);
    case ElemType::kF16: return LaunchForward<__half>(params, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t LaunchRmsNormGatedBackward(const RmsNormGatedBackwardParams& params,
                                       cudaStream_t stream) {
  switch (params.forward.type) {
    case ElemType::kF32: return LaunchBackward<float>(params, stream);
    case ElemType::kBF16: return LaunchBackward<__nv_bfloat16>(params, stream);
    case ElemType::kF16: return LaunchBackward<__half>(params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace hyb::kernels::cuda
