// Chunk-parallel Gated DeltaNet backward for sm_80+ (tuned for sm_90), bf16 mma.sync with fp32
// accumulators; the three launches are described in gated_delta_fast_launch.h. Per chunk, with
// b_t the cumulative log decay inside it (stored by the forward in log2 units), gamma_t = e^b_t,
// M[t][s] = e^(b_t - b_s) (s <= t), e_t = e^(b_C - b_t), S0 / dS the state / its gradient at the
// chunk start / end, W = v_new, Tinv = (I + diag(beta) Lm)^-1 with Lm = strict(M * K K^T) and
// A = M * Q K^T (kernels::GatedDeltaChunkedBackwardReference's notation):
//   dW  = scale A^T dO + diag(e) K dS                     (launches 1 and 2)
//   dS0 = e^(b_C) dS + scale (diag(gamma) Q)^T dO - w^T dW
//   dr = Tinv^T dW, dA = scale dO W^T (s <= t), dL = -dr W^T (s < t),
//   E = diag(gamma) dr S0^T, dq0 = scale diag(gamma) dO S0^T, dk0 = diag(e) W dS^T,
//   dq = dq0 + (dA * M) K,  dk = dk0 - diag(beta) E + (dA * M)^T Q + (D + D^T) K with
//   D = diag(beta) dL * M,  dv = diag(beta) dr,
//   dbeta = rowsum(V * dr) - rowsum(K * E) + rowsum(dL * Lm),
//   db = rowsum(Q * dq0) - beta rowsum(K * E) - rowsum(K * dk0) + rowsum(Z) - colsum(Z),
//   Z = strict(dL * diag(beta) Lm + dA * A), and db_C += sum(K * dk0) + e^(b_C) sum(S0 * dS);
//   dg = the reverse cumulative sum of db inside the chunk.
// Every kernel has a fixed-length (kPacked = false) and a packed-sequence instance
// (GatedDeltaFastVarlen): they differ only in where a block finds its tokens and sequence length.
#include <cuda_bf16.h>

#include "cuda_check.h"
#include "gated_delta_fast.cuh"
#include "gated_delta_fast_launch.h"

namespace hyb::kernels::cuda {
namespace {

using gdn::kC;
using bf16 = __nv_bfloat16;

constexpr int kThreads = 128;  // 4 warps; warp w owns the chunk's rows 16 w .. 16 w + 15

__device__ __forceinline__ int RowsOf(int64_t tokens, int64_t t0) {
  return tokens - t0 < kC ? static_cast<int>(tokens - t0) : kC;
}

__device__ __forceinline__ float QuadSum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}

__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

template <int N>
__device__ __forceinline__ void Zero(float (&acc)[N][4]) {
#pragma unroll
  for (int j = 0; j < N; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
}

// ---------------------------------------------------------------------------------------------
// (1) dv_local = scale A^T dO per chunk: row s of A^T holds 2^(b_t - b_s) (k_s . q_t), t >= s.

template <int K, int V>
struct LocalLayout {
  static constexpr int kKP = K + 8, kVP = V + 8;
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kC * kKP * 2;
  static constexpr int kDo = kK + kC * kKP * 2;
  static constexpr int kB = kDo + kC * kVP * 2;
  static constexpr int kBytes = kB + kC * 4;
};

template <int K, int V, bool kPacked>
__global__ void __launch_bounds__(kThreads) LocalDvKernel(GatedDeltaFastBackwardParams p) {
  using L = LocalLayout<K, V>;
  extern __shared__ __align__(16) char smem[];
  bf16* qs = reinterpret_cast<bf16*>(smem + L::kQ);
  bf16* ks = reinterpret_cast<bf16*>(smem + L::kK);
  bf16* dos = reinterpret_cast<bf16*>(smem + L::kDo);
  float* bs = reinterpret_cast<float*>(smem + L::kB);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t bh = blockIdx.y, t0 = static_cast<int64_t>(blockIdx.x) * kC;
  int rows;
  int64_t tok;
  if constexpr (kPacked) {
    gdn::PackedChunk(p.varlen, p.tokens, blockIdx.x, bh, &tok, &rows);
  } else {
    rows = RowsOf(p.tokens, t0);
    tok = bh * p.tokens + t0;
  }
  const int64_t prow = bh * gridDim.x * int64_t{kC} + t0;
  gdn::CopyTile<kC, K, L::kKP, kThreads>(qs, static_cast<const bf16*>(p.q) + tok * K, K, rows,
                                         tid);
  gdn::CopyTile<kC, K, L::kKP, kThreads>(ks, static_cast<const bf16*>(p.k) + tok * K, K, rows,
                                         tid);
  gdn::CopyTile<kC, V, L::kVP, kThreads>(dos, static_cast<const bf16*>(p.d_output) + tok * V, V,
                                         rows, tid);
  if (tid < kC / 4) gdn::CpAsync16(bs + 4 * tid, p.ws.b + prow + 4 * tid, true);
  gdn::CpAsyncCommit();
  gdn::CpAsyncWait<0>();
  __syncthreads();

  const int r = 16 * warp + (lane >> 2), c0 = 2 * (lane & 3);
  uint32_t pa[4][4];
  {
    float acc[8][4];
    Zero(acc);
#pragma unroll
    for (int k0 = 0; k0 < K; k0 += 16) {
      uint32_t a[4];
      gdn::LoadA(a, ks, L::kKP, 16 * warp, k0, lane);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        if (np < warp) continue;
        uint32_t b[4];
        gdn::LoadBT2(b, qs, L::kKP, k0, 16 * np, lane);
        gdn::Mma(acc[2 * np], a, b[0], b[1]);
        gdn::Mma(acc[2 * np + 1], a, b[2], b[3]);
      }
    }
    const float b_lo = bs[r], b_hi = bs[r + 8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int s = r + 8 * (e >> 1), t = 8 * j + c0 + (e & 1);
        acc[j][e] = t >= s ? p.scale * acc[j][e] * gdn::Exp2(bs[t] - (e >> 1 ? b_hi : b_lo)) : 0.f;
      }
    }
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) gdn::AccToA(pa[kk], acc[2 * kk], acc[2 * kk + 1]);
  }
  float out[V / 8][4];
  Zero(out);
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    if (kk < warp) continue;
#pragma unroll
    for (int np = 0; np < V / 16; ++np) {
      uint32_t b[4];
      gdn::LoadB2(b, dos, L::kVP, 16 * kk, 16 * np, lane);
      gdn::Mma(out[2 * np], pa[kk], b[0], b[1]);
      gdn::Mma(out[2 * np + 1], pa[kk], b[2], b[3]);
    }
  }
  bf16* og = static_cast<bf16*>(p.dv_local) + prow * V;
