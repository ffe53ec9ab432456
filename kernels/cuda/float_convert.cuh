// fp32 <-> element type conversions the elementwise CUDA kernels (RMSNorm, short convolution)
// share: ToFloat / FromFloat<T> for float, bf16 and fp16, and Round<T>, a value rounded to T as
// the ATen reference's intermediate tensors in the input type are.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace hyb::kernels::cuda {

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) { return __float2half(v); }

// v rounded to T.
template <typename T>
__device__ __forceinline__ float Round(float v) {
  return ToFloat(FromFloat<T>(v));
}

}  // namespace hyb::kernels::cuda
