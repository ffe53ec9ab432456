// Fused RMSNorm: one block per row. Numerics of transformers' LlamaRMSNorm: the mean of squares
// accumulates in fp32, x * rsqrt(mean + eps) is rounded to the input type, then multiplied by
// the weight and rounded again.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "float_convert.cuh"
#include "rms_norm_launch.h"

namespace hyb::kernels::cuda {
namespace {

template <typename T>
__global__ void RmsNormKernel(const T* __restrict__ x, const T* __restrict__ w,
                              T* __restrict__ y, int64_t cols, float eps) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * cols;
  T* yr = y + row * cols;
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const float v = ToFloat(xr[i]);
    sum += v * v;
  }
  // Warp reduction, then across warps through shared memory.
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  __shared__ float warp_sums[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = sum;
  __syncthreads();
  if (warp == 0) {
    const int num_warps = (blockDim.x + 31) / 32;
    sum = lane < num_warps ? warp_sums[lane] : 0.f;
    for (int offset = 16; offset > 0; offset /= 2) {
      sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    }
    if (lane == 0) warp_sums[0] = sum;
  }
  __syncthreads();
  const float inv = rsqrtf(warp_sums[0] / static_cast<float>(cols) + eps);
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const T normed = FromFloat<T>(ToFloat(xr[i]) * inv);
    yr[i] = FromFloat<T>(ToFloat(w[i]) * ToFloat(normed));
  }
}

template <typename T>
cudaError_t Launch(const RmsNormParams& p, cudaStream_t stream) {
  const int threads = RmsNormBlockSize(p.cols);
  RmsNormKernel<T><<<static_cast<unsigned>(p.rows), threads, 0, stream>>>(
      static_cast<const T*>(p.x), static_cast<const T*>(p.weight), static_cast<T*>(p.y), p.cols,
      p.eps);
  return cudaGetLastError();
}

}  // namespace

int RmsNormBlockSize(int64_t cols) {
  int threads = 32;
  while (threads < 1024 && threads < cols) threads *= 2;
  return threads;
}

cudaError_t LaunchRmsNorm(const RmsNormParams& params, cudaStream_t stream) {
  if (params.rows == 0 || params.cols == 0) return cudaSuccess;
  switch (params.type) {
    case ElemType::kF32: return Launch<float>(params, stream);
    case ElemType::kBF16: return Launch<__nv_bfloat16>(params, stream);
    case ElemType::kF16: return Launch<__half>(params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace hyb::kernels::cuda