#pragma unroll
  for (int j = 0; j < V / 8; ++j) {
    const int col = 8 * j + c0;
    *reinterpret_cast<uint32_t*>(og + r * V + col) = gdn::PackBf16(out[j][0], out[j][1]);
    *reinterpret_cast<uint32_t*>(og + (r + 8) * V + col) = gdn::PackBf16(out[j][2], out[j][3]);
  }
}

// ---------------------------------------------------------------------------------------------
// (2) The state gradient, in reverse over chunks. Block = (slice of S value columns, sequence);
// the slice's [K][S] fp32 gradient lives in registers, warp w holding key rows w K / 4 ...

template <int K, int S>
struct DStateLayout {
  static constexpr int kKP = K + 8, kSP = S + 8;
  // One stage: q, k, w (bf16 [C][kKP]), dv_local and dO slices (bf16 [C][kSP]), b (fp32 [C]).
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kC * kKP * 2;
  static constexpr int kW = kK + kC * kKP * 2;
  static constexpr int kDvl = kW + kC * kKP * 2;
  static constexpr int kDo = kDvl + kC * kSP * 2;
  static constexpr int kB = kDo + kC * kSP * 2;
  static constexpr int kStage = kB + kC * 4;
  static constexpr int kDs = 2 * kStage;           // dS in bf16 [K][kSP]
  static constexpr int kNdw = kDs + K * kSP * 2;   // -dW (bf16 [C][kSP])
  static constexpr int kGdo = kNdw + kC * kSP * 2;  // scale gamma dO (bf16 [C][kSP])
  static constexpr int kBytes = kGdo + kC * kSP * 2;
};

