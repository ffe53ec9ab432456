// Batched single-token decoding steps of GLA and the gated delta rule, state in fp32.
//
// Memory-bound: each step reads and writes the whole [K, V] state once. Value columns are
// independent in both recurrences, so a block owns 32 columns of one head: 8 threads across
// them (16-byte accesses) x 32 row groups; the reductions over key rows go through warp
// shuffles and one shared-memory exchange.
#include <cuda_bf16.h>

#include "cuda_check.h"
#include "linear_attention_launch.h"

namespace hyb::kernels::cuda {
namespace {

constexpr int kCols = 32;              // value columns per block
constexpr int kColGroups = kCols / 4;  // float4 per row
constexpr int kRowGroups = 32;         // row groups per block
constexpr int kThreads = kColGroups * kRowGroups;
constexpr int kMaxKey = 256;
constexpr int kMaxRows = kMaxKey / kRowGroups;  // rows per thread at most

__device__ __forceinline__ float Load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float Load(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}
__device__ __forceinline__ void Store(float* p, int64_t i, float x) { p[i] = x; }
__device__ __forceinline__ void Store(__nv_bfloat16* p, int64_t i, float x) {
  p[i] = __float2bfloat16_rn(x);
}

// Sums `x` over the block's row groups for this thread's 4 columns; the result is valid in every
// thread of row group 0 (tid < kColGroups). `red` holds [8 warps][kCols] floats.
__device__ __forceinline__ float4 SumRows(float4 x, float* red) {
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
#pragma unroll
  for (int m = kColGroups; m < 32; m *= 2) {
    x.x += __shfl_xor_sync(0xffffffffu, x.x, m);
    x.y += __shfl_xor_sync(0xffffffffu, x.y, m);
    x.z += __shfl_xor_sync(0xffffffffu, x.z, m);
    x.w += __shfl_xor_sync(0xffffffffu, x.w, m);
  }
  if (lane < kColGroups) reinterpret_cast<float4*>(red + warp * kCols)[lane] = x;
  __syncthreads();
  float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
  if (tid < kColGroups) {
#pragma unroll
    for (int w = 0; w < kThreads / 32; ++w) {
      const float4 p = reinterpret_cast<const float4*>(red + w * kCols)[tid];
      s.x += p.x;
      s.y += p.y;
      s.z += p.z;
      s.w += p.w;
    }
  }
  __syncthreads();
  return s;
}

// kDelta = false: GLA. true: gated delta rule.
template <typename T, bool kDelta>
__global__ void __launch_bounds__(kThreads) StepKernel(const LinearStepParams p) {
  __shared__ float qs[kMaxKey], ks[kMaxKey], gs[kMaxKey];
  __shared__ __align__(16) float red[2][kThreads / 32 * kCols];
  __shared__ __align__(16) float wcol[kCols];
  const int tid = threadIdx.x, cg = tid % kColGroups, rg = tid / kColGroups;
  const int64_t bh = blockIdx.y;
  const int K = p.key_dim, V = p.value_dim;
  const int col = blockIdx.x * kCols + 4 * cg;
  const bool col_ok = col < V;  // V is a multiple of 4
  const T* q = static_cast<const T*>(p.q) + bh * K;
  const T* k = static_cast<const T*>(p.k) + bh * K;
  const T* v = static_cast<const T*>(p.v) + bh * V;
  for (int d = tid; d < K; d += kThreads) {
    qs[d] = Load(q, d);
    ks[d] = Load(k, d);
    if (!kDelta) gs[d] = expf(Load(static_cast<const T*>(p.g) + bh * K, d));
  }
  __syncthreads();
  const float* s_in = p.state + bh * K * V;
  float* s_out = p.new_state + bh * K * V;
  float4 vv = make_float4(0.f, 0.f, 0.f, 0.f);
  if (col_ok) vv = make_float4(Load(v, col), Load(v, col + 1), Load(v, col + 2), Load(v, col + 3));

  if (!kDelta) {
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int r = 0; r < kMaxRows; ++r) {
      const int d = rg + r * kRowGroups;
      if (d < K && col_ok) {
        float4 s = *reinterpret_cast<const float4*>(s_in + static_cast<int64_t>(d) * V + col);
        const float a = gs[d], kd = ks[d], qd = qs[d];
        s.x = a * s.x + kd * vv.x;
        s.y = a * s.y + kd * vv.y;
        s.z = a * s.z + kd * vv.z;
        s.w = a * s.w + kd * vv.w;
        *reinterpret_cast<float4*>(s_out + static_cast<int64_t>(d) * V + col) = s;
        acc.x += qd * s.x;
        acc.y += qd * s.y;
        acc.z += qd * s.z;
        acc.w += qd * s.w;
      }
    }
    const float4 o = SumRows(acc, red[0]);
    if (tid < kColGroups && col_ok) {
      T* out = static_cast<T*>(p.o) + bh * V;
      Store(out, col, o.x * p.scale);
      Store(out, col + 1, o.y * p.scale);
      Store(out, col + 2, o.z * p.scale);
      Store(out, col + 3, o.w * p.scale);
    }
    return;
  }

