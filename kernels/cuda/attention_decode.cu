// Split-KV ("flash-decoding") attention of one query per head over a key/value buffer.
//
// Memory-bound: every visible key and value is read once, by the block of its split, for all the
// query heads of its key/value group (GQA). Inside a block, D / 8 threads share a key: each loads
// 8 of its dims (16 bytes in bf16/fp16) of the key and of the value, forms partial dot products
// with the queries it holds in registers and sums them across its threads with shuffles. Each
// thread group keeps an online softmax (running maximum, sum and numerator, base-2 exponentials)
// over the keys it visits; the block then merges its groups into one partial per query head, and
// a second kernel merges the splits.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "attention_decode_launch.h"
#include "cuda_check.h"

namespace hyb::kernels::cuda {
namespace {

constexpr int kThreads = kAttentionDecodeThreads;
constexpr int kWarps = kThreads / 32;
constexpr int kCombineThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;

// 8 consecutive elements as loaded (16 bytes for 2-byte types, 32 for fp32).
template <typename T>
struct Raw8 {
  uint4 a;
};
template <>
struct Raw8<float> {
  float4 a, b;
};

template <typename T>
__device__ __forceinline__ Raw8<T> Load8(const T* p) {
  Raw8<T> r;
  r.a = __ldg(reinterpret_cast<const uint4*>(p));
  return r;
}
template <>
__device__ __forceinline__ Raw8<float> Load8(const float* p) {
  Raw8<float> r;
  r.a = __ldg(reinterpret_cast<const float4*>(p));
  r.b = __ldg(reinterpret_cast<const float4*>(p) + 1);
  return r;
}

template <typename T>
__device__ __forceinline__ Raw8<T> Zero8() {
  Raw8<T> r;
  r.a = make_uint4(0u, 0u, 0u, 0u);
  return r;
}
template <>
__device__ __forceinline__ Raw8<float> Zero8() {
  Raw8<float> r;
  r.a = make_float4(0.f, 0.f, 0.f, 0.f);
  r.b = r.a;
  return r;
}

__device__ __forceinline__ float2 Pair(uint32_t x, const __nv_bfloat16*) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&x));
}
__device__ __forceinline__ float2 Pair(uint32_t x, const __half*) {
  return __half22float2(*reinterpret_cast<const __half2*>(&x));
}

template <typename T>
__device__ __forceinline__ void ToFloat(const Raw8<T>& r, float (&f)[8]) {
  const uint32_t w[4] = {r.a.x, r.a.y, r.a.z, r.a.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = Pair(w[i], static_cast<const T*>(nullptr));
    f[2 * i] = x.x;
    f[2 * i + 1] = x.y;
  }
}
template <>
__device__ __forceinline__ void ToFloat(const Raw8<float>& r, float (&f)[8]) {
  f[0] = r.a.x;
  f[1] = r.a.y;
  f[2] = r.a.z;
  f[3] = r.a.w;
  f[4] = r.b.x;
  f[5] = r.b.y;
  f[6] = r.b.z;
  f[7] = r.b.w;
}

__device__ __forceinline__ void StoreOne(float* p, float x) { *p = x; }
__device__ __forceinline__ void StoreOne(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }
__device__ __forceinline__ void StoreOne(__half* p, float x) { *p = __float2half_rn(x); }

// The last visible key, from device memory when the launch replays with a moving position.
__device__ __forceinline__ int64_t LastKey(const AttentionDecodeParams& p) {
  return p.key_end != nullptr ? *p.key_end : p.last_key;
}