template <int K, int V, int S, bool kPacked>
__global__ void __launch_bounds__(kThreads) DStateKernel(GatedDeltaFastBackwardParams p) {
  using L = DStateLayout<K, S>;
  constexpr int kMT = K / 64, kNT = S / 8;
  extern __shared__ __align__(16) char smem[];
  bf16* dss = reinterpret_cast<bf16*>(smem + L::kDs);
  bf16* ndw = reinterpret_cast<bf16*>(smem + L::kNdw);
  bf16* gdo = reinterpret_cast<bf16*>(smem + L::kGdo);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int col0 = blockIdx.x * S;
  const int64_t bh = blockIdx.y;
  // The sequence: its length, chunks, first token (tok0), first padded row (row0) and chunk
  // state (state0); packed, a sequence of length 0 has no chunks.
  int64_t tokens, tok0, row0, state0;
  int nchunks;
  if constexpr (kPacked) {
    const gdn::SeqChunks sc = gdn::PackedSeq(p.varlen, p.tokens, bh);
    tokens = sc.tokens;
    nchunks = sc.nchunks;
    tok0 = sc.tok0;
    row0 = sc.chunk0 * kC;
    state0 = sc.chunk0;
  } else {
    tokens = p.tokens;
    nchunks = static_cast<int>((p.tokens + kC - 1) / kC);
    const int64_t tp = static_cast<int64_t>(nchunks) * kC;
    tok0 = bh * p.tokens;
    row0 = bh * tp;
    state0 = bh * nchunks;
  }
  const bf16* qg = static_cast<const bf16*>(p.q) + tok0 * K;
  const bf16* kg = static_cast<const bf16*>(p.k) + tok0 * K;
  const bf16* wg = static_cast<const bf16*>(p.ws.w) + row0 * K;
  const bf16* dvlg = static_cast<const bf16*>(p.dv_local) + row0 * V + col0;
  const bf16* dog = static_cast<const bf16*>(p.d_output) + tok0 * V + col0;
  const float* bg = p.ws.b + row0;
  float* dwg = p.d_w + row0 * V + col0;
  bf16* dsg = static_cast<bf16*>(p.d_chunk_states) + state0 * K * V + col0;

  auto load_stage = [&](int c) {
    char* base = smem + (c & 1) * L::kStage;
    const int64_t t0 = static_cast<int64_t>(c) * kC;
    const int rows = RowsOf(tokens, t0);
    gdn::CopyTile<kC, K, L::kKP, kThreads>(reinterpret_cast<bf16*>(base + L::kQ), qg + t0 * K, K,
                                           rows, tid);
    gdn::CopyTile<kC, K, L::kKP, kThreads>(reinterpret_cast<bf16*>(base + L::kK), kg + t0 * K, K,
                                           rows, tid);
    gdn::CopyTile<kC, K, L::kKP, kThreads>(reinterpret_cast<bf16*>(base + L::kW), wg + t0 * K, K,
                                           kC, tid);
    gdn::CopyTile<kC, S, L::kSP, kThreads>(reinterpret_cast<bf16*>(base + L::kDvl),
                                           dvlg + t0 * V, V, kC, tid);
    gdn::CopyTile<kC, S, L::kSP, kThreads>(reinterpret_cast<bf16*>(base + L::kDo), dog + t0 * V,
                                           V, rows, tid);
    if (tid < kC / 4) gdn::CpAsync16(base + L::kB + 16 * tid, bg + t0 + 4 * tid, true);
  };

  const int srow0 = warp * (K / 4) + (lane >> 2), scol0 = 2 * (lane & 3);
  float ds[kMT][kNT][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = srow0 + 16 * mt + 8 * (e >> 1), c = 8 * nt + scol0 + (e & 1);
        ds[mt][nt][e] = p.d_final_state != nullptr
                            ? p.d_final_state[(bh * K + r) * V + col0 + c]
                            : 0.f;
      }
    }
  }

  if (!kPacked || nchunks > 0) load_stage(nchunks - 1);
  gdn::CpAsyncCommit();
  for (int c = nchunks - 1; c >= 0; --c) {
    gdn::CpAsyncWait<0>();
    __syncthreads();  // stage c landed; every read of the other stage, dss, ndw and gdo is done
    if (c > 0) load_stage(c - 1);
    gdn::CpAsyncCommit();
    const char* stage = smem + (c & 1) * L::kStage;
    const bf16* qs = reinterpret_cast<const bf16*>(stage + L::kQ);
    const bf16* ks = reinterpret_cast<const bf16*>(stage + L::kK);
    const bf16* ws = reinterpret_cast<const bf16*>(stage + L::kW);
    const bf16* dvl = reinterpret_cast<const bf16*>(stage + L::kDvl);
    const bf16* dos = reinterpret_cast<const bf16*>(stage + L::kDo);
    const float* bs = reinterpret_cast<const float*>(stage + L::kB);

    // dS at the chunk end in bf16: into shared memory and the chunk-end store.
    bf16* cs = dsg + static_cast<int64_t>(c) * K * V;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
        const int r = srow0 + 16 * mt, col = 8 * nt + scol0;
        const uint32_t lo = gdn::PackBf16(ds[mt][nt][0], ds[mt][nt][1]);
        const uint32_t hi = gdn::PackBf16(ds[mt][nt][2], ds[mt][nt][3]);
        *reinterpret_cast<uint32_t*>(dss + r * L::kSP + col) = lo;
        *reinterpret_cast<uint32_t*>(dss + (r + 8) * L::kSP + col) = hi;
        *reinterpret_cast<uint32_t*>(cs + static_cast<int64_t>(r) * V + col) = lo;
        *reinterpret_cast<uint32_t*>(cs + static_cast<int64_t>(r + 8) * V + col) = hi;
      }
    }
    __syncthreads();

    // dW = dv_local + diag(e) K dS for rows 16 warp..; -dW and scale gamma dO to shared memory.
    {
      float acc[kNT][4];
      Zero(acc);
#pragma unroll
      for (int k0 = 0; k0 < K; k0 += 16) {
        uint32_t a[4];
        gdn::LoadA(a, ks, L::kKP, 16 * warp, k0, lane);
#pragma unroll
        for (int np = 0; np < kNT / 2; ++np) {
          uint32_t b[4];
          gdn::LoadB2(b, dss, L::kSP, k0, 16 * np, lane);
          gdn::Mma(acc[2 * np], a, b[0], b[1]);
          gdn::Mma(acc[2 * np + 1], a, b[2], b[3]);
        }
      }
      const float b_last = bs[kC - 1];
      const int r = 16 * warp + (lane >> 2);
      const float e_lo = gdn::Exp2(b_last - bs[r]), e_hi = gdn::Exp2(b_last - bs[r + 8]);
      const float g_lo = p.scale * gdn::Exp2(bs[r]), g_hi = p.scale * gdn::Exp2(bs[r + 8]);
      float* dw = dwg + static_cast<int64_t>(c) * kC * V;
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
        const int col = 8 * j + scol0;
        const float2 l_lo =
            gdn::UnpackBf16(*reinterpret_cast<const uint32_t*>(dvl + r * L::kSP + col));
        const float2 l_hi =
            gdn::UnpackBf16(*reinterpret_cast<const uint32_t*>(dvl + (r + 8) * L::kSP + col));
        const float x0 = l_lo.x + e_lo * acc[j][0], x1 = l_lo.y + e_lo * acc[j][1];
        const float x2 = l_hi.x + e_hi * acc[j][2], x3 = l_hi.y + e_hi * acc[j][3];
        *reinterpret_cast<float2*>(dw + static_cast<int64_t>(r) * V + col) = make_float2(x0, x1);
        *reinterpret_cast<float2*>(dw + static_cast<int64_t>(r + 8) * V + col) =
            make_float2(x2, x3);
        *reinterpret_cast<uint32_t*>(ndw + r * L::kSP + col) = gdn::PackBf16(-x0, -x1);
        *reinterpret_cast<uint32_t*>(ndw + (r + 8) * L::kSP + col) = gdn::PackBf16(-x2, -x3);
        const float2 o_lo =
            gdn::UnpackBf16(*reinterpret_cast<const uint32_t*>(dos + r * L::kSP + col));
        const float2 o_hi =
            gdn::UnpackBf16(*reinterpret_cast<const uint32_t*>(dos + (r + 8) * L::kSP + col));
        *reinterpret_cast<uint32_t*>(gdo + r * L::kSP + col) =
            gdn::PackBf16(g_lo * o_lo.x, g_lo * o_lo.y);
        *reinterpret_cast<uint32_t*>(gdo + (r + 8) * L::kSP + col) =
            gdn::PackBf16(g_hi * o_hi.x, g_hi * o_hi.y);
      }
    }
    __syncthreads();

    // dS <- e^(b_C) dS + Q^T (scale gamma dO) - w^T dW.
    const float decay = gdn::Exp2(bs[kC - 1]);
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      const int m0 = warp * (K / 4) + 16 * mt;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) ds[mt][nt][e] *= decay;
      }