  // Gated delta: S' = a S + k w^T with w = beta (v - a S^T k); o = a S^T q + (q.k) w.
  const float a = expf(Load(static_cast<const T*>(p.g), bh));
  const float beta = Load(static_cast<const T*>(p.beta), bh);
  float4 rows[kMaxRows];
  float4 kacc = make_float4(0.f, 0.f, 0.f, 0.f), qacc = kacc;
  float qk = 0.f;
#pragma unroll
  for (int r = 0; r < kMaxRows; ++r) {
    const int d = rg + r * kRowGroups;
    rows[r] = make_float4(0.f, 0.f, 0.f, 0.f);
    if (d < K && col_ok) {
      rows[r] = *reinterpret_cast<const float4*>(s_in + static_cast<int64_t>(d) * V + col);
      const float kd = ks[d], qd = qs[d];
      kacc.x += kd * rows[r].x;
      kacc.y += kd * rows[r].y;
      kacc.z += kd * rows[r].z;
      kacc.w += kd * rows[r].w;
      qacc.x += qd * rows[r].x;
      qacc.y += qd * rows[r].y;
      qacc.z += qd * rows[r].z;
      qacc.w += qd * rows[r].w;
    }
  }
  for (int d = 0; d < K; ++d) qk += qs[d] * ks[d];  // same order in every thread
  const float4 kts = SumRows(kacc, red[0]);
  const float4 qts = SumRows(qacc, red[1]);
  if (tid < kColGroups && col_ok) {
    const float4 w = make_float4(beta * (vv.x - a * kts.x), beta * (vv.y - a * kts.y),
                                 beta * (vv.z - a * kts.z), beta * (vv.w - a * kts.w));
    reinterpret_cast<float4*>(wcol)[cg] = w;
    T* out = static_cast<T*>(p.o) + bh * V;
    Store(out, col, (a * qts.x + qk * w.x) * p.scale);
    Store(out, col + 1, (a * qts.y + qk * w.y) * p.scale);
    Store(out, col + 2, (a * qts.z + qk * w.z) * p.scale);
    Store(out, col + 3, (a * qts.w + qk * w.w) * p.scale);
  }
  __syncthreads();
  if (!col_ok) return;
  const float4 w = reinterpret_cast<const float4*>(wcol)[cg];
#pragma unroll
  for (int r = 0; r < kMaxRows; ++r) {
    const int d = rg + r * kRowGroups;
    if (d < K) {
      const float kd = ks[d];
      const float4 s = make_float4(a * rows[r].x + kd * w.x, a * rows[r].y + kd * w.y,
                                   a * rows[r].z + kd * w.z, a * rows[r].w + kd * w.w);
      *reinterpret_cast<float4*>(s_out + static_cast<int64_t>(d) * V + col) = s;
    }
  }
}

template <bool kDelta>
cudaError_t Launch(const LinearStepParams& p, cudaStream_t stream) {
  if (!LinearStepSupportsDims(p.key_dim, p.value_dim)) return cudaErrorInvalidValue;
  if (p.batch_heads == 0) return cudaSuccess;
  if (p.batch_heads > 65535) return cudaErrorInvalidValue;  // grid.y limit
  const dim3 grid(static_cast<unsigned>((p.value_dim + kCols - 1) / kCols),
                  static_cast<unsigned>(p.batch_heads));
  if (p.bf16) {
    StepKernel<__nv_bfloat16, kDelta><<<grid, kThreads, 0, stream>>>(p);
  } else {
    StepKernel<float, kDelta><<<grid, kThreads, 0, stream>>>(p);
  }
  HYB_CUDA_TRY(cudaGetLastError());
  return cudaSuccess;
}

}  // namespace

bool LinearStepSupportsDims(int key_dim, int value_dim) {
  return key_dim > 0 && key_dim <= kMaxKey && value_dim > 0 && value_dim <= 4096 &&
         value_dim % 4 == 0;
}

cudaError_t LaunchGlaStep(const LinearStepParams& params, cudaStream_t stream) {
  return Launch<false>(params, stream);
}

cudaError_t LaunchGatedDeltaStep(const LinearStepParams& params, cudaStream_t stream) {
  return Launch<true>(params, stream);
}

}  // namespace hyb::kernels::cuda
