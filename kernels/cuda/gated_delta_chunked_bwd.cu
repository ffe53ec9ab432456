// Chunked Gated DeltaNet backward for sm_80+ (sized for sm_90's shared memory): bf16 q/k/v/do,
// fp32 gates, betas, states, gradients and arithmetic (SIMT).
//
// Per chunk of C = 64 tokens, with b_t the cumulative log decay inside the chunk (b_t includes
// g_t), gamma_t = e^b_t, M[t, s] = e^(b_t - b_s) (s <= t), e_s = e^(b_C - b_s), S0 the state at the
// chunk start (written by the forward) and dS = dL/dS at the chunk end, the forward was (UT / WY
// form, as in gated_delta_chunked.cu)
//   Lm[t, s] = M[t, s] (k_t . k_s) (s < t),  L = diag(beta) Lm,  Tinv = (I + L)^-1,
//   W = Tinv diag(beta) (V - diag(gamma) K S0),  A = M * (Q K^T) (s <= t),
//   O = scale (diag(gamma) Q S0 + A W),  S_end = e^b_C S0 + (diag(e) K)^T W,
// and its gradients (kernels::GatedDeltaChunkedBackwardReference runs the same formulas in ATen):
//   dW = scale A^T dO + diag(e) K dS,   dR = Tinv^T dW                (back substitution)
//   dS0 = e^b_C dS + scale (diag(gamma) Q)^T dO - (diag(beta gamma) K)^T dR
//   dA = scale dO W^T (s <= t),  dL = -dR W^T (s < t),  E = diag(gamma) dR S0^T
//   dq = scale diag(gamma) dO S0^T + (dA * M) K
//   dk = diag(e) W dS^T - diag(beta) E + (dA * M)^T Q + (D + D^T) K,  D = diag(beta) (dL * M)
//   dv = diag(beta) dR,   dbeta_t = v_t . dR_t - k_t . E_t + sum_s dL[t, s] Lm[t, s]
//   db_t = q_t . dq0_t - beta_t k_t . E_t - k_t . dk0_t + sum_s Z[t, s] - sum_u Z[u, t]
//          (+ sum_s k_s . dk0_s + e^b_C sum(S0 * dS) at t = C - 1),  Z = dL * L + dA * A (s < t)
//   dg_t = sum_{u >= t in the chunk} db_u
// with dq0 / dk0 the first terms of dq / dk. Every exponential is of a difference that is <= 0:
// no overflow, whatever the gates. A partial last chunk is padded with q = k = v = do = 0,
// beta = g = 0, which contributes nothing to any gradient.
//
// Launches: (1) GatedDeltaStateGradKernel walks the chunks of each sequence in reverse (one block
// per (sequence, slice of value columns): the columns of dS are independent) and writes dS at
// every chunk end, and at the start (the initial state's gradient); it recomputes L and A per
// chunk. (2) GatedDeltaChunkGradKernel computes one chunk per block from S0, dS and the chunk's
// inputs; with K or V = 256 (whose [K][V] state and gradient tiles fit neither shared memory nor
// registers), GatedDeltaChunkGradSlicedKernel instead, which walks the chunk's value columns in
// slices. K, V in {64, 128, 256}; every layout is checked against sm_90's 227 KB at compile time.
// Matrix products are 64-row tiles spread over 16 x 16 threads (rows rg + 16 i, columns
// cg + 16 j); the triangular solves run one thread per value column.
#include <cuda_bf16.h>

#include "cuda_check.h"
#include "linear_attention_launch.h"
#include "varlen_seqs.cuh"