#pragma unroll
      for (int k0 = 0; k0 < kC; k0 += 16) {
        uint32_t aq[4], aw[4];
        gdn::LoadAT(aq, qs, L::kKP, m0, k0, lane);
        gdn::LoadAT(aw, ws, L::kKP, m0, k0, lane);
#pragma unroll
        for (int np = 0; np < kNT / 2; ++np) {
          uint32_t b[4];
          gdn::LoadB2(b, gdo, L::kSP, k0, 16 * np, lane);
          gdn::Mma(ds[mt][2 * np], aq, b[0], b[1]);
          gdn::Mma(ds[mt][2 * np + 1], aq, b[2], b[3]);
          gdn::LoadB2(b, ndw, L::kSP, k0, 16 * np, lane);
          gdn::Mma(ds[mt][2 * np], aw, b[0], b[1]);
          gdn::Mma(ds[mt][2 * np + 1], aw, b[2], b[3]);
        }
      }
    }
  }

#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      const int r = srow0 + 16 * mt, col = col0 + 8 * nt + scol0;
      float* f = p.d_initial_state + (bh * K + r) * V + col;
      *reinterpret_cast<float2*>(f) = make_float2(ds[mt][nt][0], ds[mt][nt][1]);
      *reinterpret_cast<float2*>(f + 8 * V) = make_float2(ds[mt][nt][2], ds[mt][nt][3]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// (3) Every token's gradients, per chunk.

template <int K, int V>
struct GradLayout {
  static constexpr int kKP = K + 8, kVP = V + 8, kCP = kC + 8, kFP = kC + 1;
  static constexpr int kQ = 0;                      // q (bf16 [C][kKP])
  static constexpr int kK = kQ + kC * kKP * 2;      // k
  static constexpr int kW = kK + kC * kKP * 2;      // v_new (bf16 [C][kVP])
  static constexpr int kDo = kW + kC * kVP * 2;     // dO
  static constexpr int kS0 = kDo + kC * kVP * 2;    // S0 (bf16 [K][kVP])
  static constexpr int kDs = kS0 + K * kVP * 2;     // dS at the chunk end
  static constexpr int kDr = kDs + K * kVP * 2;     // dW, then dr (bf16 [C][kVP])
  static constexpr int kTi = kDr + kC * kVP * 2;    // Tinv (bf16 [C][kCP])
  static constexpr int kDqk = kTi + kC * kCP * 2;   // dA * M (bf16 [C][kCP])
  static constexpr int kSym = kDqk + kC * kCP * 2;  // D + D^T (bf16 [C][kCP])
  static constexpr int kDkk = kSym + kC * kCP * 2;  // D (fp32 [C][kFP])
  static constexpr int kZ = kDkk + kC * kFP * 4;    // Z (fp32 [C][kFP])
  static constexpr int kB = kZ + kC * kFP * 4;      // b, beta, db parts (fp32 [C] each)
  static constexpr int kBeta = kB + kC * 4;
  static constexpr int kDbRow = kBeta + kC * 4;     // per-row sums of the row owners
  static constexpr int kDbZ = kDbRow + kC * 4;      // rowsum(Z) - colsum(Z)
  static constexpr int kDb = kDbZ + kC * 4;         // db, complete
  static constexpr int kRed = kDb + kC * 4;         // block reductions (fp32 [8])
  static constexpr int kBytes = kRed + 8 * 4;
};

template <int K, int V, bool kPacked>
__global__ void __launch_bounds__(kThreads) GradKernel(GatedDeltaFastBackwardParams p) {
  using L = GradLayout<K, V>;
  static_assert(K == V, "one column loop serves both head dims");
  extern __shared__ __align__(16) char smem[];
  bf16* qs = reinterpret_cast<bf16*>(smem + L::kQ);
  bf16* ks = reinterpret_cast<bf16*>(smem + L::kK);
  bf16* ws = reinterpret_cast<bf16*>(smem + L::kW);
  bf16* dos = reinterpret_cast<bf16*>(smem + L::kDo);
  bf16* s0s = reinterpret_cast<bf16*>(smem + L::kS0);
  bf16* dss = reinterpret_cast<bf16*>(smem + L::kDs);
  bf16* drs = reinterpret_cast<bf16*>(smem + L::kDr);
  bf16* tis = reinterpret_cast<bf16*>(smem + L::kTi);
  bf16* dqks = reinterpret_cast<bf16*>(smem + L::kDqk);
  bf16* syms = reinterpret_cast<bf16*>(smem + L::kSym);
  float* dkkf = reinterpret_cast<float*>(smem + L::kDkk);
  float* zf = reinterpret_cast<float*>(smem + L::kZ);
  float* bs = reinterpret_cast<float*>(smem + L::kB);
  float* betas = reinterpret_cast<float*>(smem + L::kBeta);
  float* db_row = reinterpret_cast<float*>(smem + L::kDbRow);
  float* db_z = reinterpret_cast<float*>(smem + L::kDbZ);
  float* db_all = reinterpret_cast<float*>(smem + L::kDb);
  float* red = reinterpret_cast<float*>(smem + L::kRed);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int chunk = blockIdx.x;
  const int64_t bh = blockIdx.y, t0 = static_cast<int64_t>(chunk) * kC;
  int rows;
  int64_t tok;
  if constexpr (kPacked) {
    gdn::PackedChunk(p.varlen, p.tokens, chunk, bh, &tok, &rows);
  } else {
    rows = RowsOf(p.tokens, t0);
    tok = bh * p.tokens + t0;
  }
  const int64_t prow = bh * gridDim.x * int64_t{kC} + t0;
  const int64_t state = (bh * gridDim.x + chunk) * int64_t{K} * V;
  gdn::CopyTile<kC, K, L::kKP, kThreads>(qs, static_cast<const bf16*>(p.q) + tok * K, K, rows,
                                         tid);
  gdn::CopyTile<kC, K, L::kKP, kThreads>(ks, static_cast<const bf16*>(p.k) + tok * K, K, rows,
                                         tid);
  gdn::CopyTile<kC, V, L::kVP, kThreads>(ws, static_cast<const bf16*>(p.ws.v_new) + prow * V, V,
                                         kC, tid);
  gdn::CopyTile<kC, V, L::kVP, kThreads>(dos, static_cast<const bf16*>(p.d_output) + tok * V, V,
                                         rows, tid);
  gdn::CopyTile<kC, kC, L::kCP, kThreads>(tis, static_cast<const bf16*>(p.ws.tinv) + prow * kC,
                                          kC, kC, tid);
  if (tid < kC / 4) gdn::CpAsync16(bs + 4 * tid, p.ws.b + prow + 4 * tid, true);
  gdn::CpAsyncCommit();
  // The states in a second group: they land while the C x C matrices are computed.
  gdn::CopyTile<K, V, L::kVP, kThreads>(s0s, static_cast<const bf16*>(p.ws.chunk_states) + state,
                                        V, K, tid);
  gdn::CopyTile<K, V, L::kVP, kThreads>(dss, static_cast<const bf16*>(p.d_chunk_states) + state,
                                        V, K, tid);
  gdn::CpAsyncCommit();
  if (tid < kC) betas[tid] = tid < rows ? p.beta[tok + tid] : 0.f;
  {
    const float* dwg = p.d_w + prow * V;
    for (int i = tid; i < kC * V / 4; i += kThreads) {
      const int r = i / (V / 4), c = 4 * (i % (V / 4));
      const float4 x = *reinterpret_cast<const float4*>(dwg + r * V + c);
      *reinterpret_cast<uint2*>(drs + r * L::kVP + c) =
          make_uint2(gdn::PackBf16(x.x, x.y), gdn::PackBf16(x.z, x.w));
    }
  }
  gdn::CpAsyncWait<1>();
  __syncthreads();
  // dr = dW + (Tinv - I)^T dW: the unit diagonal's term from the fp32 dW, not its bf16 copy.
  if (tid < kC) tis[tid * L::kCP + tid] = __float2bfloat16_rn(0.f);
  __syncthreads();

  const int r = 16 * warp + (lane >> 2), c0 = 2 * (lane & 3);
  const float b_lo = bs[r], b_hi = bs[r + 8], b_last = bs[kC - 1];
  const float beta_lo = betas[r], beta_hi = betas[r + 8];
  // Per-row partial sums of this thread (rows r and r + 8), reduced over the quad at the end.
  float dbeta_lo = 0.f, dbeta_hi = 0.f, db_lo = 0.f, db_hi = 0.f;

  // dr = Tinv^T dW for rows r: Tinv[t][s] != 0 only for t >= s (the diagonal added in fp32).
  // dv = beta dr; rowsum(V * dr).
  {
    float acc[V / 8][4];
    Zero(acc);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      if (kk < warp) continue;
      uint32_t a[4];
      gdn::LoadAT(a, tis, L::kCP, 16 * warp, 16 * kk, lane);
#pragma unroll
      for (int np = 0; np < V / 16; ++np) {
        uint32_t b[4];
        gdn::LoadB2(b, drs, L::kVP, 16 * kk, 16 * np, lane);
        gdn::Mma(acc[2 * np], a, b[0], b[1]);
        gdn::Mma(acc[2 * np + 1], a, b[2], b[3]);
      }
    }
    const bf16* vg = static_cast<const bf16*>(p.v) + tok * V;
    float* dvg = p.dv + tok * V;
    const float* dwg = p.d_w + prow * V;
#pragma unroll
    for (int j = 0; j < V / 8; ++j) {
      const int col = 8 * j + c0;
      const float2 w_lo = *reinterpret_cast<const float2*>(dwg + r * V + col);
      const float2 w_hi = *reinterpret_cast<const float2*>(dwg + (r + 8) * V + col);
      acc[j][0] += w_lo.x;
      acc[j][1] += w_lo.y;
      acc[j][2] += w_hi.x;
      acc[j][3] += w_hi.y;
      if (r < rows) {
        const float2 x = gdn::UnpackBf16(*reinterpret_cast<const uint32_t*>(vg + r * V + col));
        dbeta_lo += x.x * acc[j][0] + x.y * acc[j][1];
        *reinterpret_cast<float2*>(dvg + r * V + col) =
            make_float2(beta_lo * acc[j][0], beta_lo * acc[j][1]);
      }
      if (r + 8 < rows) {
        const float2 x =
            gdn::UnpackBf16(*reinterpret_cast<const uint32_t*>(vg + (r + 8) * V + col));
        dbeta_hi += x.x * acc[j][2] + x.y * acc[j][3];
        *reinterpret_cast<float2*>(dvg + (r + 8) * V + col) =
            make_float2(beta_hi * acc[j][2], beta_hi * acc[j][3]);
      }
    }
    __syncthreads();  // every warp is done reading dW
#pragma unroll
    for (int j = 0; j < V / 8; ++j) {
      const int col = 8 * j + c0;
      *reinterpret_cast<uint32_t*>(drs + r * L::kVP + col) = gdn::PackBf16(acc[j][0], acc[j][1]);
      *reinterpret_cast<uint32_t*>(drs + (r + 8) * L::kVP + col) =
          gdn::PackBf16(acc[j][2], acc[j][3]);
    }
  }
  __syncwarp();  // the warp reads back only its own rows of dr

  // dL = -dr W^T and Lm = strict(M * K K^T) for rows r: D, Z's first part, rowsum(dL * Lm).
  {
    float dl[8][4], kk[8][4];
    Zero(dl);
    Zero(kk);
#pragma unroll
    for (int k0 = 0; k0 < V; k0 += 16) {
      uint32_t a[4];
      gdn::LoadA(a, drs, L::kVP, 16 * warp, k0, lane);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        if (np > warp) break;
        uint32_t b[4];
        gdn::LoadBT2(b, ws, L::kVP, k0, 16 * np, lane);
        gdn::Mma(dl[2 * np], a, b[0], b[1]);
        gdn::Mma(dl[2 * np + 1], a, b[2], b[3]);
      }
    }
#pragma unroll
    for (int k0 = 0; k0 < K; k0 += 16) {
      uint32_t a[4];
      gdn::LoadA(a, ks, L::kKP, 16 * warp, k0, lane);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        if (np > warp) break;
        uint32_t b[4];
        gdn::LoadBT2(b, ks, L::kKP, k0, 16 * np, lane);
        gdn::Mma(kk[2 * np], a, b[0], b[1]);
        gdn::Mma(kk[2 * np + 1], a, b[2], b[3]);
      }
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int t = r + 8 * (e >> 1), s = 8 * j + c0 + (e & 1);
        const bool hi = e >> 1;
        float d = 0.f, z = 0.f;
        if (s < t) {
          const float m = gdn::Exp2((hi ? b_hi : b_lo) - bs[s]);
          const float lm = m * kk[j][e], dlv = -dl[j][e], bt = hi ? beta_hi : beta_lo;
          if (hi) {
            dbeta_hi += dlv * lm;
          } else {
            dbeta_lo += dlv * lm;
          }
          z = dlv * bt * lm;
          d = dlv * bt * m;
        }
        dkkf[t * L::kFP + s] = d;
        zf[t * L::kFP + s] = z;
      }
    }
  }

  // dA = scale dO W^T and A = M * Q K^T for rows r: dA * M, Z's second part.
  {
    float da[8][4], qk[8][4];
    Zero(da);
    Zero(qk);
#pragma unroll
    for (int k0 = 0; k0 < V; k0 += 16) {
      uint32_t a[4];
      gdn::LoadA(a, dos, L::kVP, 16 * warp, k0, lane);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        if (np > warp) break;
        uint32_t b[4];
        gdn::LoadBT2(b, ws, L::kVP, k0, 16 * np, lane);
        gdn::Mma(da[2 * np], a, b[0], b[1]);
        gdn::Mma(da[2 * np + 1], a, b[2], b[3]);
      }
    }
