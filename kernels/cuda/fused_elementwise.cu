// Fused elementwise kernels of the model runtime (fused_elementwise_launch.h). Each rounds to bf16
// exactly where the LibTorch composition it replaces does (every ATen bf16 op computes in fp32
// and rounds its result), so outputs are bit-identical to it:
//   rotary: out = x * cos + cat(-x2, x1) * sin   (three roundings per element: two products, sum)
//   silu-mul: out = silu(gate) * up               (silu rounded, then the product)
#include <cuda_bf16.h>

#include "cuda_check.h"
#include "fused_elementwise_launch.h"

namespace hyb::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float Round(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

// One thread: two adjacent columns j, j + 1 of the first half and their partners j + D/2, j + 1 +
// D/2.
__global__ void RotaryKernel(const RotaryParams p) {
  const int64_t half = p.dim / 2, pairs = half / 2;
  const int64_t total = p.batch * p.heads * p.tokens * pairs;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = (i % pairs) * 2;
    const int64_t row = i / pairs;
    const int64_t t = row % p.tokens, h = (row / p.tokens) % p.heads,
                  b = row / (p.tokens * p.heads);
    const auto* x = static_cast<const __nv_bfloat16*>(p.x) + b * p.sb + h * p.sh + t * p.st;
    auto* o = static_cast<__nv_bfloat16*>(p.out) + b * p.ob + h * p.oh + t * p.ot;
    const auto* c = static_cast<const __nv_bfloat16*>(p.cos) + t * p.dim;
    const auto* s = static_cast<const __nv_bfloat16*>(p.sin) + t * p.dim;
    const float2 x1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(x + j));
    const float2 x2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(x + half + j));
    const float2 c1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(c + j));
    const float2 c2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(c + half + j));
    const float2 s1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(s + j));
    const float2 s2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(s + half + j));
    // First half: x1 cos - x2 sin; second half: x2 cos + x1 sin (negation is exact in bf16).
    const float2 lo = make_float2(Round(x1.x * c1.x) + Round(-x2.x * s1.x),
                                  Round(x1.y * c1.y) + Round(-x2.y * s1.y));
    const float2 hi = make_float2(Round(x2.x * c2.x) + Round(x1.x * s2.x),
                                  Round(x2.y * c2.y) + Round(x1.y * s2.y));
    *reinterpret_cast<__nv_bfloat162*>(o + j) = __float22bfloat162_rn(lo);
    *reinterpret_cast<__nv_bfloat162*>(o + half + j) = __float22bfloat162_rn(hi);
  }
}

__device__ __forceinline__ float SiluMul(__nv_bfloat16 g, __nv_bfloat16 u) {
  const float x = __bfloat162float(g);
  return Round(x / (1.0f + expf(-x))) * __bfloat162float(u);
}

// Eight elements per thread through 16-byte accesses where the pointers allow, else one.
__global__ void SiluMulKernel(const __nv_bfloat16* gate, const __nv_bfloat16* up,
                              __nv_bfloat16* out, int64_t n, bool vec) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t nvec = vec ? n / 8 : 0;
  for (int64_t v = first; v < nvec; v += stride) {
    const uint4 g4 = reinterpret_cast<const uint4*>(gate)[v];
    const uint4 u4 = reinterpret_cast<const uint4*>(up)[v];
    const auto* g = reinterpret_cast<const __nv_bfloat16*>(&g4);
    const auto* u = reinterpret_cast<const __nv_bfloat16*>(&u4);
    uint4 o4;
    auto* o = reinterpret_cast<__nv_bfloat16*>(&o4);
#pragma unroll
    for (int e = 0; e < 8; ++e) o[e] = __float2bfloat16_rn(SiluMul(g[e], u[e]));
    reinterpret_cast<uint4*>(out)[v] = o4;
  }
  for (int64_t i = nvec * 8 + first; i < n; i += stride) {
    out[i] = __float2bfloat16_rn(SiluMul(gate[i], up[i]));
  }
}

int Blocks(int64_t work) {
  const int64_t b = (work + kThreads - 1) / kThreads;
  return static_cast<int>(b < 1 ? 1 : b > 65535 * 8 ? 65535 * 8 : b);
}

}  // namespace

cudaError_t LaunchRotaryBf16(const RotaryParams& p, cudaStream_t stream) {
  const int64_t work = p.batch * p.heads * p.tokens * (p.dim / 4);
  if (work == 0) return cudaSuccess;
  RotaryKernel<<<Blocks(work), kThreads, 0, stream>>>(p);
  HYB_CUDA_TRY(cudaGetLastError());
  return cudaSuccess;
}

cudaError_t LaunchSiluMulBf16(const void* gate, const void* up, void* out, int64_t n,
                              cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  const bool vec = aligned(gate) && aligned(up) && aligned(out);
  SiluMulKernel<<<Blocks(vec ? (n + 7) / 8 : n), kThreads, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(gate), static_cast<const __nv_bfloat16*>(up),
      static_cast<__nv_bfloat16*>(out), n, vec);
  HYB_CUDA_TRY(cudaGetLastError());
  return cudaSuccess;
}

}  // namespace hyb::kernels::cuda