namespace hyb::kernels::cuda {
namespace {

constexpr int kC = kGatedDeltaChunk;  // tokens per chunk
constexpr int kThreads = 256;
constexpr int kAP = kC + 1;  // pitch of the C x C matrices (fp32)
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float Bf(__nv_bfloat16 x) { return __bfloat162float(x); }

// Rows [0, rows_valid) of a [kC][kCols] bf16 global tile into shared memory with row pitch
// kCols + 2 (an odd number of words: column walks hit distinct banks); later rows zero.
template <int kCols>
__device__ __forceinline__ void LoadBf16Tile(__nv_bfloat16* dst, const __nv_bfloat16* src,
                                             int64_t rows_valid, int tid) {
  constexpr int kPairs = kCols / 2;
  const __nv_bfloat162 zero = __floats2bfloat162_rn(0.f, 0.f);
  for (int i = tid; i < kC * kPairs; i += kThreads) {
    const int row = i / kPairs, cp = i % kPairs;
    const __nv_bfloat162 x =
        row < rows_valid ? reinterpret_cast<const __nv_bfloat162*>(src)[row * kPairs + cp] : zero;
    *reinterpret_cast<__nv_bfloat162*>(dst + row * (kCols + 2) + 2 * cp) = x;
  }
}

// Columns [col0, col0 + kW) of rows [0, rows_valid) of a [kC][V] bf16 global tile as fp32 with
// row pitch kW + 1; later rows zero.
template <int kW>
__device__ __forceinline__ void LoadBf16Columns(float* dst, const __nv_bfloat16* src, int V,
                                                int col0, int64_t rows_valid, int tid) {
  for (int i = tid; i < kC * kW; i += kThreads) {
    const int row = i / kW, j = i % kW;
    dst[row * (kW + 1) + j] = row < rows_valid ? Bf(src[row * V + col0 + j]) : 0.f;
  }
}

// Sum over the 16 lanes of a half warp (the 16 threads that share a tile row). Every lane of the
// warp must call it.
__device__ __forceinline__ float SumHalfWarp(float x) {
#pragma unroll
  for (int off = 8; off > 0; off /= 2) x += __shfl_xor_sync(kFull, x, off);
  return x;
}

__device__ __forceinline__ float SumWarp(float x) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(kFull, x, off);
  return x;
}

// acc[i][j] += sum_{kk in [k0, k1)} a(rg + 16 i, kk) * b(kk, cg + 16 j).
template <int NI, int NJ, typename FA, typename FB>
__device__ __forceinline__ void MulAcc(float (&acc)[NI][NJ], int rg, int cg, int k0, int k1, FA a,
                                       FB b) {
  for (int kk = k0; kk < k1; ++kk) {
    float av[NI], bv[NJ];
#pragma unroll
    for (int i = 0; i < NI; ++i) av[i] = a(rg + 16 * i, kk);
#pragma unroll
    for (int j = 0; j < NJ; ++j) bv[j] = b(kk, cg + 16 * j);
#pragma unroll
    for (int i = 0; i < NI; ++i) {
#pragma unroll
      for (int j = 0; j < NJ; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
  }
}

template <int NI, int NJ>
__device__ __forceinline__ void Zero(float (&acc)[NI][NJ]) {
#pragma unroll
  for (int i = 0; i < NI; ++i) {
#pragma unroll
    for (int j = 0; j < NJ; ++j) acc[i][j] = 0.f;
  }
}

// The chunk's per-token scalars (warp 0): b (cumulative log decay), beta, gamma = e^b and
// to_end = e^(b_C - b); zeros past rows_valid (g = beta = 0 there). g and beta point at the
// chunk's first token.
__device__ __forceinline__ void LoadChunkScalars(const float* g, const float* beta_in,
                                                 int64_t rows_valid, int tid, float* b, float* beta,
                                                 float* gamma, float* to_end) {
  if (tid >= 32) return;
  const int t0 = tid, t1 = tid + 32;
  float x0 = t0 < rows_valid ? g[t0] : 0.f, x1 = t1 < rows_valid ? g[t1] : 0.f;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const float y0 = __shfl_up_sync(kFull, x0, off), y1 = __shfl_up_sync(kFull, x1, off);
    if (tid >= off) {
      x0 += y0;
      x1 += y1;
    }
  }
  x1 += __shfl_sync(kFull, x0, 31);
  const float last = __shfl_sync(kFull, x1, 31);
  b[t0] = x0;
  b[t1] = x1;
  beta[t0] = t0 < rows_valid ? beta_in[t0] : 0.f;
  beta[t1] = t1 < rows_valid ? beta_in[t1] : 0.f;
  gamma[t0] = expf(x0);
  gamma[t1] = expf(x1);
  to_end[t0] = expf(fminf(last - x0, 0.f));
  to_end[t1] = expf(fminf(last - x1, 0.f));
}

// Lm (strictly lower, M * (k_t . k_s)) and A (lower with the diagonal, M * (q_t . k_s)), fp32
// [C][C + 1], from bf16 q and k with row pitch K + 2.
template <int K>
__device__ __forceinline__ void ChunkScores(const __nv_bfloat16* qs, const __nv_bfloat16* ks,
                                            const float* b, float* lm, float* am, int rg, int cg) {
  constexpr int kKP = K + 2;
  float kk[4][4], qk[4][4];
  Zero(kk);
  Zero(qk);
  for (int d = 0; d < K; ++d) {
    float qa[4], ka[4], kb[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      qa[i] = Bf(qs[(rg + 16 * i) * kKP + d]);
      ka[i] = Bf(ks[(rg + 16 * i) * kKP + d]);
      kb[i] = Bf(ks[(cg + 16 * i) * kKP + d]);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        kk[i][j] = fmaf(ka[i], kb[j], kk[i][j]);
        qk[i][j] = fmaf(qa[i], kb[j], qk[i][j]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int t = rg + 16 * i, s = cg + 16 * j;
      const float m = s <= t ? expf(fminf(b[t] - b[s], 0.f)) : 0.f;
      lm[t * kAP + s] = s < t ? m * kk[i][j] : 0.f;
      am[t * kAP + s] = m * qk[i][j];
    }
  }
}

// dR = Tinv^T dW in place for columns [0, cols) of x (row pitch `pitch`): (I + L)^T dR = dW,
// from the last row up; one thread per column, four partial sums for latency.
__device__ __forceinline__ void BackSubstitute(float* x, int pitch, int cols, const float* lm,
                                               const float* beta, int tid) {
  for (int j = tid; j < cols; j += kThreads) {
    for (int t = kC - 2; t >= 0; --t) {
      float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
      int s = t + 1;
      for (; s + 4 <= kC; s += 4) {
        a0 = fmaf(beta[s] * lm[s * kAP + t], x[s * pitch + j], a0);
        a1 = fmaf(beta[s + 1] * lm[(s + 1) * kAP + t], x[(s + 1) * pitch + j], a1);
        a2 = fmaf(beta[s + 2] * lm[(s + 2) * kAP + t], x[(s + 2) * pitch + j], a2);
        a3 = fmaf(beta[s + 3] * lm[(s + 3) * kAP + t], x[(s + 3) * pitch + j], a3);
      }
      for (; s < kC; ++s) a0 = fmaf(beta[s] * lm[s * kAP + t], x[s * pitch + j], a0);
      x[t * pitch + j] -= (a0 + a1) + (a2 + a3);
    }
  }
}

// W = Tinv R in place for columns [0, cols) of x: (I + L) W = R, from the first row down.
__device__ __forceinline__ void ForwardSubstitute(float* x, int pitch, int cols, const float* lm,
                                                  const float* beta, int tid) {
  for (int j = tid; j < cols; j += kThreads) {
    for (int t = 1; t < kC; ++t) {
      float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
      int s = 0;
      for (; s + 4 <= t; s += 4) {
        a0 = fmaf(lm[t * kAP + s], x[s * pitch + j], a0);
        a1 = fmaf(lm[t * kAP + s + 1], x[(s + 1) * pitch + j], a1);
        a2 = fmaf(lm[t * kAP + s + 2], x[(s + 2) * pitch + j], a2);
        a3 = fmaf(lm[t * kAP + s + 3], x[(s + 3) * pitch + j], a3);
      }
      for (; s < t; ++s) a0 = fmaf(lm[t * kAP + s], x[s * pitch + j], a0);
      x[t * pitch + j] -= beta[t] * ((a0 + a1) + (a2 + a3));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// (1) State gradients, reverse over chunks. Block = (sequence, kW value columns).

template <int K, int kW>
struct ScanLayout {
  static constexpr int kKP = K + 2;   // bf16 pitch of q and k
  static constexpr int kWP = kW + 1;  // fp32 pitch of the column slices
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kC * kKP * 2;
  static constexpr int kDo = kK + kC * kKP * 2;   // do columns, then scale gamma do   [C][kW]
  static constexpr int kDr = kDo + kC * kWP * 4;  // dW, then dR, then beta gamma dR  [C][kW]
  static constexpr int kDs = kDr + kC * kWP * 4;  // dS                               [K][kW]
  static constexpr int kLm = kDs + K * kWP * 4;
  static constexpr int kAm = kLm + kC * kAP * 4;
  static constexpr int kVec = kAm + kC * kAP * 4;  // b, beta, gamma, to_end: [C] each
  static constexpr int kBytes = kVec + 4 * kC * 4;
};

struct ScanArgs {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const float* g;
  const float* beta;
  const __nv_bfloat16* d_output;
  const float* d_final_state;  // or null (zeros)
  float* d_chunk_states;       // [BH, N, K, V]: dL/dS at every chunk end
  float* d_initial_state;
  int64_t tokens;
  int64_t heads;
  float scale;
  VarlenSeqs varlen;  // packed sequences, or none
};

template <int K, int V, int kW>
__global__ void __launch_bounds__(kThreads, 1) GatedDeltaStateGradKernel(const ScanArgs a) {
  static_assert(V % kW == 0 && kW % 16 == 0);
  using L = ScanLayout<K, kW>;
  constexpr int kKP = L::kKP, kWP = L::kWP;
  constexpr int kNJ = kW / 16, kNK = K / 16;
  extern __shared__ __align__(16) char smem[];
  __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(smem + L::kQ);
  __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(smem + L::kK);
  float* dos = reinterpret_cast<float*>(smem + L::kDo);
  float* dr = reinterpret_cast<float*>(smem + L::kDr);
  float* ds = reinterpret_cast<float*>(smem + L::kDs);
  float* lm = reinterpret_cast<float*>(smem + L::kLm);
  float* am = reinterpret_cast<float*>(smem + L::kAm);
  float* b = reinterpret_cast<float*>(smem + L::kVec);
  float* beta = b + kC;
  float* gamma = beta + kC;
  float* to_end = gamma + kC;

  const int tid = static_cast<int>(threadIdx.x), rg = tid / 16, cg = tid % 16;
  constexpr int kSlices = V / kW;
  const int64_t bh = blockIdx.x / kSlices;
  const int col0 = static_cast<int>(blockIdx.x % kSlices) * kW;
  const SeqSpan sq = SeqOf(a.varlen, bh, a.heads, a.tokens, kC);
  const int64_t T = sq.tokens;
  const int64_t first = sq.row * a.tokens + sq.token0;  // token row of the sequence's token 0

  for (int i = tid; i < K * kW; i += kThreads) {
    const int d = i / kW, j = i % kW;
    ds[d * kWP + j] =
        a.d_final_state != nullptr ? a.d_final_state[(bh * K + d) * V + col0 + j] : 0.f;
  }
  for (int64_t c = sq.nchunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kC, rows = T - t0;
    __syncthreads();  // ds complete (first chunk: loaded; later: updated)
    float* out = a.d_chunk_states + (sq.dstate_slot + c) * K * V + col0;
    for (int i = tid; i < K * kW; i += kThreads) {
      const int d = i / kW, j = i % kW;
      out[d * V + j] = ds[d * kWP + j];
    }
    LoadBf16Tile<K>(qs, a.q + (first + t0) * K, rows, tid);
    LoadBf16Tile<K>(ks, a.k + (first + t0) * K, rows, tid);
    LoadBf16Columns<kW>(dos, a.d_output + (first + t0) * V, V, col0, rows, tid);
    LoadChunkScalars(a.g + first + t0, a.beta + first + t0, rows, tid, b, beta, gamma, to_end);
    __syncthreads();
    ChunkScores<K>(qs, ks, b, lm, am, rg, cg);
    __syncthreads();
    // dW = scale A^T dO + diag(e) K dS.
    {
      float acc[4][kNJ], acc2[4][kNJ];
      Zero(acc);
      Zero(acc2);
      MulAcc(
          acc, rg, cg, rg, kC, [&](int t, int u) { return am[u * kAP + t]; },
          [&](int u, int j) { return dos[u * kWP + j]; });
      MulAcc(
          acc2, rg, cg, 0, K, [&](int t, int d) { return Bf(ks[t * kKP + d]); },
          [&](int d, int j) { return ds[d * kWP + j]; });
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int t = rg + 16 * i;
#pragma unroll
        for (int j = 0; j < kNJ; ++j) {
          dr[t * kWP + cg + 16 * j] = a.scale * acc[i][j] + to_end[t] * acc2[i][j];
        }
      }
    }
    __syncthreads();
    BackSubstitute(dr, kWP, kW, lm, beta, tid);
    __syncthreads();
    // Row scales of the state-gradient update: scale gamma_t dO_t and beta_t gamma_t dR_t.
    for (int i = tid; i < kC * kW; i += kThreads) {
      const int t = i / kW, j = i % kW;
      dos[t * kWP + j] *= a.scale * gamma[t];
      dr[t * kWP + j] *= beta[t] * gamma[t];
    }
    __syncthreads();
    // dS <- e^b_C dS + sum_t q_t (scale gamma_t dO_t)^T - k_t (beta_t gamma_t dR_t)^T.
    {
      float acc[kNK][kNJ];
      Zero(acc);
      MulAcc(
          acc, rg, cg, 0, kC, [&](int d, int t) { return Bf(qs[t * kKP + d]); },
          [&](int t, int j) { return dos[t * kWP + j]; });
      MulAcc(
          acc, rg, cg, 0, kC, [&](int d, int t) { return -Bf(ks[t * kKP + d]); },
          [&](int t, int j) { return dr[t * kWP + j]; });
      const float decay = gamma[kC - 1];
#pragma unroll
      for (int i = 0; i < kNK; ++i) {
#pragma unroll
        for (int j = 0; j < kNJ; ++j) {
          float& x = ds[(rg + 16 * i) * kWP + cg + 16 * j];
          x = decay * x + acc[i][j];
        }
      }
    }
  }
  __syncthreads();
  for (int i = tid; i < K * kW; i += kThreads) {
    const int d = i / kW, j = i % kW;
    a.d_initial_state[(bh * K + d) * V + col0 + j] = ds[d * kWP + j];
  }
}

// ---------------------------------------------------------------------------------------------
// (2) Per-chunk gradients. Block = one chunk of one sequence.

template <int K, int V>
struct ChunkLayout {
  static constexpr int kKP = K + 2, kVP = V + 2;  // bf16 pitches (odd word counts)
  static constexpr int kSP = V + 1;               // fp32 pitch of [.][V] tiles
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kC * kKP * 2;
  static constexpr int kDo = kK + kC * kKP * 2;
  static constexpr int kSt = kDo + kC * kVP * 2;  // S0, then dS, then S0, then Z ([C][C + 1])
  static constexpr int kW = kSt + K * kSP * 4;    // pseudo-values W            [C][V]
  static constexpr int kDr = kW + kC * kSP * 4;   // dW, then dR                [C][V]
  static constexpr int kLm = kDr + kC * kSP * 4;  // Lm, then D
  static constexpr int kAm = kLm + kC * kAP * 4;  // A, then dA * M
  // b, beta, gamma, to_end, db, dbeta, v . dR, k . dk0: [C] each; then 8 warp partial sums.
  static constexpr int kVec = kAm + kC * kAP * 4;
  static constexpr int kBytes = kVec + (8 * kC + 8) * 4;
  static_assert(K * kSP >= kC * kAP, "Z must fit where the state was");
};

struct ChunkArgs {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  const float* g;
  const float* beta;
  const __nv_bfloat16* d_output;
  const float* chunk_states;    // [BH, N + 1, K, V]
  const float* d_chunk_states;  // [BH, N, K, V]
  float* dq;
  float* dk;
  float* dv;
  float* dg;
  float* dbeta;
  int64_t tokens;
  int64_t nchunks;  // per sequence (fixed-length)
  int64_t heads;
  float scale;
  VarlenSeqs varlen;  // packed sequences, or none
  int64_t num_seqs;   // packed: N
};

// The end of a chunk's gradients in both per-chunk kernels, from this thread's elements of
// dA = scale dO W^T (s <= t) and dL = -dR W^T (s < t): in place (each thread reads and writes only
// its own elements of am and lm), dA * M -> am, D = beta_t dL M -> lm and Z = dL L + dA A (s < t)
// -> zs; dbeta += sum_s dL Lm; db += rowsum Z - colsum Z; dq += (dA * M) K and dk += (dA * M)^T Q
// + (D + D^T) K, which it stores; then dg (the reverse cumulative sum of db, with b_C's own terms
// from red and kdk at the last position) and dbeta.
template <int K, typename FQ, typename FK>
__device__ __forceinline__ void FinishChunkGradients(
    const ChunkArgs& a, const float (&da)[4][4], const float (&dl)[4][4],
    float (&dq)[4][K / 16], float (&dk)[4][K / 16], float* am, float* lm, float* zs,
    const float* b, const float* beta, const float* gamma, float* db, float* dbeta,
    const float* vdr, const float* kdk, const float* red, FQ q_at, FK k_at, int rg, int cg,
    int tid, int64_t first, int64_t t0, int64_t rows) {
  constexpr int kNK = K / 16;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int t = rg + 16 * i;
    float zr = 0.f, dbr = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int s = cg + 16 * j;
      const float m = s <= t ? expf(fminf(b[t] - b[s], 0.f)) : 0.f;
      const float dav = s <= t ? a.scale * da[i][j] : 0.f;
      const float dlv = s < t ? -dl[i][j] : 0.f;
      const float lmv = lm[t * kAP + s], amv = am[t * kAP + s];
      const float z = s < t ? dlv * beta[t] * lmv + dav * amv : 0.f;
      am[t * kAP + s] = dav * m;
      lm[t * kAP + s] = dlv * beta[t] * m;
      zs[t * kAP + s] = z;
      zr += z;
      dbr += dlv * lmv;
    }
    zr = SumHalfWarp(zr);
    dbr = SumHalfWarp(dbr);
    if (cg == 0) {
      db[t] += zr;
      dbeta[t] += dbr;
    }
  }
  __syncthreads();
  if (tid < kC) {
    float col = 0.f;
    for (int u = 0; u < kC; ++u) col += zs[u * kAP + tid];
    db[tid] -= col;
  }

  // dq += (dA * M) K; dk += (dA * M)^T Q + (D + D^T) K.
  MulAcc(
      dq, rg, cg, 0, kC, [&](int t, int s) { return am[t * kAP + s]; }, k_at);
  MulAcc(
      dk, rg, cg, rg, kC, [&](int s, int t) { return am[t * kAP + s]; }, q_at);
  MulAcc(
      dk, rg, cg, 0, kC, [&](int s, int u) { return lm[u * kAP + s] + lm[s * kAP + u]; }, k_at);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int t = rg + 16 * i;
    if (t >= rows) continue;
    float* oq = a.dq + (first + t0 + t) * K + cg;
    float* ok = a.dk + (first + t0 + t) * K + cg;
#pragma unroll
    for (int j = 0; j < kNK; ++j) {
      oq[16 * j] = dq[i][j];
      ok[16 * j] = dk[i][j];
    }
  }
  __syncthreads();
  // dg: the reverse cumulative sum of db, with b_C's own terms at the last position.
  if (tid == 0) {
    float at_end = 0.f;
    for (int i = 0; i < kThreads / 32; ++i) at_end += red[i];
    at_end *= gamma[kC - 1];
    for (int t = 0; t < kC; ++t) at_end += kdk[t];
    float run = at_end;
    for (int t = kC - 1; t >= 0; --t) {
      run += db[t];
      if (t < rows) a.dg[first + t0 + t] = run;
    }
  }
  if (tid < kC && tid < rows) a.dbeta[first + t0 + tid] = dbeta[tid] + vdr[tid];
}

template <int K, int V>
__global__ void __launch_bounds__(kThreads, 1) GatedDeltaChunkGradKernel(const ChunkArgs a) {
  using L = ChunkLayout<K, V>;
  constexpr int kKP = L::kKP, kVP = L::kVP, kSP = L::kSP;
  constexpr int kNK = K / 16, kNV = V / 16;
  extern __shared__ __align__(16) char smem[];
  __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(smem + L::kQ);
  __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(smem + L::kK);
  __nv_bfloat16* dos = reinterpret_cast<__nv_bfloat16*>(smem + L::kDo);
  float* st = reinterpret_cast<float*>(smem + L::kSt);
  float* w = reinterpret_cast<float*>(smem + L::kW);
  float* dr = reinterpret_cast<float*>(smem + L::kDr);
  float* lm = reinterpret_cast<float*>(smem + L::kLm);
  float* am = reinterpret_cast<float*>(smem + L::kAm);
  float* b = reinterpret_cast<float*>(smem + L::kVec);
  float* beta = b + kC;
  float* gamma = beta + kC;
  float* to_end = gamma + kC;
  float* db = to_end + kC;
  float* dbeta = db + kC;
  float* vdr = dbeta + kC;
  float* kdk = vdr + kC;
  float* red = kdk + kC;

  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int rg = tid / 16, cg = tid % 16;
  int64_t bh = 0, c = 0;
  ChunkOfBlock(a.varlen, a.num_seqs, a.heads, a.nchunks, blockIdx.x, &bh, &c);
  const SeqSpan sq = SeqOf(a.varlen, bh, a.heads, a.tokens, kC);
  const int64_t T = sq.tokens, t0 = c * kC, rows = T - t0;
  const int64_t first = sq.row * a.tokens + sq.token0;  // token row of the sequence's token 0
  const float* s0g = a.chunk_states + (sq.state_slot + c) * K * V;
  const float* dsg = a.d_chunk_states + (sq.dstate_slot + c) * K * V;
  const __nv_bfloat16* vg = a.v + (first + t0) * V;

  LoadBf16Tile<K>(qs, a.q + (first + t0) * K, rows, tid);
  LoadBf16Tile<K>(ks, a.k + (first + t0) * K, rows, tid);
  LoadBf16Tile<V>(dos, a.d_output + (first + t0) * V, rows, tid);
  LoadChunkScalars(a.g + first + t0, a.beta + first + t0, rows, tid, b, beta, gamma, to_end);
  if (tid < kC) {
    db[tid] = 0.f;
    dbeta[tid] = 0.f;
  }
  for (int i = tid; i < K * V; i += kThreads) st[(i / V) * kSP + i % V] = s0g[i];
  __syncthreads();

  auto q_at = [&](int t, int d) { return Bf(qs[t * kKP + d]); };
  auto k_at = [&](int t, int d) { return Bf(ks[t * kKP + d]); };
  auto do_at = [&](int t, int j) { return Bf(dos[t * kVP + j]); };
  auto st_at = [&](int d, int j) { return st[d * kSP + j]; };
  auto st_t = [&](int j, int d) { return st[d * kSP + j]; };  // state transposed
  auto w_at = [&](int t, int j) { return w[t * kSP + j]; };
  auto dr_at = [&](int t, int j) { return dr[t * kSP + j]; };

  // Lm and A; W's right-hand side beta (v - gamma K S0); dq0 = scale gamma dO S0^T.
  ChunkScores<K>(qs, ks, b, lm, am, rg, cg);
  {
    float acc[4][kNV];
    Zero(acc);
    MulAcc(acc, rg, cg, 0, K, k_at, st_at);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int t = rg + 16 * i;
#pragma unroll
      for (int j = 0; j < kNV; ++j) {
        const int col = cg + 16 * j;
        const float vv = t < rows ? Bf(vg[t * V + col]) : 0.f;
        w[t * kSP + col] = beta[t] * (vv - gamma[t] * acc[i][j]);
      }
    }
  }
  float dq[4][kNK];
  Zero(dq);
  MulAcc(dq, rg, cg, 0, V, do_at, st_t);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int t = rg + 16 * i;
    float qdq = 0.f;
#pragma unroll
    for (int j = 0; j < kNK; ++j) {
      dq[i][j] *= a.scale * gamma[t];
      qdq += q_at(t, cg + 16 * j) * dq[i][j];
    }
    qdq = SumHalfWarp(qdq);
    if (cg == 0) db[t] += qdq;
  }
  __syncthreads();
  ForwardSubstitute(w, kSP, V, lm, beta, tid);
  __syncthreads();