// One block: split blockIdx.x, head chunk blockIdx.y (key/value head blockIdx.y / head_chunks),
// batch row blockIdx.z. kLanes = D / 8 threads per key; kHeads >= the chunk's query heads.
// Workspace: numerators [B, H, S, D], maxima [B, H, S], sums [B, H, S] (fp32, base 2).
template <typename T, int kLanes, int kHeads>
__global__ void __launch_bounds__(kThreads, kHeads >= 8 ? 1 : 2)
    SplitKernel(const AttentionDecodeParams p) {
  constexpr int kGroups = kThreads / kLanes;  // keys in flight per unrolled step
  // Keys per thread in flight: 4 where the registers allow two resident blocks per
  // multiprocessor, fewer for 8 heads (one block) and fp32 (twice the load registers).
  constexpr int kUnroll = kHeads >= 8 || (sizeof(T) == 4 && kHeads >= 4) ? 2 : 4;
  constexpr int kDim = kLanes * 8;
  constexpr float kNegInf = -INFINITY;
  __shared__ float red_max[kWarps][kHeads];
  __shared__ float red_sum[kWarps][kHeads];
  __shared__ __align__(16) float red_acc[kWarps][kDim];

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int li = tid % kLanes, gi = tid / kLanes;
  const int64_t split = blockIdx.x, b = blockIdx.z;
  const int64_t kvh = blockIdx.y / p.plan.head_chunks, chunk = blockIdx.y % p.plan.head_chunks;
  const int64_t group = p.heads / p.kv_heads;
  const int64_t h0 = kvh * group + chunk * p.plan.chunk_heads;  // first query head served
  const int64_t rest = group - chunk * p.plan.chunk_heads;
  const int n_heads = static_cast<int>(rest < p.plan.chunk_heads ? rest : p.plan.chunk_heads);
  const int64_t num_splits = p.plan.num_splits;
  float* part_acc = static_cast<float*>(p.workspace);
  float* part_max = part_acc + p.batch * p.heads * num_splits * kDim;
  float* part_sum = part_max + p.batch * p.heads * num_splits;
  // Partial row of head h0 + j: row0 + j * num_splits.
  const int64_t row0 = (b * p.heads + h0) * num_splits + split;

  const KeyRange keys =
      SplitKeys(VisibleKeys(LastKey(p), p.window, p.capacity), split, p.plan.split_size);
  if (keys.begin >= keys.end) {
    if (tid < n_heads) {
      part_max[row0 + tid * num_splits] = kNegInf;
      part_sum[row0 + tid * num_splits] = 0.f;
    }
    return;
  }

  // This thread's 8 dims of each query, scaled so that exp2 of the score is the softmax weight.
  const float qscale = p.scale * kLog2e;
  float q[kHeads][8];
#pragma unroll
  for (int j = 0; j < kHeads; ++j) {
    if (j < n_heads) {
      const T* qp = static_cast<const T*>(p.q) + ((b * p.heads + h0 + j) * kDim + li * 8);
      ToFloat(Load8(qp), q[j]);
#pragma unroll
      for (int i = 0; i < 8; ++i) q[j][i] *= qscale;
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) q[j][i] = 0.f;
    }
  }

  const T* kp = static_cast<const T*>(p.k) + b * p.k_batch_stride + kvh * p.k_head_stride + li * 8;
  const T* vp = static_cast<const T*>(p.v) + b * p.v_batch_stride + kvh * p.v_head_stride + li * 8;
  float m[kHeads], l[kHeads], acc[kHeads][8];
#pragma unroll
  for (int j = 0; j < kHeads; ++j) {
    m[j] = kNegInf;
    l[j] = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[j][i] = 0.f;
  }

  // Every thread runs the same number of steps (the shuffles below need the whole warp); keys
  // past the split's end are masked.
  for (int64_t step = keys.begin; step < keys.end; step += kGroups * kUnroll) {
    Raw8<T> kr[kUnroll], vr[kUnroll];
    bool valid[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t key = step + gi + u * kGroups;
      valid[u] = key < keys.end;
      if (valid[u]) {
        kr[u] = Load8(kp + key * p.k_token_stride);
        vr[u] = Load8(vp + key * p.v_token_stride);
      } else {
        kr[u] = Zero8<T>();
        vr[u] = Zero8<T>();
      }
    }
    float s[kUnroll][kHeads];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float kf[8];
      ToFloat(kr[u], kf);
#pragma unroll
      for (int j = 0; j < kHeads; ++j) {
        float x = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) x = fmaf(q[j][i], kf[i], x);
        s[u][j] = x;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int j = 0; j < kHeads; ++j) {
#pragma unroll
        for (int o = kLanes / 2; o > 0; o /= 2) s[u][j] += __shfl_xor_sync(0xffffffffu, s[u][j], o);
        if (!valid[u]) s[u][j] = kNegInf;
      }
    }
