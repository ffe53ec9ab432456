// Chunked GLA backward for sm_80+ (sized for sm_90's shared memory): bf16 q/k/v/do, fp32 gates,
// states, gradients and arithmetic (SIMT).
//
// Per chunk of C = 64 tokens, with b_t = cumulative log decay inside the chunk (b_t includes g_t),
// S0 = state at the chunk start (written by the forward), dS = dL/dS at the chunk end:
//   dA[t, s] = scale * do_t . v_s                                      (s <= t)
//   A[t, s]  = scale * sum_d q_t[d] k_s[d] e^(b_t[d] - b_s[d])         (s <= t)
//   dq_t = scale e^b_t (S0 do_t) + sum_{s<=t} dA[t, s] e^(b_t - b_s) k_s
//   dk_s = sum_{t>=s} dA[t, s] e^(b_t - b_s) q_t + e^(b_C - b_s) (dS v_s)
//   dv_s = sum_{t>=s} A[t, s] do_t + dS^T (e^(b_C - b_s) k_s)
//   dg_t = sum_{u>=t in the chunk} (q_u dq_u - k_u dk_u) + rowsum(S_end * dS)
// and the state gradient at the chunk start, dS0 = e^b_C dS + scale sum_t (e^b_t q_t) do_t^T.
// The last line is the chunk-local form of dg: the gradient with respect to b_t of the chunk's
// outputs and end state, summed over the positions whose cumulative decay includes g_t. Every
// exponential is of a difference that is <= 0 on the causal part (clamped elsewhere): no
// overflow, whatever the gates.
//
// Launches: (1) GlaStateGradKernel walks the chunks of each sequence in reverse and writes dS at
// every chunk end (and dS at the start, the initial state's gradient); a block owns 32 state
// columns. (2) GlaChunkGradKernel computes one chunk per block from S0, dS and the chunk's inputs.
#include <cuda_bf16.h>

#include "cuda_check.h"
#include "linear_attention_launch.h"