#pragma unroll
    for (int k0 = 0; k0 < K; k0 += 16) {
      uint32_t a[4];
      gdn::LoadA(a, qs, L::kKP, 16 * warp, k0, lane);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        if (np > warp) break;
        uint32_t b[4];
        gdn::LoadBT2(b, ks, L::kKP, k0, 16 * np, lane);
        gdn::Mma(qk[2 * np], a, b[0], b[1]);
        gdn::Mma(qk[2 * np + 1], a, b[2], b[3]);
      }
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      float dqk[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int t = r + 8 * (e >> 1), s = 8 * j + c0 + (e & 1);
        dqk[e] = 0.f;
        if (s <= t) {
          const float m = gdn::Exp2((e >> 1 ? b_hi : b_lo) - bs[s]);
          const float dav = p.scale * da[j][e];
          dqk[e] = dav * m;
          if (s < t) zf[t * L::kFP + s] += dav * m * qk[j][e];
        }
      }
      const int col = 8 * j + c0;
      *reinterpret_cast<uint32_t*>(dqks + r * L::kCP + col) = gdn::PackBf16(dqk[0], dqk[1]);
      *reinterpret_cast<uint32_t*>(dqks + (r + 8) * L::kCP + col) = gdn::PackBf16(dqk[2], dqk[3]);
    }
  }
  gdn::CpAsyncWait<0>();
  __syncthreads();

  // D + D^T; rowsum(Z) - colsum(Z); sum(S0 * dS).
  for (int i = tid; i < kC * kC; i += kThreads) {
    const int t = i / kC, s = i % kC;
    syms[t * L::kCP + s] = __float2bfloat16_rn(dkkf[t * L::kFP + s] + dkkf[s * L::kFP + t]);
  }
  if (tid < kC) {
    float acc = 0.f;
    for (int s = 0; s < kC; ++s) acc += zf[tid * L::kFP + s] - zf[s * L::kFP + tid];
    db_z[tid] = acc;
  }
  {
    float acc = 0.f;
    for (int i = tid; i < K * V / 2; i += kThreads) {
      const int rr = i / (V / 2), cc = 2 * (i % (V / 2));
      const float2 x = gdn::UnpackBf16(*reinterpret_cast<const uint32_t*>(s0s + rr * L::kVP + cc));
      const float2 y = gdn::UnpackBf16(*reinterpret_cast<const uint32_t*>(dss + rr * L::kVP + cc));
      acc += x.x * y.x + x.y * y.y;
    }
    acc = WarpSum(acc);
    if (lane == 0) red[warp] = acc;
  }
  __syncthreads();

  const float gam_lo = gdn::Exp2(b_lo), gam_hi = gdn::Exp2(b_hi);
  const float end_lo = gdn::Exp2(b_last - b_lo), end_hi = gdn::Exp2(b_last - b_hi);
  float k_dk0 = 0.f;  // this thread's part of sum(K * dk0)
  // Columns in two halves of K / 2 (fewer live accumulators).