  // dS at the chunk end: dW = scale A^T dO + diag(e) K dS; dk0 = diag(e) W dS^T; and
  // sum(S0 * dS) for the gradient of e^b_C.
  for (int i = tid; i < K * V; i += kThreads) st[(i / V) * kSP + i % V] = dsg[i];
  __syncthreads();
  {
    float acc[4][kNV], acc2[4][kNV];
    Zero(acc);
    Zero(acc2);
    MulAcc(
        acc, rg, cg, rg, kC, [&](int t, int u) { return am[u * kAP + t]; }, do_at);
    MulAcc(acc2, rg, cg, 0, K, k_at, st_at);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int t = rg + 16 * i;
#pragma unroll
      for (int j = 0; j < kNV; ++j) {
        dr[t * kSP + cg + 16 * j] = a.scale * acc[i][j] + to_end[t] * acc2[i][j];
      }
    }
  }
  float dk[4][kNK];
  Zero(dk);
  MulAcc(dk, rg, cg, 0, V, w_at, st_t);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int t = rg + 16 * i;
    float kdk0 = 0.f;
#pragma unroll
    for (int j = 0; j < kNK; ++j) {
      dk[i][j] *= to_end[t];
      kdk0 += k_at(t, cg + 16 * j) * dk[i][j];
    }
    kdk0 = SumHalfWarp(kdk0);
    if (cg == 0) {
      db[t] -= kdk0;
      kdk[t] = kdk0;
    }
  }
  {
    float sum = 0.f;
    for (int i = tid; i < K * V; i += kThreads) sum += s0g[i] * st[(i / V) * kSP + i % V];
    sum = SumWarp(sum);
    if (lane == 0) red[warp] = sum;
  }
  __syncthreads();

  // dR = Tinv^T dW; S0 back in shared memory.
  for (int i = tid; i < K * V; i += kThreads) st[(i / V) * kSP + i % V] = s0g[i];
  BackSubstitute(dr, kSP, V, lm, beta, tid);
  __syncthreads();

  // E = diag(gamma) dR S0^T: dk -= diag(beta) E, dbeta -= k . E, db -= beta k . E; dv = beta dR
  // and v . dR.
  {
    float e[4][kNK];
    Zero(e);
    MulAcc(e, rg, cg, 0, V, dr_at, st_t);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int t = rg + 16 * i;
      float ke = 0.f;
#pragma unroll
      for (int j = 0; j < kNK; ++j) {
        const float x = gamma[t] * e[i][j];
        ke += k_at(t, cg + 16 * j) * x;
        dk[i][j] -= beta[t] * x;
      }
      ke = SumHalfWarp(ke);
      if (cg == 0) {
        dbeta[t] -= ke;
        db[t] -= beta[t] * ke;
      }
    }
  }
  for (int t = warp; t < kC; t += kThreads / 32) {
    float sum = 0.f;
    for (int j = lane; j < V; j += 32) {
      const float x = dr[t * kSP + j];
      if (t < rows) {
        sum += Bf(vg[t * V + j]) * x;
        a.dv[(first + t0 + t) * V + j] = beta[t] * x;
      }
    }
    sum = SumWarp(sum);
    if (lane == 0) vdr[t] = sum;
  }

  __syncthreads();  // every read of st (S0) is done

  // dA = scale dO W^T (s <= t), dL = -dR W^T (s < t); Z in st (S0's reads are done).
  float da[4][4], dl[4][4];
  Zero(da);
  Zero(dl);
  MulAcc(da, rg, cg, 0, V, do_at, [&](int j, int s) { return w[s * kSP + j]; });
  MulAcc(dl, rg, cg, 0, V, dr_at, [&](int j, int s) { return w[s * kSP + j]; });
  FinishChunkGradients<K>(a, da, dl, dq, dk, am, lm, st, b, beta, gamma, db, dbeta, vdr, kdk, red,
                          q_at, k_at, rg, cg, tid, first, t0, rows);
}

