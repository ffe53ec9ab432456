// Chunked Gated DeltaNet forward for sm_80+ (sized for sm_90's shared memory): bf16 q/k/v/o,
// fp32 gates, betas, states and arithmetic (SIMT).
//
// Recurrence per (batch, head), with a_t = e^{g_t} (g_t <= 0) and beta_t in (0, 1):
//   S_t = a_t S_{t-1} + k_t (beta_t (v_t - a_t S_{t-1}^T k_t))^T,   o_t = scale * S_t^T q_t.
// One thread block walks the chunks (C = 64 tokens) of one sequence in order, keeping a [K, W]
// slice of the state's value columns in shared memory (the columns are independent given k, g and
// beta: W = V where its layout fits sm_90's 227 KB per block, else the widest of 128, 64, 32 that
// does (K = 128, V = 256: 128; K = 256: 32), or W = 32 when there are too few (batch, head) pairs
// to fill the device). K, V in {64, 128, 256}. Per chunk,
// with S0 the state at its start and b_t the cumulative log decay inside it (b_t includes g_t), as
// in kernels::GatedDeltaChunked:
//   L[t, s] = beta_t e^{b_t - b_s} (k_t . k_s)                  (s < t; unit lower triangular)
//   w_t     = beta_t (v_t - e^{b_t} S0^T k_t) - sum_{s<t} L[t, s] w_s      (forward substitution)
//   o_t     = scale (e^{b_t} S0^T q_t + sum_{s<=t} e^{b_t - b_s} (q_t . k_s) w_s)
//   S      <- e^{b_C} S0 + sum_s e^{b_C - b_s} k_s w_s^T
// Every exponent is a difference b_t - b_s with s <= t (or b_t itself): never positive, so no
// overflow whatever the gates. A partial last chunk is padded with q = k = v = 0, beta = g = 0,
// which leaves outputs and state unchanged.
#include <cuda_bf16.h>

#include <cmath>

#include "cuda_check.h"
#include "linear_attention_launch.h"
#include "varlen_seqs.cuh"