namespace hyb::kernels::cuda {
namespace {

constexpr int kC = kGlaChunk;  // tokens per chunk
constexpr int kThreads = 256;
constexpr int kStateCols = 32;  // state columns per block of the reverse scan
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float Ld(const __nv_bfloat16* p) { return __bfloat162float(*p); }

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

// ---------------------------------------------------------------------------------------------
// (1) State gradients, reverse over chunks. Block = (sequence, 32 state columns); thread =
// (column lane, key rows warp + 8 i).

template <int K>
struct ScanLayout {
  static constexpr int kQe = 0;                          // e^b q, fp32 [C][K]
  static constexpr int kDo = kQe + kC * K * 4;           // do columns, fp32 [C][32]
  static constexpr int kBc = kDo + kC * kStateCols * 4;  // b_C (log2), fp32 [K]
  static constexpr int kBytes = kBc + K * 4;
};

struct ScanArgs {
  const __nv_bfloat16* q;
  const float* g;
  const __nv_bfloat16* d_output;
  const float* d_final_state;
  float* d_chunk_states;  // [BH, N, K, V]: dL/dS at every chunk end
  float* d_initial_state;
  int64_t tokens;
  int nchunks;
  int value_dim;
  float scale;
};

template <int K>
__global__ void __launch_bounds__(kThreads) GlaStateGradKernel(const ScanArgs a) {
  using L = ScanLayout<K>;
  extern __shared__ __align__(16) char smem[];
  float* qe = reinterpret_cast<float*>(smem + L::kQe);
  float* dos = reinterpret_cast<float*>(smem + L::kDo);
  float* bc = reinterpret_cast<float*>(smem + L::kBc);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int V = a.value_dim, col_blocks = V / kStateCols;
  const int64_t bh = blockIdx.x / col_blocks;
  const int col = (blockIdx.x % col_blocks) * kStateCols + lane;
  const int64_t T = a.tokens;
  constexpr int kRows = K / 8;  // key rows d = warp + 8 i of this thread

  float ds[kRows];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int64_t e = (bh * K + warp + 8 * i) * V + col;
    ds[i] = a.d_final_state != nullptr ? a.d_final_state[e] : 0.f;
  }
  for (int c = a.nchunks - 1; c >= 0; --c) {
    float* out = a.d_chunk_states + ((bh * a.nchunks + c) * K) * V + col;
#pragma unroll
    for (int i = 0; i < kRows; ++i) out[(warp + 8 * i) * V] = ds[i];

    const int64_t t0 = static_cast<int64_t>(c) * kC;
    const int64_t rows = T - t0;
    if (tid < K) {
      // Cumulative log2 decay down the column, and e^b q.
      const float* gcol = a.g + (bh * T + t0) * K + tid;
      const __nv_bfloat16* qcol = a.q + (bh * T + t0) * K + tid;
      float run = 0.f;
#pragma unroll 8
      for (int t = 0; t < kC; ++t) {
        const bool ok = t < rows;
        run += ok ? gcol[t * K] * kLog2e : 0.f;
        qe[t * K + tid] = ok ? Ld(qcol + t * K) * Exp2(run) : 0.f;
      }
      bc[tid] = run;
    }
    for (int i = tid; i < kC * kStateCols; i += kThreads) {
      const int t = i / kStateCols, j = i % kStateCols;
      const int64_t base = (bh * T + t0 + t) * V;
      dos[i] = t < rows ? __bfloat162float(a.d_output[base + col - lane + j]) : 0.f;
    }
    __syncthreads();
    float acc[kRows];
#pragma unroll
    for (int i = 0; i < kRows; ++i) acc[i] = 0.f;
#pragma unroll 4
    for (int t = 0; t < kC; ++t) {
      const float d = dos[t * kStateCols + lane];
#pragma unroll
      for (int i = 0; i < kRows; ++i) acc[i] += qe[t * K + warp + 8 * i] * d;
    }
#pragma unroll
    for (int i = 0; i < kRows; ++i) ds[i] = Exp2(bc[warp + 8 * i]) * ds[i] + a.scale * acc[i];
    __syncthreads();  // the next chunk overwrites qe, dos and bc
  }
#pragma unroll
  for (int i = 0; i < kRows; ++i) a.d_initial_state[(bh * K + warp + 8 * i) * V + col] = ds[i];
}

// ---------------------------------------------------------------------------------------------
// (2) Per-chunk gradients. Block = one chunk of one sequence. An output tile [64][N] is spread
// over 16 x 16 threads: rows rg + 16 i (i < 4), columns cg + 16 j (j < N / 16).

template <int K, int V>
struct ChunkLayout {
  static constexpr int kKP = K + 2, kVP = V + 2;  // bf16 pitches (odd word counts)
  static constexpr int kBP = K + 1;                // b pitch (fp32)
  static constexpr int kAP = kC + 1;               // A / dA pitch (fp32)
  static constexpr int kSP = V + 1;                // staged state pitch (fp32)
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kC * kKP * 2;
  static constexpr int kV = kK + kC * kKP * 2;
  static constexpr int kDo = kV + kC * kVP * 2;
  static constexpr int kB = kDo + kC * kVP * 2;
  static constexpr int kA = kB + kC * kBP * 4;
  static constexpr int kDA = kA + kC * kAP * 4;
  // S0, then dS ([K][V]), then q dq - k dk ([C][K + 1]); the larger of the two.
  static constexpr int kSt = kDA + kC * kAP * 4;
  static constexpr int kStFloats = (K * kSP > kC * kBP) ? (K * kSP) : (kC * kBP);
  static constexpr int kBc = kSt + kStFloats * 4;  // b_C, fp32 [K]
  static constexpr int kDgl = kBc + K * 4;         // rowsum(S_end * dS), fp32 [K]
  static constexpr int kBytes = kDgl + K * 4;
};

struct ChunkArgs {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  const float* g;
  const __nv_bfloat16* d_output;
  const float* chunk_states;    // [BH, N + 1, K, V]
  const float* d_chunk_states;  // [BH, N, K, V]
  float* dq;
  float* dk;
  float* dv;
  float* dg;
  int64_t tokens;
  int nchunks;
  float scale;
};

template <int K, int V>
__global__ void __launch_bounds__(kThreads, 1) GlaChunkGradKernel(const ChunkArgs a) {
  using L = ChunkLayout<K, V>;
  extern __shared__ __align__(16) char smem[];
  __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(smem + L::kQ);
  __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(smem + L::kK);
  __nv_bfloat16* vs = reinterpret_cast<__nv_bfloat16*>(smem + L::kV);
  __nv_bfloat16* dos = reinterpret_cast<__nv_bfloat16*>(smem + L::kDo);
  float* bs = reinterpret_cast<float*>(smem + L::kB);
  float* as = reinterpret_cast<float*>(smem + L::kA);
  float* das = reinterpret_cast<float*>(smem + L::kDA);
  float* st = reinterpret_cast<float*>(smem + L::kSt);
  float* bcs = reinterpret_cast<float*>(smem + L::kBc);
  float* dgl = reinterpret_cast<float*>(smem + L::kDgl);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int rg = tid / 16, cg = tid % 16;
  const int64_t bh = blockIdx.x / a.nchunks;
  const int c = static_cast<int>(blockIdx.x % a.nchunks);
  const int64_t T = a.tokens, t0 = static_cast<int64_t>(c) * kC;
  const int64_t rows = T - t0;
  constexpr int kNK = K / 16, kNV = V / 16;

  LoadBf16Tile<K>(qs, a.q + (bh * T + t0) * K, rows, tid);
  LoadBf16Tile<K>(ks, a.k + (bh * T + t0) * K, rows, tid);
  LoadBf16Tile<V>(vs, a.v + (bh * T + t0) * V, rows, tid);
  LoadBf16Tile<V>(dos, a.d_output + (bh * T + t0) * V, rows, tid);
  for (int i = tid; i < kC * K; i += kThreads) {
    const int t = i / K, d = i % K;
    bs[t * L::kBP + d] = t < rows ? a.g[(bh * T + t0) * K + i] * kLog2e : 0.f;
  }
  __syncthreads();
  if (tid < K) {
    float run = 0.f;
    for (int t = 0; t < kC; ++t) {
      run += bs[t * L::kBP + tid];
      bs[t * L::kBP + tid] = run;
    }
    bcs[tid] = run;
  }
  __syncthreads();

  // Scores A and dA (both scaled, zero above the diagonal).
  {
    float acc_a[4][4] = {}, acc_d[4][4] = {};
    for (int d = 0; d < K; ++d) {
      float qa[4], ba[4], kb[4], bb[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        qa[i] = Ld(qs + (rg + 16 * i) * L::kKP + d);
        ba[i] = bs[(rg + 16 * i) * L::kBP + d];
        kb[i] = Ld(ks + (cg + 16 * i) * L::kKP + d);
        bb[i] = bs[(cg + 16 * i) * L::kBP + d];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc_a[i][j] += qa[i] * kb[j] * Exp2(fminf(ba[i] - bb[j], 0.f));
      }
    }
    for (int e = 0; e < V; ++e) {
      float da[4], vb[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        da[i] = Ld(dos + (rg + 16 * i) * L::kVP + e);
        vb[i] = Ld(vs + (cg + 16 * i) * L::kVP + e);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc_d[i][j] += da[i] * vb[j];
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int t = rg + 16 * i, s = cg + 16 * j;
        as[t * L::kAP + s] = s <= t ? a.scale * acc_a[i][j] : 0.f;
        das[t * L::kAP + s] = s <= t ? a.scale * acc_d[i][j] : 0.f;
      }
    }
  }
  // Chunk-start state, fp32 [K][V + 1].
  const float* s0 = a.chunk_states + (bh * (a.nchunks + 1) + c) * K * V;
  for (int i = tid; i < K * V; i += kThreads) st[(i / V) * L::kSP + i % V] = s0[i];
  __syncthreads();

  // This thread's (row, key column) elements: rows rg + 16 i, columns cg + 16 j.
  float b_own[4][kNK];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < kNK; ++j) b_own[i][j] = bs[(rg + 16 * i) * L::kBP + cg + 16 * j];
  }

  // dq.
  float dq[4][kNK] = {};
  {
    for (int e = 0; e < V; ++e) {
      float da[4], sb[kNK];
#pragma unroll
      for (int i = 0; i < 4; ++i) da[i] = Ld(dos + (rg + 16 * i) * L::kVP + e);
#pragma unroll
      for (int j = 0; j < kNK; ++j) sb[j] = st[(cg + 16 * j) * L::kSP + e];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < kNK; ++j) dq[i][j] += da[i] * sb[j];
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < kNK; ++j) dq[i][j] *= a.scale * Exp2(b_own[i][j]);
    }
    const int s_max = rg + 48;  // dA[t][s] = 0 for s > t
    for (int s = 0; s <= s_max; ++s) {
      float da[4], kb[kNK], bb[kNK];
#pragma unroll
      for (int i = 0; i < 4; ++i) da[i] = das[(rg + 16 * i) * L::kAP + s];
#pragma unroll
      for (int j = 0; j < kNK; ++j) {
        kb[j] = Ld(ks + s * L::kKP + cg + 16 * j);
        bb[j] = bs[s * L::kBP + cg + 16 * j];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < kNK; ++j) {
          dq[i][j] += da[i] * kb[j] * Exp2(fminf(b_own[i][j] - bb[j], 0.f));
        }
      }
    }
  }
  __syncthreads();  // every read of S0 is done

  // dS at the chunk end, and rowsum(S_end * dS) for dg (S_end: the next chunk's start state).
  {
    const float* dsg = a.d_chunk_states + (bh * a.nchunks + c) * K * V;
    for (int i = tid; i < K * V; i += kThreads) st[(i / V) * L::kSP + i % V] = dsg[i];
    __syncthreads();
    const float* s_end = a.chunk_states + (bh * (a.nchunks + 1) + c + 1) * K * V;
    for (int d = warp; d < K; d += kThreads / 32) {
      float sum = 0.f;
      for (int e = lane; e < V; e += 32) sum += s_end[d * V + e] * st[d * L::kSP + e];
#pragma unroll
      for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      if (lane == 0) dgl[d] = sum;
    }
  }

  // dk.
  float dk[4][kNK] = {};
  {
    for (int e = 0; e < V; ++e) {
      float vb[4], sb[kNK];
#pragma unroll
      for (int i = 0; i < 4; ++i) vb[i] = Ld(vs + (rg + 16 * i) * L::kVP + e);
#pragma unroll
      for (int j = 0; j < kNK; ++j) sb[j] = st[(cg + 16 * j) * L::kSP + e];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < kNK; ++j) dk[i][j] += vb[i] * sb[j];
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < kNK; ++j) dk[i][j] *= Exp2(bcs[cg + 16 * j] - b_own[i][j]);
    }
    for (int t = rg; t < kC; ++t) {  // dA[t][s] = 0 for t < s
      float da[4], qb[kNK], bb[kNK];
#pragma unroll
      for (int i = 0; i < 4; ++i) da[i] = das[t * L::kAP + rg + 16 * i];
#pragma unroll
      for (int j = 0; j < kNK; ++j) {
        qb[j] = Ld(qs + t * L::kKP + cg + 16 * j);
        bb[j] = bs[t * L::kBP + cg + 16 * j];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < kNK; ++j) {
          dk[i][j] += da[i] * qb[j] * Exp2(fminf(bb[j] - b_own[i][j], 0.f));
        }
      }
    }
  }

  // dv: rows s = rg + 16 i, value columns cg + 16 j.
  {
    float dv[4][kNV] = {};
    for (int t = rg; t < kC; ++t) {  // A[t][s] = 0 for t < s
      float at[4], db[kNV];
#pragma unroll
      for (int i = 0; i < 4; ++i) at[i] = as[t * L::kAP + rg + 16 * i];
#pragma unroll
      for (int j = 0; j < kNV; ++j) db[j] = Ld(dos + t * L::kVP + cg + 16 * j);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < kNV; ++j) dv[i][j] += at[i] * db[j];
      }
    }
    for (int d = 0; d < K; ++d) {
      float kd[4], sb[kNV];
      const float bc = bcs[d];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int s = rg + 16 * i;
        kd[i] = Ld(ks + s * L::kKP + d) * Exp2(bc - bs[s * L::kBP + d]);
      }