// ---------------------------------------------------------------------------------------------
// (2') Per-chunk gradients for head dims past 128 (K or V = 256), where neither ChunkLayout (the
// whole [K][V] state and [C][V] tiles) fits shared memory nor the [C][K] gradient tiles of dq, dk
// and E fit registers together. Block = one chunk of one sequence, as (2), walking the value
// columns in slices of kCols: per slice, W and dR of those columns (the triangular solves act on
// columns independently), and their contributions to dq0 = dO S0^T, dk (= diag(e) W dS^T -
// diag(beta gamma) dR S0^T, one accumulator), dA = dO W^T and dL = dR W^T (sums over the value
// columns, kept in registers across slices), dv, v . dR and sum(S0 * dS). The per-row dot
// products k . dk0 and k . E come from this thread's tiles of K dS and K S0 (k_t . dk0_t =
// e_t W_t . (K dS)_t, k_t . E_t = gamma_t dR_t . (K S0)_t). After the last slice, as (2).

template <int K, int kCols>
struct SlicedChunkLayout {
  static constexpr int kKP = K + 2;      // bf16 pitch of q and k
  static constexpr int kWP = kCols + 1;  // fp32 pitch of the column slices
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kC * kKP * 2;
  static constexpr int kDo = kK + kC * kKP * 2;   // dO columns                      [C][kCols]
  static constexpr int kS0 = kDo + kC * kWP * 4;  // S0 columns; then Z ([C][C + 1]) [K][kCols]
  static constexpr int kDs = kS0 + K * kWP * 4;   // dS columns                      [K][kCols]
  static constexpr int kW = kDs + K * kWP * 4;    // pseudo-values W                 [C][kCols]
  static constexpr int kDr = kW + kC * kWP * 4;   // dW, then dR                     [C][kCols]
  static constexpr int kLm = kDr + kC * kWP * 4;  // Lm, then D
  static constexpr int kAm = kLm + kC * kAP * 4;  // A, then dA * M
  // b, beta, gamma, to_end, db, dbeta, v . dR, k . dk0: [C] each; then 8 warp partial sums.
  static constexpr int kVec = kAm + kC * kAP * 4;
  static constexpr int kBytes = kVec + (8 * kC + 8) * 4;
  static_assert(2 * K * kWP >= kC * kAP, "Z must fit where the S0 and dS columns were");
};