#pragma unroll
    for (int j = 0; j < kHeads; ++j) {
      float mx = s[0][j];
#pragma unroll
      for (int u = 1; u < kUnroll; ++u) mx = fmaxf(mx, s[u][j]);
      if (mx > m[j]) {  // the same in all threads of a key group
        const float c = exp2f(m[j] - mx);  // 0 for the first key (m = -inf)
        l[j] *= c;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[j][i] *= c;
        m[j] = mx;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float vf[8];
      ToFloat(vr[u], vf);
#pragma unroll
      for (int j = 0; j < kHeads; ++j) {
        const float w = valid[u] ? exp2f(s[u][j] - m[j]) : 0.f;
        l[j] += w;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[j][i] = fmaf(w, vf[i], acc[j][i]);
      }
    }
  }

  // Merge the key groups: the block's maximum per head, then everyone rescales to it and sums.
#pragma unroll
  for (int j = 0; j < kHeads; ++j) {
    float x = m[j];
#pragma unroll
    for (int o = kLanes; o < 32; o *= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    if (lane == 0) red_max[warp][j] = x;
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kHeads; ++j) {
    float mb = red_max[0][j];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) mb = fmaxf(mb, red_max[w][j]);
    // mb is finite: the split holds a visible key, which every head's row has seen.
    const float c = m[j] == kNegInf ? 0.f : exp2f(m[j] - mb);
    float x = l[j] * c;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[j][i] *= c;
    // l is the same in the kLanes threads of a group: sum one copy per group.
#pragma unroll
    for (int o = kLanes; o < 32; o *= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
    if (lane == 0) red_sum[warp][j] = x;
  }
  __syncthreads();
  if (tid < n_heads) {
    float mb = red_max[0][tid], sum = red_sum[0][tid];
    for (int w = 1; w < kWarps; ++w) {
      mb = fmaxf(mb, red_max[w][tid]);
      sum += red_sum[w][tid];
    }
    part_max[row0 + tid * num_splits] = mb;
    part_sum[row0 + tid * num_splits] = sum;
  }
#pragma unroll
  for (int j = 0; j < kHeads; ++j) {
    if (j >= n_heads) break;  // uniform across the block
#pragma unroll
    for (int i = 0; i < 8; ++i) {
#pragma unroll
      for (int o = kLanes; o < 32; o *= 2) acc[j][i] += __shfl_xor_sync(0xffffffffu, acc[j][i], o);
    }
    if (lane < kLanes) {
      float4* dst = reinterpret_cast<float4*>(&red_acc[warp][li * 8]);
      dst[0] = make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]);
      dst[1] = make_float4(acc[j][4], acc[j][5], acc[j][6], acc[j][7]);
    }
    __syncthreads();
    for (int d = tid; d < kDim; d += kThreads) {
      float x = red_acc[0][d];
#pragma unroll
      for (int w = 1; w < kWarps; ++w) x += red_acc[w][d];
      part_acc[(row0 + j * num_splits) * kDim + d] = x;
    }
    __syncthreads();
  }
}

__device__ __forceinline__ float BlockMax(float x, float* red) {
  for (int o = 16; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) red[warp] = x;
  __syncthreads();
  float r = red[0];
  for (int w = 1; w < kCombineThreads / 32; ++w) r = fmaxf(r, red[w]);
  __syncthreads();
  return r;
}

__device__ __forceinline__ float BlockSum(float x, float* red) {
  for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) red[warp] = x;
  __syncthreads();
  float r = red[0];
  for (int w = 1; w < kCombineThreads / 32; ++w) r += red[w];
  __syncthreads();
  return r;
}

// One block per (batch row, query head) = blockIdx.x: o = sum_s 2^(m_s - M) acc_s /
// sum_s 2^(m_s - M) l_s with M = max_s m_s; splits with m_s = -inf (no visible key, numerator
// not written) weigh 0. A fixed summation order: the result does not depend on timing.
template <typename T>
__global__ void __launch_bounds__(kCombineThreads) CombineKernel(const AttentionDecodeParams p) {
  __shared__ float weight[kAttentionDecodeMaxSplits];
  __shared__ float red[kCombineThreads / 32];
  const int64_t row = blockIdx.x, num_splits = p.plan.num_splits, dim = p.head_dim;
  const float* part_acc = static_cast<const float*>(p.workspace);
  const float* part_max = part_acc + p.batch * p.heads * num_splits * dim + row * num_splits;
  const float* part_sum =
      part_acc + p.batch * p.heads * num_splits * (dim + 1) + row * num_splits;
  part_acc += row * num_splits * dim;
  float mx = -INFINITY;
  for (int64_t s = threadIdx.x; s < num_splits; s += kCombineThreads) mx = fmaxf(mx, part_max[s]);
  mx = BlockMax(mx, red);
  float sum = 0.f;
  for (int64_t s = threadIdx.x; s < num_splits; s += kCombineThreads) {
    const float ms = part_max[s];
    const float w = ms == -INFINITY ? 0.f : exp2f(ms - mx);
    weight[s] = w;
    if (w != 0.f) sum += w * part_sum[s];
  }
  sum = BlockSum(sum, red);  // also orders the weight writes before the reads below
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  T* out = static_cast<T*>(p.o) + row * dim;
  for (int64_t d = threadIdx.x; d < dim; d += kCombineThreads) {
    float x = 0.f;
    for (int64_t s = 0; s < num_splits; ++s) {
      const float w = weight[s];
      if (w != 0.f) x = fmaf(w, part_acc[s * dim + d], x);
    }
    StoreOne(out + d, x * inv);
  }
}

