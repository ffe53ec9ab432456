// Depthwise causal short convolution (+ optional silu), forward with the decoding cache and
// backward (see short_conv_launch.h for the formulas and the work split). Each thread slides a
// window of the last K inputs of its channel vector along its time tile; fp32 arithmetic, the
// forward rounds where at::conv1d + at::silu do, the backward only at its outputs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda_check.h"
#include "float_convert.cuh"
#include "short_conv_launch.h"
#include "short_conv_tile.h"

namespace hyb::kernels::cuda {
namespace {

constexpr int kN = kShortConvVec;
constexpr int kThreads = kShortConvBlockX * kShortConvBlockY;

// kN elements of T as one load: 16 bytes (fp32) or 8 bytes (bf16, fp16).
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  using Type = float4;
};
template <>
struct VecOf<__nv_bfloat16> {
  using Type = uint2;
};
template <>
struct VecOf<__half> {
  using Type = uint2;
};

template <typename T>
__device__ __forceinline__ void LoadVec(const T* p, float (&out)[kN]) {
  static_assert(sizeof(typename VecOf<T>::Type) == kN * sizeof(T), "vector size");
  const typename VecOf<T>::Type raw = *reinterpret_cast<const typename VecOf<T>::Type*>(p);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int k = 0; k < kN; ++k) out[k] = ToFloat(e[k]);
}

template <typename T>
__device__ __forceinline__ void StoreVec(T* p, const float (&in)[kN]) {
  typename VecOf<T>::Type raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int k = 0; k < kN; ++k) e[k] = FromFloat<T>(in[k]);
  *reinterpret_cast<typename VecOf<T>::Type*>(p) = raw;
}

// Where a thread works: its first channel c (a multiple of kN), whether it has channels at all,
// and its first tile and tile step over the B * tiles_per_seq tiles.
struct ConvThread {
  int64_t c;
  bool active;
  int64_t first_tile, tile_step;
};

__device__ __forceinline__ ConvThread ThisConvThread(const ShortConvParams& p) {
  ConvThread ct;
  ct.c = (static_cast<int64_t>(blockIdx.x) * kShortConvBlockX + threadIdx.x) * kN;
  ct.active = ct.c < p.channels;
  ct.first_tile = static_cast<int64_t>(blockIdx.y) * kShortConvBlockY + threadIdx.y;
  ct.tile_step = static_cast<int64_t>(gridDim.y) * kShortConvBlockY;
  return ct;
}

// w[c + k, j] as w_reg[j][k].
template <typename T, int K>
__device__ __forceinline__ void LoadWeights(const T* w, int64_t c, float (&w_reg)[K][kN]) {
#pragma unroll
  for (int k = 0; k < kN; ++k) {
#pragma unroll
    for (int j = 0; j < K; ++j) w_reg[j][k] = ToFloat(w[(c + k) * K + j]);
  }
}

// Input s of sequence b at channels c..c+kN-1: u's row s for s >= 0, else the previous inputs'
// column K-1+s (zeros without them).
template <typename T, int K>
__device__ __forceinline__ void LoadInput(const ShortConvParams& p, int64_t b, int64_t s, int64_t c,
                                          float (&out)[kN]) {
  if (s >= 0) {
    LoadVec(static_cast<const T*>(p.u) + b * p.u_stride_b + s * p.u_stride_t + c, out);
    return;
  }
  const T* prev = static_cast<const T*>(p.prev);
#pragma unroll
  for (int k = 0; k < kN; ++k) {
    out[k] = prev != nullptr ? ToFloat(prev[(b * p.channels + c + k) * (K - 1) + (K - 1) + s])
                             : 0.f;
  }
}

// The io of ShortConvForwardTile / ShortConvBackwardTile (short_conv_tile.h) for sequence b at
// channels c..c+kN-1.
template <typename T, int K, bool kSilu>
struct ConvIo {
  const ShortConvParams& p;
  const T* d_out;  // backward only
  T* d_u;          // backward only
  int64_t b, c;