template <int K, int V, int kCols>
__global__ void __launch_bounds__(kThreads, 1) GatedDeltaChunkGradSlicedKernel(const ChunkArgs a) {
  static_assert(V % kCols == 0 && kCols % 16 == 0 && kCols <= kThreads / 2);
  using L = SlicedChunkLayout<K, kCols>;
  constexpr int kKP = L::kKP, kWP = L::kWP;
  constexpr int kNK = K / 16, kNJ = kCols / 16;
  extern __shared__ __align__(16) char smem[];
  __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(smem + L::kQ);
  __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(smem + L::kK);
  float* dos = reinterpret_cast<float*>(smem + L::kDo);
  float* s0s = reinterpret_cast<float*>(smem + L::kS0);
  float* dss = reinterpret_cast<float*>(smem + L::kDs);
  float* w = reinterpret_cast<float*>(smem + L::kW);
  float* dr = reinterpret_cast<float*>(smem + L::kDr);
  float* lm = reinterpret_cast<float*>(smem + L::kLm);
  float* am = reinterpret_cast<float*>(smem + L::kAm);
  float* zs = s0s;  // Z, after the last slice
  float* b = reinterpret_cast<float*>(smem + L::kVec);
  float* beta = b + kC;
  float* gamma = beta + kC;
  float* to_end = gamma + kC;
  float* db = to_end + kC;
  float* dbeta = db + kC;
  float* vdr = dbeta + kC;
  float* kdk = vdr + kC;
  float* red = kdk + kC;

  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int rg = tid / 16, cg = tid % 16;
  int64_t bh = 0, c = 0;
  ChunkOfBlock(a.varlen, a.num_seqs, a.heads, a.nchunks, blockIdx.x, &bh, &c);
  const SeqSpan sq = SeqOf(a.varlen, bh, a.heads, a.tokens, kC);
  const int64_t T = sq.tokens, t0 = c * kC, rows = T - t0;
  const int64_t first = sq.row * a.tokens + sq.token0;  // token row of the sequence's token 0
  const float* s0g = a.chunk_states + (sq.state_slot + c) * K * V;
  const float* dsg = a.d_chunk_states + (sq.dstate_slot + c) * K * V;
  const __nv_bfloat16* vg = a.v + (first + t0) * V;
  const __nv_bfloat16* dog = a.d_output + (first + t0) * V;

  LoadBf16Tile<K>(qs, a.q + (first + t0) * K, rows, tid);
  LoadBf16Tile<K>(ks, a.k + (first + t0) * K, rows, tid);
  LoadChunkScalars(a.g + first + t0, a.beta + first + t0, rows, tid, b, beta, gamma, to_end);
  if (tid < kC) {
    db[tid] = 0.f;
    dbeta[tid] = 0.f;
    vdr[tid] = 0.f;
    kdk[tid] = 0.f;
  }
  __syncthreads();
  ChunkScores<K>(qs, ks, b, lm, am, rg, cg);  // read after the first slice's barrier

  auto q_at = [&](int t, int d) { return Bf(qs[t * kKP + d]); };
  auto k_at = [&](int t, int d) { return Bf(ks[t * kKP + d]); };
  auto do_at = [&](int t, int j) { return dos[t * kWP + j]; };
  auto s0_at = [&](int d, int j) { return s0s[d * kWP + j]; };
  auto s0_t = [&](int j, int d) { return s0s[d * kWP + j]; };  // transposed
  auto ds_at = [&](int d, int j) { return dss[d * kWP + j]; };
  auto ds_t = [&](int j, int d) { return dss[d * kWP + j]; };
  auto w_t = [&](int j, int s) { return w[s * kWP + j]; };
  auto dr_at = [&](int t, int j) { return dr[t * kWP + j]; };

  // Sums over every value column: dq0 (before its row scale scale gamma), dk, dA and dL (before
  // their scale and sign), sum(S0 * dS) (this thread's part).
  float dq[4][kNK], dk[4][kNK], da[4][4], dl[4][4];
  Zero(dq);
  Zero(dk);
  Zero(da);
  Zero(dl);
  float sds = 0.f;
  for (int j0 = 0; j0 < V; j0 += kCols) {
    for (int i = tid; i < K * kCols; i += kThreads) {
      const int d = i / kCols, j = i % kCols;
      const float x = s0g[d * V + j0 + j], y = dsg[d * V + j0 + j];
      s0s[d * kWP + j] = x;
      dss[d * kWP + j] = y;
      sds = fmaf(x, y, sds);
    }
    LoadBf16Columns<kCols>(dos, dog, V, j0, rows, tid);
    __syncthreads();  // the columns (and, at the first slice, Lm and A) complete
    MulAcc(dq, rg, cg, 0, kCols, do_at, s0_t);
    // W's right-hand side beta (v - gamma K S0) and dW = scale A^T dO + diag(e) K dS; this
    // thread's tiles of K S0 and K dS stay in registers for k . E and k . dk0 below.
    float ks0[4][kNJ], kds[4][kNJ];
    {
      float atdo[4][kNJ];
      Zero(ks0);
      Zero(kds);
      Zero(atdo);
      MulAcc(ks0, rg, cg, 0, K, k_at, s0_at);
      MulAcc(kds, rg, cg, 0, K, k_at, ds_at);
      MulAcc(
          atdo, rg, cg, rg, kC, [&](int t, int u) { return am[u * kAP + t]; }, do_at);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int t = rg + 16 * i;
#pragma unroll
        for (int j = 0; j < kNJ; ++j) {
          const int col = cg + 16 * j;
          const float vv = t < rows ? Bf(vg[t * V + j0 + col]) : 0.f;
          w[t * kWP + col] = beta[t] * (vv - gamma[t] * ks0[i][j]);
          dr[t * kWP + col] = a.scale * atdo[i][j] + to_end[t] * kds[i][j];
        }
      }
    }
    __syncthreads();
    // W = Tinv R and dR = Tinv^T dW, on the two halves of the block at once.
    if (tid < kThreads / 2) {
      ForwardSubstitute(w, kWP, kCols, lm, beta, tid);
    } else {
      BackSubstitute(dr, kWP, kCols, lm, beta, tid - kThreads / 2);
    }
    __syncthreads();
    // k . dk0 and k . E over these columns: db -= k . dk0 + beta k . E, dbeta -= k . E.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int t = rg + 16 * i;
      float kdk0 = 0.f, ke = 0.f;
#pragma unroll
      for (int j = 0; j < kNJ; ++j) {
        const int col = cg + 16 * j;
        kdk0 += w[t * kWP + col] * kds[i][j];
        ke += dr[t * kWP + col] * ks0[i][j];
      }
      kdk0 = to_end[t] * SumHalfWarp(kdk0);
      ke = gamma[t] * SumHalfWarp(ke);
      if (cg == 0) {
        kdk[t] += kdk0;
        db[t] -= kdk0 + beta[t] * ke;
        dbeta[t] -= ke;
      }
    }
    // dk += diag(e) W dS^T - diag(beta gamma) dR S0^T; dA += dO W^T; dL += dR W^T.
    MulAcc(
        dk, rg, cg, 0, kCols, [&](int t, int j) { return to_end[t] * w[t * kWP + j]; }, ds_t);
    MulAcc(
        dk, rg, cg, 0, kCols,
        [&](int t, int j) { return -beta[t] * gamma[t] * dr[t * kWP + j]; }, s0_t);
    MulAcc(da, rg, cg, 0, kCols, do_at, w_t);
    MulAcc(dl, rg, cg, 0, kCols, dr_at, w_t);
    // dv = beta dR and v . dR.
    for (int t = warp; t < kC; t += kThreads / 32) {
      float sum = 0.f;
      for (int j = lane; j < kCols; j += 32) {
        const float x = dr[t * kWP + j];
        if (t < rows) {
          sum += Bf(vg[t * V + j0 + j]) * x;
          a.dv[(first + t0 + t) * V + j0 + j] = beta[t] * x;
        }
      }
      sum = SumWarp(sum);
      if (lane == 0) vdr[t] += sum;
    }
    __syncthreads();  // every read of this slice's columns is done
  }

  // dq0 = scale gamma dO S0^T; db += q . dq0.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int t = rg + 16 * i;
    float qdq = 0.f;