#pragma unroll 1
  for (int half = 0; half < 2; ++half) {
    constexpr int kH = K / 2;
    const int n_base = half * kH;
    // dq = scale diag(gamma) dO S0^T + (dA * M) K.
    {
      float acc[kH / 8][4];
      Zero(acc);
#pragma unroll
      for (int k0 = 0; k0 < V; k0 += 16) {
        uint32_t a[4];
        gdn::LoadA(a, dos, L::kVP, 16 * warp, k0, lane);
#pragma unroll
        for (int np = 0; np < kH / 16; ++np) {
          uint32_t b[4];
          gdn::LoadBT2(b, s0s, L::kVP, k0, n_base + 16 * np, lane);
          gdn::Mma(acc[2 * np], a, b[0], b[1]);
          gdn::Mma(acc[2 * np + 1], a, b[2], b[3]);
        }
      }
#pragma unroll
      for (int j = 0; j < kH / 8; ++j) {
        const int col = n_base + 8 * j + c0;
        acc[j][0] *= p.scale * gam_lo;
        acc[j][1] *= p.scale * gam_lo;
        acc[j][2] *= p.scale * gam_hi;
        acc[j][3] *= p.scale * gam_hi;
        const float2 x_lo = gdn::UnpackBf16(*reinterpret_cast<const uint32_t*>(qs + r * L::kKP + col));
        const float2 x_hi =
            gdn::UnpackBf16(*reinterpret_cast<const uint32_t*>(qs + (r + 8) * L::kKP + col));
        db_lo += x_lo.x * acc[j][0] + x_lo.y * acc[j][1];
        db_hi += x_hi.x * acc[j][2] + x_hi.y * acc[j][3];
      }
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        if (kk > warp) break;
        uint32_t a[4];
        gdn::LoadA(a, dqks, L::kCP, 16 * warp, 16 * kk, lane);
#pragma unroll
        for (int np = 0; np < kH / 16; ++np) {
          uint32_t b[4];
          gdn::LoadB2(b, ks, L::kKP, 16 * kk, n_base + 16 * np, lane);
          gdn::Mma(acc[2 * np], a, b[0], b[1]);
          gdn::Mma(acc[2 * np + 1], a, b[2], b[3]);
        }
      }
      float* dqg = p.dq + tok * K;
#pragma unroll
      for (int j = 0; j < kH / 8; ++j) {
        const int col = n_base + 8 * j + c0;
        if (r < rows) {
          *reinterpret_cast<float2*>(dqg + r * K + col) = make_float2(acc[j][0], acc[j][1]);
        }
        if (r + 8 < rows) {
          *reinterpret_cast<float2*>(dqg + (r + 8) * K + col) = make_float2(acc[j][2], acc[j][3]);
        }
      }
    }
    // dk = diag(e) W dS^T - diag(beta) E + (dA * M)^T Q + (D + D^T) K.
    {
      float acc[kH / 8][4], ea[kH / 8][4];
      Zero(acc);
      Zero(ea);
#pragma unroll
      for (int k0 = 0; k0 < V; k0 += 16) {
        uint32_t a[4], a2[4];
        gdn::LoadA(a, ws, L::kVP, 16 * warp, k0, lane);
        gdn::LoadA(a2, drs, L::kVP, 16 * warp, k0, lane);
#pragma unroll
        for (int np = 0; np < kH / 16; ++np) {
          uint32_t b[4];
          gdn::LoadBT2(b, dss, L::kVP, k0, n_base + 16 * np, lane);
          gdn::Mma(acc[2 * np], a, b[0], b[1]);
          gdn::Mma(acc[2 * np + 1], a, b[2], b[3]);
          gdn::LoadBT2(b, s0s, L::kVP, k0, n_base + 16 * np, lane);
          gdn::Mma(ea[2 * np], a2, b[0], b[1]);
          gdn::Mma(ea[2 * np + 1], a2, b[2], b[3]);
        }
      }
#pragma unroll
      for (int j = 0; j < kH / 8; ++j) {
        const int col = n_base + 8 * j + c0;
        const float2 k_lo = gdn::UnpackBf16(*reinterpret_cast<const uint32_t*>(ks + r * L::kKP + col));
        const float2 k_hi =
            gdn::UnpackBf16(*reinterpret_cast<const uint32_t*>(ks + (r + 8) * L::kKP + col));
        acc[j][0] *= end_lo;
        acc[j][1] *= end_lo;
        acc[j][2] *= end_hi;
        acc[j][3] *= end_hi;
        ea[j][0] *= gam_lo;
        ea[j][1] *= gam_lo;
        ea[j][2] *= gam_hi;
        ea[j][3] *= gam_hi;
        const float kd_lo = k_lo.x * acc[j][0] + k_lo.y * acc[j][1];
        const float kd_hi = k_hi.x * acc[j][2] + k_hi.y * acc[j][3];
        const float ke_lo = k_lo.x * ea[j][0] + k_lo.y * ea[j][1];
        const float ke_hi = k_hi.x * ea[j][2] + k_hi.y * ea[j][3];
        k_dk0 += kd_lo + kd_hi;
        db_lo -= kd_lo + beta_lo * ke_lo;
        db_hi -= kd_hi + beta_hi * ke_hi;
        dbeta_lo -= ke_lo;
        dbeta_hi -= ke_hi;
        acc[j][0] -= beta_lo * ea[j][0];
        acc[j][1] -= beta_lo * ea[j][1];
        acc[j][2] -= beta_hi * ea[j][2];
        acc[j][3] -= beta_hi * ea[j][3];
      }
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        uint32_t a[4], a2[4];
        gdn::LoadA(a2, syms, L::kCP, 16 * warp, 16 * kk, lane);
        const bool upper = kk >= warp;  // (dA * M)^T[s][t] != 0 only for t >= s
        if (upper) gdn::LoadAT(a, dqks, L::kCP, 16 * warp, 16 * kk, lane);
#pragma unroll
        for (int np = 0; np < kH / 16; ++np) {
          uint32_t b[4];
          gdn::LoadB2(b, ks, L::kKP, 16 * kk, n_base + 16 * np, lane);
          gdn::Mma(acc[2 * np], a2, b[0], b[1]);
          gdn::Mma(acc[2 * np + 1], a2, b[2], b[3]);
          if (upper) {
            gdn::LoadB2(b, qs, L::kKP, 16 * kk, n_base + 16 * np, lane);
            gdn::Mma(acc[2 * np], a, b[0], b[1]);
            gdn::Mma(acc[2 * np + 1], a, b[2], b[3]);
          }
        }
      }
      float* dkg = p.dk + tok * K;