#pragma unroll
      for (int j = 0; j < kNV; ++j) sb[j] = st[d * L::kSP + cg + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < kNV; ++j) dv[i][j] += kd[i] * sb[j];
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int s = rg + 16 * i;
      if (s >= rows) continue;
      float* out = a.dv + (bh * T + t0 + s) * V + cg;
#pragma unroll
      for (int j = 0; j < kNV; ++j) out[16 * j] = dv[i][j];
    }
  }

  // dq, dk out; q dq - k dk into shared memory for the reverse cumulative sum.
  __syncthreads();  // every read of dS is done
  float* dbs = st;  // [C][K + 1]
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int t = rg + 16 * i;
#pragma unroll
    for (int j = 0; j < kNK; ++j) {
      const int d = cg + 16 * j;
      dbs[t * L::kBP + d] =
          Ld(qs + t * L::kKP + d) * dq[i][j] - Ld(ks + t * L::kKP + d) * dk[i][j];
    }
    if (t >= rows) continue;
    float* oq = a.dq + (bh * T + t0 + t) * K + cg;
    float* ok = a.dk + (bh * T + t0 + t) * K + cg;
#pragma unroll
    for (int j = 0; j < kNK; ++j) {
      oq[16 * j] = dq[i][j];
      ok[16 * j] = dk[i][j];
    }
  }
  __syncthreads();
  if (tid < K) {
    float run = dgl[tid];
    for (int t = kC - 1; t >= 0; --t) {
      run += dbs[t * L::kBP + tid];
      if (t < rows) a.dg[(bh * T + t0 + t) * K + tid] = run;
    }
  }
}