#pragma unroll
    for (int j = 0; j < kNK; ++j) {
      dq[i][j] *= a.scale * gamma[t];
      qdq += q_at(t, cg + 16 * j) * dq[i][j];
    }
    qdq = SumHalfWarp(qdq);
    if (cg == 0) db[t] += qdq;
  }
  sds = SumWarp(sds);
  if (lane == 0) red[warp] = sds;

  FinishChunkGradients<K>(a, da, dl, dq, dk, am, lm, zs, b, beta, gamma, db, dbeta, vdr, kdk, red,
                          q_at, k_at, rg, cg, tid, first, t0, rows);
}

// The sliced per-chunk kernel's columns per slice: the widest of 128, 64, 32 (at most V) whose
// layout fits (K = 64: 128; K = 128: 64; K = 256: 32).
template <int K, int V>
constexpr int SlicedChunkColumns() {
  if (V >= 128 && SlicedChunkLayout<K, 128>::kBytes <= kGatedDeltaMaxBlockSmem) return 128;
  if (V >= 64 && SlicedChunkLayout<K, 64>::kBytes <= kGatedDeltaMaxBlockSmem) return 64;
  return 32;
}

template <int K, int V, int kW>
cudaError_t LaunchScan(const ScanArgs& s, int64_t bh, cudaStream_t stream) {
  using SL = ScanLayout<K, kW>;
  HYB_CUDA_TRY(cudaFuncSetAttribute(GatedDeltaStateGradKernel<K, V, kW>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, SL::kBytes));
  GatedDeltaStateGradKernel<K, V, kW>
      <<<static_cast<unsigned>(bh * (V / kW)), kThreads, SL::kBytes, stream>>>(s);
  HYB_CUDA_TRY(cudaGetLastError());
  return cudaSuccess;
}