namespace hyb::kernels::cuda {
namespace {

constexpr int kC = kGatedDeltaChunk;  // tokens per chunk
constexpr int kThreads = 256;

struct GatedDeltaArgs {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  const float* g;
  const float* beta;
  const float* initial_state;  // or null (zeros)
  __nv_bfloat16* o;
  float* final_state;
  float* chunk_states;  // [BH, N + 1, K, V] or null (packed: per sequence, VarlenSeqs)
  int64_t tokens;
  int64_t heads;
  float scale;
  VarlenSeqs varlen;  // packed sequences, or none
};

// Shared-memory layout (in floats). q and k rows, and the C x C matrices' rows, are padded by one
// float so that threads walking a column hit distinct banks.
template <int K, int W>
struct GatedDeltaLayout {
  static constexpr int kKs = K + 1;                  // row stride of q and k
  static constexpr int kCs = kC + 1;                 // row stride of the C x C matrices
  static constexpr int kState = 0;                   // [K][W] state columns
  static constexpr int kQ = kState + K * W;          // [C][K + 1] queries
  static constexpr int kK = kQ + kC * kKs;           // [C][K + 1] keys
  static constexpr int kW = kK + kC * kKs;           // [C][W] values, then pseudo-values
  static constexpr int kLower = kW + kC * W;         // [C][C + 1] L (strictly lower part)
  static constexpr int kScores = kLower + kC * kCs;  // [C][C + 1] e^{b_t - b_s} q_t . k_s
  static constexpr int kB = kScores + kC * kCs;      // [C] cumulative log decay b_t
  static constexpr int kBeta = kB + kC;              // [C] beta_t
  static constexpr int kGamma = kBeta + kC;          // [C] e^{b_t}
  static constexpr int kToEnd = kGamma + kC;         // [C] e^{b_C - b_t}
  static constexpr int kFloats = kToEnd + kC;
  static constexpr size_t kBytes = static_cast<size_t>(kFloats) * sizeof(float);
};

// One block per (batch, head, slice of W value columns): walks every chunk of the sequence.
template <int K, int V, int W>
__global__ void __launch_bounds__(kThreads, 1) GatedDeltaChunkKernel(const GatedDeltaArgs a) {
  static_assert(V % W == 0);
  using L = GatedDeltaLayout<K, W>;
  constexpr int kSlices = V / W;
  constexpr int kKs = L::kKs, kCs = L::kCs;
  extern __shared__ __align__(16) float smem[];
  float* state = smem + L::kState;
  float* qs = smem + L::kQ;
  float* ks = smem + L::kK;
  float* w = smem + L::kW;
  float* lower = smem + L::kLower;
  float* scores = smem + L::kScores;
  float* b = smem + L::kB;
  float* beta = smem + L::kBeta;
  float* gamma = smem + L::kGamma;
  float* to_end = smem + L::kToEnd;

  const int tid = static_cast<int>(threadIdx.x);
  const int64_t bh = blockIdx.x / kSlices;
  const int col0 = static_cast<int>(blockIdx.x % kSlices) * W;  // first value column
  const SeqSpan sq = SeqOf(a.varlen, bh, a.heads, a.tokens, kC);
  const int64_t tokens = sq.tokens;
  const int64_t first = sq.row * a.tokens + sq.token0;  // token row of the sequence's token 0
  const __nv_bfloat16* q = a.q + first * K;
  const __nv_bfloat16* k = a.k + first * K;
  const __nv_bfloat16* v = a.v + first * V + col0;
  const float* g = a.g + first;
  const float* bt = a.beta + first;
  __nv_bfloat16* o = a.o + first * V + col0;
  const float* s0 = a.initial_state != nullptr ? a.initial_state + bh * K * V + col0 : nullptr;
  float* s1 = a.final_state + bh * K * V + col0;

  for (int i = tid; i < K * W; i += kThreads) {
    state[i] = s0 != nullptr ? s0[(i / W) * V + i % W] : 0.f;
  }
  __syncthreads();
  const int64_t nchunks = sq.nchunks;
  float* cs = a.chunk_states != nullptr ? a.chunk_states + sq.state_slot * K * V + col0 : nullptr;
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t t0 = c * kC;
    if (cs != nullptr) {
      // The state at the chunk start, for the backward (complete: the last barrier of the
      // previous chunk, or of the initial load below, is behind us).
      for (int i = tid; i < K * W; i += kThreads) cs[c * K * V + (i / W) * V + i % W] = state[i];
    }
    const int len = static_cast<int>(tokens - t0 < kC ? tokens - t0 : kC);
    // Load the chunk (zeros past the sequence's end).
    for (int i = tid; i < kC * K; i += kThreads) {
      const int t = i / K, d = i % K;
      const bool in = t < len;
      qs[t * kKs + d] = in ? __bfloat162float(q[(t0 + t) * K + d]) : 0.f;
      ks[t * kKs + d] = in ? __bfloat162float(k[(t0 + t) * K + d]) : 0.f;
    }
    for (int i = tid; i < kC * W; i += kThreads) {
      const int t = i / W, j = i % W;
      w[i] = t < len ? __bfloat162float(v[(t0 + t) * V + j]) : 0.f;
    }
    if (tid < kC) {
      b[tid] = tid < len ? g[t0 + tid] : 0.f;
      beta[tid] = tid < len ? bt[t0 + tid] : 0.f;
    }
    __syncthreads();
    if (tid == 0) {
      for (int t = 1; t < kC; ++t) b[t] += b[t - 1];
    }
    __syncthreads();
    if (tid < kC) {
      gamma[tid] = expf(b[tid]);
      to_end[tid] = expf(b[kC - 1] - b[tid]);
    }
    // L and the decayed scores (thread i: row t = i / C, column s = i % C).
    for (int i = tid; i < kC * kC; i += kThreads) {
      const int t = i / kC, s = i % kC;
      float kk = 0.f, qk = 0.f;
      if (s <= t) {
        for (int d = 0; d < K; ++d) {
          const float ksd = ks[s * kKs + d];
          kk += ks[t * kKs + d] * ksd;
          qk += qs[t * kKs + d] * ksd;
        }
        const float decay = expf(b[t] - b[s]);
        kk *= decay;
        qk *= decay;
      }
      lower[t * kCs + s] = s < t ? beta[t] * kk : 0.f;
      scores[t * kCs + s] = qk;
    }
    // Right-hand side beta_t (v_t - e^{b_t} S0^T k_t), in place of v.
    for (int i = tid; i < kC * W; i += kThreads) {
      const int t = i / W, j = i % W;
      float acc = 0.f;
      for (int d = 0; d < K; ++d) acc += ks[t * kKs + d] * state[d * W + j];
      w[i] = beta[t] * (w[i] - expf(b[t]) * acc);
    }
    __syncthreads();
    // Forward substitution, one thread per value column (columns are independent).
    for (int j = tid; j < W; j += kThreads) {
      for (int t = 1; t < kC; ++t) {
        float acc = 0.f;
        for (int s = 0; s < t; ++s) acc += lower[t * kCs + s] * w[s * W + j];
        w[t * W + j] -= acc;
      }
    }
    __syncthreads();
    // Outputs of the chunk's valid tokens.
    for (int i = tid; i < len * W; i += kThreads) {
      const int t = i / W, j = i % W;
      float inter = 0.f, intra = 0.f;
      for (int d = 0; d < K; ++d) inter += qs[t * kKs + d] * state[d * W + j];
      for (int s = 0; s <= t; ++s) intra += scores[t * kCs + s] * w[s * W + j];
      o[(t0 + t) * V + j] = __float2bfloat16_rn(a.scale * (gamma[t] * inter + intra));
    }
    __syncthreads();
    // State at the chunk's end.
    const float decay_all = gamma[kC - 1];
    for (int i = tid; i < K * W; i += kThreads) {
      const int d = i / W, j = i % W;
      float acc = 0.f;
      for (int s = 0; s < kC; ++s) acc += ks[s * kKs + d] * to_end[s] * w[s * W + j];
      state[i] = decay_all * state[i] + acc;
    }
    __syncthreads();
  }
  for (int i = tid; i < K * W; i += kThreads) {
    s1[(i / W) * V + i % W] = state[i];
    if (cs != nullptr) cs[nchunks * K * V + (i / W) * V + i % W] = state[i];
  }
}

template <int K, int V, int W>
cudaError_t LaunchSlices(const GatedDeltaArgs& a, int64_t batch_heads, cudaStream_t stream) {
  using L = GatedDeltaLayout<K, W>;
  HYB_CUDA_TRY(cudaFuncSetAttribute(GatedDeltaChunkKernel<K, V, W>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, L::kBytes));
  GatedDeltaChunkKernel<K, V, W>
      <<<static_cast<unsigned>(batch_heads * (V / W)), kThreads, L::kBytes, stream>>>(a);
  HYB_CUDA_TRY(cudaGetLastError());
  return cudaSuccess;
}

template <int K, int V>
cudaError_t LaunchDims(const GatedDeltaChunkedParams& p, cudaStream_t stream) {
  // V where it fits (every pair with K, V <= 128, and K = 64 with V = 256), else 128, 64 or 32
  // (K = 256 takes 32 columns).
  constexpr int kWide = GatedDeltaWidestSlice<GatedDeltaLayout, K, V>();
  static_assert(GatedDeltaLayout<K, kWide>::kBytes <= kGatedDeltaMaxBlockSmem);
  static_assert(GatedDeltaLayout<K, kGatedDeltaSliceColumns>::kBytes <= kGatedDeltaMaxBlockSmem);
  GatedDeltaArgs a{};
  a.q = static_cast<const __nv_bfloat16*>(p.q);
  a.k = static_cast<const __nv_bfloat16*>(p.k);
  a.v = static_cast<const __nv_bfloat16*>(p.v);
  a.g = p.g;
  a.beta = p.beta;
  a.initial_state = p.initial_state;
  a.o = static_cast<__nv_bfloat16*>(p.o);
  a.final_state = p.final_state;
  a.chunk_states = p.chunk_states;
  a.tokens = p.tokens;
  a.heads = p.heads;
  a.scale = p.scale;
  a.varlen = p.varlen;
  const int64_t bh = p.batch * p.heads;
  if (GatedDeltaColumnSlices(bh, V, p.num_sms) > 1) {
    return LaunchSlices<K, V, kGatedDeltaSliceColumns>(a, bh, stream);
  }
  return LaunchSlices<K, V, kWide>(a, bh, stream);
}

}  // namespace