  __device__ __forceinline__ void Input(int64_t s, float (&v)[kN]) const {
    LoadInput<T, K>(p, b, s, c, v);
  }
  // The forward's roundings: at::conv1d's output in T, then at::silu of it in T.
  __device__ __forceinline__ void Output(int64_t t, float (&y)[kN]) const {
#pragma unroll
    for (int k = 0; k < kN; ++k) {
      y[k] = Round<T>(y[k]);
      if constexpr (kSilu) y[k] = y[k] * Sigmoid(y[k]);
    }
    StoreVec(static_cast<T*>(p.y) + (b * p.time + t) * p.channels + c, y);
  }
  __device__ __forceinline__ void DOut(int64_t s, float (&v)[kN]) const {
    LoadVec(d_out + (b * p.time + s) * p.channels + c, v);
  }
  __device__ __forceinline__ float Sigmoid(float v) const { return 1.f / (1.f + expf(-v)); }
  __device__ __forceinline__ void DInput(int64_t t, const float (&v)[kN]) const {
    StoreVec(d_u + (b * p.time + t) * p.channels + c, v);
  }
};

__device__ __forceinline__ int64_t TileEnd(int64_t t0, int64_t time) {
  return t0 + kShortConvTimeTile < time ? t0 + kShortConvTimeTile : time;
}

template <typename T, int K, bool kSilu>
__global__ void __launch_bounds__(kThreads) ShortConvForwardKernel(const ShortConvParams p) {
  const ConvThread ct = ThisConvThread(p);
  if (!ct.active) return;
  float w[K][kN];
  LoadWeights<T, K>(static_cast<const T*>(p.w), ct.c, w);
  const int64_t tiles = p.batch * p.grid.tiles_per_seq;
  for (int64_t tile = ct.first_tile; tile < tiles; tile += ct.tile_step) {
    const int64_t b = tile / p.grid.tiles_per_seq;
    const int64_t t0 = (tile % p.grid.tiles_per_seq) * kShortConvTimeTile;
    ConvIo<T, K, kSilu> io{p, nullptr, nullptr, b, ct.c};
    float win[K][kN];
    ShortConvForwardTile<K, kN, kShortConvForwardSteps, float>(w, t0, TileEnd(t0, p.time), io,
                                                               win);
    // One tile per sequence: this thread alone read the sequence's previous inputs (in the
    // tile), and its window now holds the last K-1 inputs; longer sequences take the copy
    // launch.
    if (p.cache_out != nullptr && p.grid.tiles_per_seq == 1) {
      T* cache = static_cast<T*>(p.cache_out);
#pragma unroll
      for (int k = 0; k < kN; ++k) {
#pragma unroll
        for (int i = 0; i + 1 < K; ++i) {
          cache[(b * p.channels + ct.c + k) * (K - 1) + i] = FromFloat<T>(win[i][k]);
        }
      }
    }
  }
}

// cache_out[b, c, i] = u[b, T - (K-1) + i, c], for T >= K-1 (after the forward has read prev).
template <typename T>
__global__ void __launch_bounds__(256) ShortConvCacheCopyKernel(const ShortConvParams p) {
  const int64_t n = p.batch * p.channels;
  const int taps = p.kernel - 1;
  const T* u = static_cast<const T*>(p.u);
  T* cache = static_cast<T*>(p.cache_out);
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = idx / p.channels, c = idx % p.channels;
    for (int i = 0; i < taps; ++i) {
      cache[idx * taps + i] = u[b * p.u_stride_b + (p.time - taps + i) * p.u_stride_t + c];
    }
  }
}