template <int K, int V>
cudaError_t LaunchDims(const GlaChunkedBackwardParams& p, cudaStream_t stream) {
  const int64_t bh = p.batch * p.heads;
  const int nchunks = static_cast<int>((p.tokens + kC - 1) / kC);
  ScanArgs s{};
  s.q = static_cast<const __nv_bfloat16*>(p.q);
  s.g = p.g;
  s.d_output = static_cast<const __nv_bfloat16*>(p.d_output);
  s.d_final_state = p.d_final_state;
  s.d_chunk_states = static_cast<float*>(p.workspace);
  s.d_initial_state = p.d_initial_state;
  s.tokens = p.tokens;
  s.nchunks = nchunks;
  s.value_dim = V;
  s.scale = p.scale;
  using SL = ScanLayout<K>;
  HYB_CUDA_TRY(cudaFuncSetAttribute(GlaStateGradKernel<K>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, SL::kBytes));
  GlaStateGradKernel<K>
      <<<static_cast<unsigned>(bh * (V / kStateCols)), kThreads, SL::kBytes, stream>>>(s);
  HYB_CUDA_TRY(cudaGetLastError());

  ChunkArgs c{};
  c.q = s.q;
  c.k = static_cast<const __nv_bfloat16*>(p.k);
  c.v = static_cast<const __nv_bfloat16*>(p.v);
  c.g = p.g;
  c.d_output = s.d_output;
  c.chunk_states = p.chunk_states;
  c.d_chunk_states = s.d_chunk_states;
  c.dq = p.dq;
  c.dk = p.dk;
  c.dv = p.dv;
  c.dg = p.dg;
  c.tokens = p.tokens;
  c.nchunks = nchunks;
  c.scale = p.scale;
  using CL = ChunkLayout<K, V>;
  HYB_CUDA_TRY(cudaFuncSetAttribute(GlaChunkGradKernel<K, V>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, CL::kBytes));
  GlaChunkGradKernel<K, V>
      <<<static_cast<unsigned>(bh * nchunks), kThreads, CL::kBytes, stream>>>(c);
  HYB_CUDA_TRY(cudaGetLastError());
  return cudaSuccess;
}

}  // namespace

size_t GlaChunkedBackwardWorkspaceBytes(const GlaChunkedBackwardParams& p) {
  const int64_t nchunks = (p.tokens + kC - 1) / kC;
  return static_cast<size_t>(p.batch * p.heads * nchunks * p.key_dim * p.value_dim) *
         sizeof(float);
}

cudaError_t LaunchGlaChunkedBackward(const GlaChunkedBackwardParams& p, cudaStream_t stream) {
  if (!GlaChunkedSupportsDims(p.key_dim, p.value_dim)) return cudaErrorInvalidValue;
  if (p.batch * p.heads == 0) return cudaSuccess;
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
  if (p.key_dim == 64 && p.value_dim == 64) return LaunchDims<64, 64>(p, stream);
  if (p.key_dim == 64 && p.value_dim == 128) return LaunchDims<64, 128>(p, stream);
  if (p.key_dim == 128 && p.value_dim == 64) return LaunchDims<128, 64>(p, stream);
  return LaunchDims<128, 128>(p, stream);
}

}  // namespace hyb::kernels::cuda