template <int K, int V>
cudaError_t LaunchDims(const GatedDeltaChunkedBackwardParams& p, cudaStream_t stream) {
  const int64_t bh = p.batch * p.heads;
  const int64_t nchunks = (p.tokens + kC - 1) / kC;
  ScanArgs s{};
  s.q = static_cast<const __nv_bfloat16*>(p.q);
  s.k = static_cast<const __nv_bfloat16*>(p.k);
  s.g = p.g;
  s.beta = p.beta;
  s.d_output = static_cast<const __nv_bfloat16*>(p.d_output);
  s.d_final_state = p.d_final_state;
  s.d_chunk_states = static_cast<float*>(p.workspace);
  s.d_initial_state = p.d_initial_state;
  s.tokens = p.tokens;
  s.heads = p.heads;
  s.scale = p.scale;
  s.varlen = p.varlen;
  // V where it fits, else 128 (V = 256 with K <= 128) or 64 (K = 256).
  constexpr int kScanCols = GatedDeltaWidestSlice<ScanLayout, K, V>();
  static_assert(ScanLayout<K, kScanCols>::kBytes <= kGatedDeltaMaxBlockSmem);
  static_assert(ScanLayout<K, kGatedDeltaSliceColumns>::kBytes <= kGatedDeltaMaxBlockSmem);
  const cudaError_t err = GatedDeltaColumnSlices(bh, V, p.num_sms) > 1
                              ? LaunchScan<K, V, kGatedDeltaSliceColumns>(s, bh, stream)
                              : LaunchScan<K, V, kScanCols>(s, bh, stream);
  if (err != cudaSuccess) return err;

  ChunkArgs c{};
  c.q = s.q;
  c.k = s.k;
  c.v = static_cast<const __nv_bfloat16*>(p.v);
  c.g = p.g;
  c.beta = p.beta;
  c.d_output = s.d_output;
  c.chunk_states = p.chunk_states;
  c.d_chunk_states = s.d_chunk_states;
  c.dq = p.dq;
  c.dk = p.dk;
  c.dv = p.dv;
  c.dg = p.dg;
  c.dbeta = p.dbeta;
  c.tokens = p.tokens;
  c.nchunks = nchunks;
  c.heads = p.heads;
  c.scale = p.scale;
  c.varlen = p.varlen;
  c.num_seqs = p.batch;
  // One block per chunk of every sequence and head (none for empty packed sequences).
  const int64_t blocks =
      p.varlen.cu_seqlens != nullptr ? p.varlen.total_chunks * p.heads : bh * nchunks;
  if (blocks == 0) return cudaSuccess;
  if constexpr (K <= 128 && V <= 128) {
    using CL = ChunkLayout<K, V>;
    static_assert(CL::kBytes <= kGatedDeltaMaxBlockSmem);
    HYB_CUDA_TRY(cudaFuncSetAttribute(GatedDeltaChunkGradKernel<K, V>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, CL::kBytes));
    GatedDeltaChunkGradKernel<K, V>
        <<<static_cast<unsigned>(blocks), kThreads, CL::kBytes, stream>>>(c);
  } else {
    constexpr int kCols = SlicedChunkColumns<K, V>();
    using CL = SlicedChunkLayout<K, kCols>;
    static_assert(CL::kBytes <= kGatedDeltaMaxBlockSmem);
    HYB_CUDA_TRY(cudaFuncSetAttribute(GatedDeltaChunkGradSlicedKernel<K, V, kCols>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, CL::kBytes));
    GatedDeltaChunkGradSlicedKernel<K, V, kCols>
        <<<static_cast<unsigned>(blocks), kThreads, CL::kBytes, stream>>>(c);
  }
  HYB_CUDA_TRY(cudaGetLastError());
  return cudaSuccess;
}

}  // namespace