template <typename T, int K, bool kSilu>
__global__ void __launch_bounds__(kThreads) ShortConvBackwardKernel(
    const ShortConvBackwardParams bp) {
  constexpr int kBlockCols = kShortConvBlockX * kN * K;  // weight entries of a block
  __shared__ float d_w_shared[kShortConvBlockY][kBlockCols];
  const ShortConvParams& p = bp.forward;
  const ConvThread ct = ThisConvThread(p);
  float d_w[K][kN];
#pragma unroll
  for (int j = 0; j < K; ++j) {
#pragma unroll
    for (int k = 0; k < kN; ++k) d_w[j][k] = 0.f;
  }
  if (ct.active) {
    float w[K][kN];
    LoadWeights<T, K>(static_cast<const T*>(p.w), ct.c, w);
    const int64_t tiles = p.batch * p.grid.tiles_per_seq;
    for (int64_t tile = ct.first_tile; tile < tiles; tile += ct.tile_step) {
      const int64_t b = tile / p.grid.tiles_per_seq;
      const int64_t t0 = (tile % p.grid.tiles_per_seq) * kShortConvTimeTile;
      ConvIo<T, K, kSilu> io{p, static_cast<const T*>(bp.d_out), static_cast<T*>(bp.d_u), b,
                             ct.c};
      ShortConvBackwardTile<K, kN, kShortConvBackwardSteps, kSilu, float>(
          w, t0, TileEnd(t0, p.time), p.time, io, d_w);
    }
  }
  // The block's weight gradient, summed over its kShortConvBlockY rows of threads in a fixed
  // order: one row of the workspace.
#pragma unroll
  for (int j = 0; j < K; ++j) {
#pragma unroll
    for (int k = 0; k < kN; ++k) {
      d_w_shared[threadIdx.y][(threadIdx.x * kN + k) * K + j] = d_w[j][k];
    }
  }
  __syncthreads();
  const int64_t block_first = static_cast<int64_t>(blockIdx.x) * kBlockCols;
  const int64_t cols = p.channels * K;
  float* partial = bp.d_w_partial + static_cast<int64_t>(blockIdx.y) * cols;
  for (int e = threadIdx.y * kShortConvBlockX + threadIdx.x; e < kBlockCols; e += kThreads) {
    if (block_first + e >= cols) break;
    float sum = 0.f;
#pragma unroll
    for (int r = 0; r < kShortConvBlockY; ++r) sum += d_w_shared[r][e];
    partial[block_first + e] = sum;
  }
}

// d_w[e] = sum over r of partial[r, e], in a fixed order.
template <typename T>
__global__ void __launch_bounds__(256)
    ShortConvWeightGradKernel(const float* __restrict__ partial, int64_t parts, int64_t cols,
                              T* __restrict__ d_w) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= cols) return;
  float sum = 0.f;
  for (int64_t r = 0; r < parts; ++r) sum += partial[r * cols + e];
  d_w[e] = FromFloat<T>(sum);
}

bool Aligned(const void* ptr, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(bytes) == 0;
}

template <typename T>
bool ParamsFit(const ShortConvParams& p) {
  const int64_t vec_bytes = kN * static_cast<int64_t>(sizeof(T));
  if (p.kernel < kShortConvMinK || p.kernel > kShortConvMaxK) return false;
  if (p.batch < 0 || p.time < 0 || p.channels <= 0 || p.channels % kN != 0) return false;
  if (p.u == nullptr || p.w == nullptr || !Aligned(p.u, vec_bytes)) return false;
  if (p.u_stride_b % kN != 0 || p.u_stride_t % kN != 0) return false;
  const ShortConvGrid& g = p.grid;
  if (g.blocks_x * kShortConvBlockX * kN < p.channels || g.blocks_x > 0x7fffffff) return false;
  if (g.blocks_y < 1 || g.blocks_y > 65535 || g.tiles_per_seq < 1) return false;
  return g.tiles_per_seq * kShortConvTimeTile >= p.time;
}

template <typename T, int K>
struct ForwardLaunch {
  static cudaError_t Run(const ShortConvParams& p, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned>(p.grid.blocks_x), static_cast<unsigned>(p.grid.blocks_y));
    const dim3 block(kShortConvBlockX, kShortConvBlockY);
    if (p.silu) {
      ShortConvForwardKernel<T, K, true><<<grid, block, 0, stream>>>(p);
    } else {
      ShortConvForwardKernel<T, K, false><<<grid, block, 0, stream>>>(p);
    }
    HYB_CUDA_TRY(cudaGetLastError());
    return cudaSuccess;
  }
};

template <typename T, int K>
struct BackwardLaunch {
  static cudaError_t Run(const ShortConvBackwardParams& bp, cudaStream_t stream) {
    const ShortConvParams& p = bp.forward;
    const dim3 grid(static_cast<unsigned>(p.grid.blocks_x), static_cast<unsigned>(p.grid.blocks_y));
    const dim3 block(kShortConvBlockX, kShortConvBlockY);
    if (p.silu) {
      ShortConvBackwardKernel<T, K, true><<<grid, block, 0, stream>>>(bp);
    } else {
      ShortConvBackwardKernel<T, K, false><<<grid, block, 0, stream>>>(bp);
    }
    HYB_CUDA_TRY(cudaGetLastError());
    return cudaSuccess;
  }
};