#pragma unroll
      for (int j = 0; j < kH / 8; ++j) {
        const int col = n_base + 8 * j + c0;
        if (r < rows) {
          *reinterpret_cast<float2*>(dkg + r * K + col) = make_float2(acc[j][0], acc[j][1]);
        }
        if (r + 8 < rows) {
          *reinterpret_cast<float2*>(dkg + (r + 8) * K + col) = make_float2(acc[j][2], acc[j][3]);
        }
      }
    }
  }

  dbeta_lo = QuadSum(dbeta_lo);
  dbeta_hi = QuadSum(dbeta_hi);
  db_lo = QuadSum(db_lo);
  db_hi = QuadSum(db_hi);
  k_dk0 = WarpSum(k_dk0);
  if ((lane & 3) == 0) {
    if (r < rows) p.dbeta[tok + r] = dbeta_lo;
    if (r + 8 < rows) p.dbeta[tok + r + 8] = dbeta_hi;
    db_row[r] = db_lo;
    db_row[r + 8] = db_hi;
  }
  if (lane == 0) red[4 + warp] = k_dk0;
  __syncthreads();
  if (tid < kC) {
    float db = db_row[tid] + db_z[tid];
    if (tid == kC - 1) {
      const float s_ds = (red[0] + red[1]) + (red[2] + red[3]);
      const float kd = (red[4] + red[5]) + (red[6] + red[7]);
      db += kd + gdn::Exp2(b_last) * s_ds;
    }
    db_all[tid] = db;
  }
  __syncthreads();
  if (tid < rows) {
    float acc = 0.f;
    for (int t = kC - 1; t >= tid; --t) acc += db_all[t];
    p.dg[tok + tid] = acc;
  }
}