size_t GatedDeltaChunkedBackwardWorkspaceBytes(const GatedDeltaChunkedBackwardParams& p) {
  if (p.varlen.cu_seqlens != nullptr) {
    return static_cast<size_t>(p.heads * p.varlen.total_chunks * p.key_dim * p.value_dim) *
           sizeof(float);
  }
  const int64_t nchunks = (p.tokens + kC - 1) / kC;
  return static_cast<size_t>(p.batch * p.heads * nchunks * p.key_dim * p.value_dim) * sizeof(float);
}

cudaError_t LaunchGatedDeltaChunkedBackward(const GatedDeltaChunkedBackwardParams& p,
                                            cudaStream_t stream) {
  if (!GatedDeltaChunkedSupportsDims(p.key_dim, p.value_dim)) return cudaErrorInvalidValue;
  if (p.batch * p.heads == 0) return cudaSuccess;
  if (p.varlen.cu_seqlens != nullptr && p.varlen.cu_chunks == nullptr) return cudaErrorInvalidValue;
  if (p.tokens == 0) {
    // No tokens: the initial state's gradient is the final state's.
    const size_t bytes = static_cast<size_t>(p.batch * p.heads * p.key_dim * p.value_dim) * 4;
    if (p.d_final_state != nullptr) {
      HYB_CUDA_TRY(cudaMemcpyAsync(p.d_initial_state, p.d_final_state, bytes,
                                   cudaMemcpyDeviceToDevice, stream));
    } else {
      HYB_CUDA_TRY(cudaMemsetAsync(p.d_initial_state, 0, bytes, stream));
    }
    return cudaSuccess;
  }
  if (p.workspace == nullptr || p.chunk_states == nullptr) return cudaErrorInvalidValue;
  const int64_t blocks = p.varlen.cu_seqlens != nullptr
                             ? p.heads * p.varlen.total_chunks
                             : p.batch * p.heads * ((p.tokens + kC - 1) / kC);
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  return ForGatedDeltaDims(p.key_dim, p.value_dim, [&](auto d) {
    return LaunchDims<decltype(d)::kKey, decltype(d)::kValue>(p, stream);
  });
}

}  // namespace hyb::kernels::cuda