bool GatedDeltaChunkedSupportsDims(int key_dim, int value_dim) {
  auto ok = [](int d) { return d == 64 || d == 128 || d == 256; };
  return ok(key_dim) && ok(value_dim);
}

int GatedDeltaColumnSlices(int64_t batch_heads, int value_dim, int num_sms) {
  return batch_heads < num_sms ? value_dim / kGatedDeltaSliceColumns : 1;
}

cudaError_t LaunchGatedDeltaChunked(const GatedDeltaChunkedParams& p, cudaStream_t stream) {
  if (!GatedDeltaChunkedSupportsDims(p.key_dim, p.value_dim)) return cudaErrorInvalidValue;
  if (p.batch * p.heads == 0) return cudaSuccess;
  if (p.batch * p.heads > kGatedDeltaMaxBatchHeads) return cudaErrorInvalidValue;
  if (p.varlen.cu_seqlens != nullptr && p.varlen.cu_chunks == nullptr) return cudaErrorInvalidValue;
  if (p.tokens == 0) {
    // No tokens: the final state is the initial one.
    const size_t bytes = static_cast<size_t>(p.batch * p.heads * p.key_dim * p.value_dim) * 4;
    for (float* dst : {p.final_state, p.chunk_states}) {
      if (dst == nullptr) continue;
      if (p.initial_state != nullptr) {
        HYB_CUDA_TRY(
            cudaMemcpyAsync(dst, p.initial_state, bytes, cudaMemcpyDeviceToDevice, stream));
      } else {
        HYB_CUDA_TRY(cudaMemsetAsync(dst, 0, bytes, stream));
      }
    }
    return cudaSuccess;
  }
  return ForGatedDeltaDims(p.key_dim, p.value_dim, [&](auto d) {
    return LaunchDims<decltype(d)::kKey, decltype(d)::kValue>(p, stream);
  });
}

}  // namespace hyb::kernels::cuda