template <typename Kernel>
cudaError_t Launch(Kernel kernel, dim3 grid, int smem_bytes, const GatedDeltaFastBackwardParams& p,
                   cudaStream_t stream) {
  HYB_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    smem_bytes));
  kernel<<<grid, kThreads, smem_bytes, stream>>>(p);
  HYB_CUDA_TRY(cudaGetLastError());
  return cudaSuccess;
}

// Fixed-length: grid (chunks, B * H) per chunk. Packed: (total_chunks, H).
template <int K, int V, bool kPacked>
cudaError_t LaunchDims(const GatedDeltaFastBackwardParams& p, cudaStream_t stream) {
  const int64_t nchunks = kPacked ? p.varlen.total_chunks : (p.tokens + kC - 1) / kC;
  const int64_t rows = kPacked ? p.varlen.heads : p.batch_heads;
  if (nchunks > 0x7fffffff || p.batch_heads > 65535) return cudaErrorInvalidValue;
  const dim3 per_chunk(static_cast<unsigned>(nchunks), static_cast<unsigned>(rows));
  HYB_CUDA_TRY(
      Launch(LocalDvKernel<K, V, kPacked>, per_chunk, LocalLayout<K, V>::kBytes, p, stream));
  const int slice = p.slice_columns > 0 ? p.slice_columns
                                         : GatedDeltaFastSliceColumns(p.batch_heads, V, p.num_sms);
  if (slice != 16 && slice != 32 && slice != 64) return cudaErrorInvalidValue;
  const dim3 slices(static_cast<unsigned>(V / slice), static_cast<unsigned>(p.batch_heads));
  if (slice == 64) {
    HYB_CUDA_TRY(
        Launch(DStateKernel<K, V, 64, kPacked>, slices, DStateLayout<K, 64>::kBytes, p, stream));
  } else if (slice == 32) {
    HYB_CUDA_TRY(
        Launch(DStateKernel<K, V, 32, kPacked>, slices, DStateLayout<K, 32>::kBytes, p, stream));
  } else {
    HYB_CUDA_TRY(
        Launch(DStateKernel<K, V, 16, kPacked>, slices, DStateLayout<K, 16>::kBytes, p, stream));
  }
  HYB_CUDA_TRY(
      Launch(GradKernel<K, V, kPacked>, per_chunk, GradLayout<K, V>::kBytes, p, stream));
  return cudaSuccess;
}

}  // namespace

cudaError_t LaunchGatedDeltaFastBackward(const GatedDeltaFastBackwardParams& p,
                                         cudaStream_t stream) {
  if (!GatedDeltaFastSupportsDims(p.key_dim, p.value_dim) || p.tokens <= 0 ||
      p.batch_heads <= 0) {
    return cudaErrorInvalidValue;
  }
  if (p.varlen.cu_seqlens != nullptr) {
    if (!GatedDeltaFastVarlenValid(p.varlen, p.batch_heads)) return cudaErrorInvalidValue;
    if (p.key_dim == 64) return LaunchDims<64, 64, true>(p, stream);
    return LaunchDims<128, 128, true>(p, stream);
  }
  if (p.key_dim == 64) return LaunchDims<64, 64, false>(p, stream);
  return LaunchDims<128, 128, false>(p, stream);
}

}  // namespace hyb::kernels::cuda