template <typename T, int kLanes>
cudaError_t LaunchSplit(const AttentionDecodeParams& p, dim3 grid, cudaStream_t stream) {
  switch (p.plan.block_heads) {
    case 1:
      SplitKernel<T, kLanes, 1><<<grid, kThreads, 0, stream>>>(p);
      break;
    case 2:
      SplitKernel<T, kLanes, 2><<<grid, kThreads, 0, stream>>>(p);
      break;
    case 4:
      SplitKernel<T, kLanes, 4><<<grid, kThreads, 0, stream>>>(p);
      break;
    case 8:
      SplitKernel<T, kLanes, 8><<<grid, kThreads, 0, stream>>>(p);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  HYB_CUDA_TRY(cudaGetLastError());
  return cudaSuccess;
}

template <typename T>
cudaError_t LaunchTyped(const AttentionDecodeParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(p.plan.num_splits),
                  static_cast<unsigned>(p.kv_heads * p.plan.head_chunks),
                  static_cast<unsigned>(p.batch));
  cudaError_t err = cudaErrorInvalidValue;
  switch (p.head_dim) {
    case 8:
      err = LaunchSplit<T, 1>(p, grid, stream);
      break;
    case 16:
      err = LaunchSplit<T, 2>(p, grid, stream);
      break;
    case 32:
      err = LaunchSplit<T, 4>(p, grid, stream);
      break;
    case 64:
      err = LaunchSplit<T, 8>(p, grid, stream);
      break;
    case 128:
      err = LaunchSplit<T, 16>(p, grid, stream);
      break;
    case 256:
      err = LaunchSplit<T, 32>(p, grid, stream);
      break;
    default:
      break;
  }
  if (err != cudaSuccess) return err;
  CombineKernel<T><<<static_cast<unsigned>(p.batch * p.heads), kCombineThreads, 0, stream>>>(p);
  HYB_CUDA_TRY(cudaGetLastError());
  return cudaSuccess;
}

}  // namespace

cudaError_t LaunchAttentionDecode(const AttentionDecodeParams& p, cudaStream_t stream) {
  if (!AttentionDecodeSupportsDim(p.head_dim) || p.kv_heads <= 0 || p.heads % p.kv_heads != 0 ||
      p.capacity <= 0) {
    return cudaErrorInvalidValue;
  }
  if (p.batch == 0 || p.heads == 0) return cudaSuccess;
  const int64_t group = p.heads / p.kv_heads;
  const AttentionDecodePlan& plan = p.plan;
  if (plan.head_chunks < 1 || plan.chunk_heads < 1 || plan.chunk_heads > plan.block_heads ||
      plan.head_chunks * plan.chunk_heads < group ||
      (plan.head_chunks - 1) * plan.chunk_heads >= group || plan.split_size < 1 ||
      plan.num_splits < 1 || plan.num_splits > kAttentionDecodeMaxSplits ||
      plan.num_splits * plan.split_size < p.capacity) {
    return cudaErrorInvalidValue;
  }
  if (p.batch > 65535 || p.kv_heads * plan.head_chunks > 65535 ||
      p.batch * p.heads > 0x7fffffff) {
    return cudaErrorInvalidValue;
  }
  switch (p.type) {
    case AttentionDecodeType::kFloat32:
      return LaunchTyped<float>(p, stream);
    case AttentionDecodeType::kBFloat16:
      return LaunchTyped<__nv_bfloat16>(p, stream);
    case AttentionDecodeType::kFloat16:
      return LaunchTyped<__half>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace hyb::kernels::cuda