// Op<T, K>::Run(params, stream) for the kernel size K.
template <typename T, template <typename, int> class Op, typename Params>
cudaError_t WithKernelSize(int kernel, const Params& params, cudaStream_t stream) {
  switch (kernel) {
    case 2: return Op<T, 2>::Run(params, stream);
    case 3: return Op<T, 3>::Run(params, stream);
    case 4: return Op<T, 4>::Run(params, stream);
    case 5: return Op<T, 5>::Run(params, stream);
    case 6: return Op<T, 6>::Run(params, stream);
    case 7: return Op<T, 7>::Run(params, stream);
    case 8: return Op<T, 8>::Run(params, stream);
    default: break;
  }
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t LaunchForward(const ShortConvParams& p, cudaStream_t stream) {
  if (!ParamsFit<T>(p) || p.y == nullptr) return cudaErrorInvalidValue;
  if (p.batch > 0 && p.time > 0) {
    const cudaError_t err = WithKernelSize<T, ForwardLaunch>(p.kernel, p, stream);
    if (err != cudaSuccess) return err;  // the site is recorded inside
  }
  if (p.cache_out == nullptr || p.batch == 0) return cudaSuccess;
  if (p.time == 0) {  // the last K-1 inputs are the previous ones
    if (p.prev == nullptr) {
      HYB_CUDA_TRY(cudaMemsetAsync(p.cache_out, 0,
                                   p.batch * p.channels * (p.kernel - 1) * sizeof(T), stream));
    } else if (p.prev != p.cache_out) {
      HYB_CUDA_TRY(cudaMemcpyAsync(p.cache_out, p.prev,
                                   p.batch * p.channels * (p.kernel - 1) * sizeof(T),
                                   cudaMemcpyDeviceToDevice, stream));
    }
    return cudaSuccess;
  }
  if (p.grid.tiles_per_seq == 1) return cudaSuccess;  // written by the forward kernel
  const int64_t n = p.batch * p.channels;
  const int64_t blocks = (n + 255) / 256 < 4096 ? (n + 255) / 256 : 4096;
  ShortConvCacheCopyKernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(p);
  HYB_CUDA_TRY(cudaGetLastError());
  return cudaSuccess;
}

template <typename T>
cudaError_t LaunchBackward(const ShortConvBackwardParams& bp, cudaStream_t stream) {
  const ShortConvParams& p = bp.forward;
  if (!ParamsFit<T>(p) || bp.d_w == nullptr || bp.d_w_partial == nullptr) {
    return cudaErrorInvalidValue;
  }
  const int64_t vec_bytes = kN * static_cast<int64_t>(sizeof(T));
  if (p.batch > 0 && p.time > 0 &&
      (bp.d_out == nullptr || bp.d_u == nullptr || !Aligned(bp.d_out, vec_bytes) ||
       !Aligned(bp.d_u, vec_bytes))) {
    return cudaErrorInvalidValue;
  }
  // Every block writes its partial row (zeros when it has no tiles), so the sum below reads
  // only written rows.
  const cudaError_t err = WithKernelSize<T, BackwardLaunch>(p.kernel, bp, stream);
  if (err != cudaSuccess) return err;
  const int64_t cols = p.channels * p.kernel;
  ShortConvWeightGradKernel<T><<<static_cast<unsigned>((cols + 255) / 256), 256, 0, stream>>>(
      bp.d_w_partial, p.grid.blocks_y, cols, static_cast<T*>(bp.d_w));
  HYB_CUDA_TRY(cudaGetLastError());
  return cudaSuccess;
}

}  // namespace

cudaError_t LaunchShortConv(const ShortConvParams& params, cudaStream_t stream) {
  switch (params.type) {
    case ShortConvType::kF32: return LaunchForward<float>(params, stream);
    case ShortConvType::kBF16: return LaunchForward<__nv_bfloat16>(params, stream);
    case ShortConvType::kF16: return LaunchForward<__half>(params, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t LaunchShortConvBackward(const ShortConvBackwardParams& params, cudaStream_t stream) {
  switch (params.forward.type) {
    case ShortConvType::kF32: return LaunchBackward<float>(params, stream);
    case ShortConvType::kBF16: return LaunchBackward<__nv_bfloat16>(params, stream);
    case ShortConvType::kF16: return LaunchBackward<__half>(params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace hyb::kernels::cuda
