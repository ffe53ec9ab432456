// Chunk-parallel Gated DeltaNet forward for sm_80+ (tuned for sm_90): bf16 q/k/v, fp32 gates,
// betas and state, tensor-core products through mma.sync m16n8k16 (gated_delta_fast.cuh). The
// three launches are described in gated_delta_fast_launch.h. Exponents are differences of
// cumulative log decays taken in the direction that keeps them <= 0, so no gate strength
// overflows. Every kernel has a fixed-length (kPacked = false) and a packed-sequence instance
// (GatedDeltaFastVarlen): they differ only in where a block finds its tokens and sequence length.
#include <cuda_bf16.h>

#include <algorithm>
#include <type_traits>

#include "cuda_check.h"
#include "gated_delta_fast.cuh"
#include "gated_delta_fast_launch.h"
#include "linear_attention_launch.h"

namespace hyb::kernels::cuda {
namespace {

using gdn::kC;
using gdn::kLog2e;
using bf16 = __nv_bfloat16;

constexpr int kThreads = 128;  // 4 warps; warp w owns the chunk's rows 16 w .. 16 w + 15

// Real tokens of the chunk starting at token t0 (at most kC).
__device__ __forceinline__ int RowsOf(int64_t tokens, int64_t t0) {
  return tokens - t0 < kC ? static_cast<int>(tokens - t0) : kC;
}

// Cumulative log2 decay of a chunk's tokens into b[0..63] and the betas into beta_s[0..63]
// (zeros past `rows`: padded tokens change nothing). Warps 0 and 1; the caller synchronises.
__device__ __forceinline__ void LoadGates(const float* g, const float* beta, int rows, float* b,
                                          float* beta_s, int tid) {
  const int warp = tid >> 5, lane = tid & 31;
  if (warp == 0) {
    const int i = 2 * lane;
    const float g0 = i < rows ? g[i] : 0.f, g1 = i + 1 < rows ? g[i + 1] : 0.f;
    const float pair = g0 + g1;
    float incl = pair;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const float x = __shfl_up_sync(0xffffffffu, incl, off);
      if (lane >= off) incl += x;
    }
    const float excl = incl - pair;
    b[i] = (excl + g0) * kLog2e;
    b[i + 1] = (excl + g0 + g1) * kLog2e;
  } else if (warp == 1) {
    const int i = 2 * lane;
    beta_s[i] = i < rows ? beta[i] : 0.f;
    beta_s[i + 1] = i + 1 < rows ? beta[i + 1] : 0.f;
  }
}

// ---------------------------------------------------------------------------------------------
// (1) Per chunk: Tinv = (I + A)^-1 and w, u.
//
// A (strictly lower) and Tinv (unit lower triangular) share one fp32 [C][kAPitch] tile `as`:
// as[r][c] = A[r][c] for r > c, while Tinv is kept transposed in the other triangle,
// as[c][r] = Tinv[r][c] for r >= c. Tinv is inverted in kTB x kTB blocks, all in fp32 FMAs:
//  - the diagonal blocks D_i = (I + A_ii)^-1 by forward substitution, stored whole (their ones
//    and zeros too) over the diagonal blocks of `as` once A_ii is no longer needed;
//  - with M = I + A split into halves of 32 tokens, M = [[M_a, 0], [A_ba, M_b]]:
//    M_a^-1 = [[D_0, 0], [T_10, D_1]] with T_10 = -D_1 (A_10 D_0), M_b^-1 likewise with
//    T_32 = -D_3 (A_32 D_2), and the lower-left half of Tinv is -M_b^-1 (A_ba M_a^-1).
// Every intermediate block is kept, transposed alike, where its Tinv block goes.

constexpr int kTB = 16;          // Tinv block size: kC / kTB = 4 block rows
constexpr int kAPitch = kC + 4;  // row pitch (floats) of `as`

template <int K, int V>
struct PrepareLayout {
  static constexpr int kKP = K + 8, kVP = V + 8;
  static constexpr int kK = 0;                      // k (bf16 [C][kKP])
  static constexpr int kV = kK + kC * kKP * 2;      // v (bf16 [C][kVP])
  static constexpr int kA = kV + kC * kVP * 2;      // A and Tinv (fp32 [C][kAPitch], see above)
  static constexpr int kB = kA + kC * kAPitch * 4;  // b (fp32 [C])
  static constexpr int kBeta = kB + kC * 4;         // beta (fp32 [C])
  static constexpr int kBytes = kBeta + kC * 4;
};

// Block (i, j) of A (i > j), row-major: A_ij[r][k] = ABlk(as, i, j)[r * kAPitch + k].
__device__ __forceinline__ float* ABlk(float* as, int i, int j) {
  return as + kTB * i * kAPitch + kTB * j;
}
// Block (i, j) of Tinv (i >= j), or the intermediate kept in its place, transposed:
// X[r][c] = XBlk(as, i, j)[c * kAPitch + r]. Column c of X is contiguous.
__device__ __forceinline__ float* XBlk(float* as, int i, int j) {
  return as + kTB * j * kAPitch + kTB * i;
}

// The off-diagonal blocks (1,0), (2,0), (2,1), (3,0), (3,1), (3,2) of A by index n (0..5).
__device__ __forceinline__ void OffDiagBlock(int n, int* i, int* j) {
  *i = n < 1 ? 1 : (n < 3 ? 2 : 3);
  *j = n - *i * (*i - 1) / 2;
}

// The 16x16 block products of the inverse, one column c per four threads: thread row group
// rg (0..3) accumulates four rows of (L X)[.][c], X transposed with its column c at xc.
// L row-major (a block of A): rows rg + 4 q, so that the row groups of a quarter warp read
// different banks.
__device__ __forceinline__ void MulRowMajor(float (&acc)[4], const float* l, const float* xc,
                                            int rg) {
#pragma unroll
  for (int k = 0; k < kTB; k += 4) {
    const float4 x = *reinterpret_cast<const float4*>(xc + k);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float4 a = *reinterpret_cast<const float4*>(l + (rg + 4 * q) * kAPitch + k);
      acc[q] = fmaf(a.x, x.x, acc[q]);
      acc[q] = fmaf(a.y, x.y, acc[q]);
      acc[q] = fmaf(a.z, x.z, acc[q]);
      acc[q] = fmaf(a.w, x.w, acc[q]);
    }
  }
}
// L transposed (a block of Tinv: L[r][k] = lt[k * kAPitch + r]): rows 4 rg + q.
__device__ __forceinline__ void MulTransposed(float (&acc)[4], const float* lt, const float* xc,
                                              int rg) {
#pragma unroll
  for (int k = 0; k < kTB; k += 4) {
    const float4 x4 = *reinterpret_cast<const float4*>(xc + k);
    const float x[4] = {x4.x, x4.y, x4.z, x4.w};
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const float4 l = *reinterpret_cast<const float4*>(lt + (k + kk) * kAPitch + 4 * rg);
      acc[0] = fmaf(l.x, x[kk], acc[0]);
      acc[1] = fmaf(l.y, x[kk], acc[1]);
      acc[2] = fmaf(l.z, x[kk], acc[2]);
      acc[3] = fmaf(l.w, x[kk], acc[3]);
    }
  }
}
// Column c (at xc) of a transposed block: rows rg + 4 q (MulRowMajor's), or rows 4 rg + q
// negated (MulTransposed's, for X = -L Y).
__device__ __forceinline__ void StoreRows(float* xc, const float (&acc)[4], int rg) {
#pragma unroll
  for (int q = 0; q < 4; ++q) xc[rg + 4 * q] = acc[q];
}
__device__ __forceinline__ void StoreNegRows(float* xc, const float (&acc)[4], int rg) {
  *reinterpret_cast<float4*>(xc + 4 * rg) = make_float4(-acc[0], -acc[1], -acc[2], -acc[3]);
}

// Column j of (I + L)^-1 for the strictly lower 16x16 block L at blk (row-major), by forward
// substitution: x_i = [i == j] - sum_{m < i} L[i][m] x_m. Every read of L is a broadcast; four
// partial sums shorten the dependency chain.
__device__ __forceinline__ void InvertDiagColumn(float (&x)[kTB], const float* blk, int j) {
#pragma unroll
  for (int i = 0; i < kTB; ++i) {
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    const float* row = blk + i * kAPitch;
#pragma unroll
    for (int m = 0; m + 3 < i; m += 4) {
      const float4 a4 = *reinterpret_cast<const float4*>(row + m);
      s0 = fmaf(a4.x, x[m], s0);
      s1 = fmaf(a4.y, x[m + 1], s1);
      s2 = fmaf(a4.z, x[m + 2], s2);
      s3 = fmaf(a4.w, x[m + 3], s3);
    }
#pragma unroll
    for (int m = i & ~3; m < i; ++m) s0 = fmaf(row[m], x[m], s0);
    x[i] = (i == j ? 1.f : 0.f) - ((s0 + s1) + (s2 + s3));
  }
}

// Rows kTB rb.. of (Tinv diag(s)) rhs for the [C][N] bf16 tile rhs, s = beta (u) or beta 2^b
// (w: kGated), stored as bf16 into out (row pitch N) rows kTB rb... Tinv is lower triangular:
// k steps 0..rb. The A fragments are read from the fp32 transposed Tinv in `as` and scaled per
// column before their one rounding to bf16 (the scale folded into Tinv instead of rhs). Columns
// go in groups of at most 128 (N = 256: two), which bounds the accumulators at 64 registers.
template <int N, int kRhsPitch, bool kGated>
__device__ __forceinline__ void TinvTimes(const float* as, const float* bs, const float* betas,
                                          const bf16* rhs, bf16* out, int rb, int lane) {
  constexpr int kNG = N < 128 ? N : 128;
  const int g = lane >> 2, t2 = 2 * (lane & 3);
#pragma unroll 1
  for (int n0 = 0; n0 < N; n0 += kNG) {
    float acc[kNG / 8][4];
#pragma unroll
    for (int j = 0; j < kNG / 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kC / kTB; ++kk) {
      if (kk > rb) break;
      uint32_t a[4];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        // a[2 h], a[2 h + 1]: Tinv rows r, r + 8 at columns c, c + 1.
        const int r = kTB * rb + g, c = kTB * kk + t2 + 8 * h;
        float s0 = betas[c], s1 = betas[c + 1];
        if constexpr (kGated) {
          s0 *= gdn::Exp2(bs[c]);
          s1 *= gdn::Exp2(bs[c + 1]);
        }
        const float* t0 = as + c * kAPitch + r;  // Tinv[r][c]
        const float* t1 = t0 + kAPitch;          // Tinv[r][c + 1]
        a[2 * h] = gdn::PackBf16(t0[0] * s0, t1[0] * s1);
        a[2 * h + 1] = gdn::PackBf16(t0[8] * s0, t1[8] * s1);
      }
#pragma unroll
      for (int np = 0; np < kNG / 16; ++np) {
        uint32_t b[4];
        gdn::LoadB2(b, rhs, kRhsPitch, kTB * kk, n0 + 16 * np, lane);
        gdn::Mma(acc[2 * np], a, b[0], b[1]);
        gdn::Mma(acc[2 * np + 1], a, b[2], b[3]);
      }
    }
    const int r = kTB * rb + g;
#pragma unroll
    for (int j = 0; j < kNG / 8; ++j) {
      *reinterpret_cast<uint32_t*>(out + static_cast<int64_t>(r) * N + n0 + 8 * j + t2) =
          gdn::PackBf16(acc[j][0], acc[j][1]);
      *reinterpret_cast<uint32_t*>(out + static_cast<int64_t>(r + 8) * N + n0 + 8 * j + t2) =
          gdn::PackBf16(acc[j][2], acc[j][3]);
    }
  }
}

template <int K, int V, bool kPacked>
__global__ void __launch_bounds__(kThreads) PrepareKernel(GatedDeltaFastParams p) {
  static_assert(kThreads == 128 && kC == 4 * kTB, "one warp per Tinv block row");
  using L = PrepareLayout<K, V>;
  static_assert(L::kBytes <= kGatedDeltaMaxBlockSmem, "over the shared memory of a block");
  extern __shared__ __align__(16) char smem[];
  bf16* ks = reinterpret_cast<bf16*>(smem + L::kK);
  bf16* vs = reinterpret_cast<bf16*>(smem + L::kV);
  float* as = reinterpret_cast<float*>(smem + L::kA);
  float* bs = reinterpret_cast<float*>(smem + L::kB);
  float* betas = reinterpret_cast<float*>(smem + L::kBeta);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int chunk = blockIdx.x;
  const int64_t bh = blockIdx.y;
  const int64_t t0 = static_cast<int64_t>(chunk) * kC;
  int rows;
  int64_t tok;  // first token's row
  if constexpr (kPacked) {
    gdn::PackedChunk(p.varlen, p.tokens, chunk, bh, &tok, &rows);
  } else {
    rows = RowsOf(p.tokens, t0);
    tok = bh * p.tokens + t0;
  }
  gdn::CopyTile<kC, K, L::kKP, kThreads>(ks, static_cast<const bf16*>(p.k) + tok * K, K, rows,
                                         tid);
  gdn::CpAsyncCommit();
  // v in a second group: it lands while A and Tinv are computed.
  gdn::CopyTile<kC, V, L::kVP, kThreads>(vs, static_cast<const bf16*>(p.v) + tok * V, V, rows,
                                         tid);
  gdn::CpAsyncCommit();
  LoadGates(p.g + tok, p.beta + tok, rows, bs, betas, tid);
  gdn::CpAsyncWait<1>();
  __syncthreads();

  // A[t][s] = beta_t 2^(b_t - b_s) (k_t . k_s) for s < t, by 16x16 blocks: warp w computes the
  // diagonal block (w, w) and the off-diagonal blocks w and w + 4 (OffDiagBlock), three blocks
  // for warps 0 and 1, two for warps 2 and 3; then D_w = (I + A_ww)^-1.
  {
    const int nblocks = warp < 2 ? 3 : 2;
    int bi[3], bj[3];
    bi[0] = bj[0] = warp;
    OffDiagBlock(warp, &bi[1], &bj[1]);
    OffDiagBlock(warp + 4, &bi[2], &bj[2]);  // warps 0 and 1 only
    float acc[3][2][4];
#pragma unroll
    for (int n = 0; n < 3; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[n][0][e] = acc[n][1][e] = 0.f;
    }
#pragma unroll
    for (int k0 = 0; k0 < K; k0 += 16) {
      uint32_t a[4];
      gdn::LoadA(a, ks, L::kKP, kTB * warp, k0, lane);
      // The diagonal block: the B fragments of k k^T are the A fragments, reordered.
      gdn::Mma(acc[0][0], a, a[0], a[2]);
      gdn::Mma(acc[0][1], a, a[1], a[3]);
#pragma unroll
      for (int n = 1; n < 3; ++n) {
        if (n >= nblocks) break;
        uint32_t b[4];
        gdn::LoadA(a, ks, L::kKP, kTB * bi[n], k0, lane);
        gdn::LoadBT2(b, ks, L::kKP, k0, kTB * bj[n], lane);
        gdn::Mma(acc[n][0], a, b[0], b[1]);
        gdn::Mma(acc[n][1], a, b[2], b[3]);
      }
    }
    const int g = lane >> 2, t2 = 2 * (lane & 3);
#pragma unroll
    for (int n = 0; n < 3; ++n) {
      if (n >= nblocks) break;
#pragma unroll
      for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = kTB * bi[n] + g + 8 * (e >> 1), c = kTB * bj[n] + 8 * j + t2 + (e & 1);
          if (c < r) {
            as[r * kAPitch + c] = betas[r] * gdn::Exp2(bs[r] - bs[c]) * acc[n][j][e];
          }
        }
      }
    }
    __syncwarp();
    // Column lane % 16 of D_w (lanes 16.. repeat lanes 0..15), then over A_ww once every lane
    // has read it: row j of the block holds column j of D_w.
    float x[kTB];
    float* dw = ABlk(as, warp, warp);
    InvertDiagColumn(x, dw, lane & (kTB - 1));
    __syncwarp();
    if (lane < kTB) {
#pragma unroll
      for (int i = 0; i < kTB; i += 4) {
        *reinterpret_cast<float4*>(dw + lane * kAPitch + i) =
            make_float4(x[i], x[i + 1], x[i + 2], x[i + 3]);
      }
    }
  }
  __syncthreads();

  // The off-diagonal blocks of Tinv. Four consecutive lanes (row groups rg) share one column c
  // of a block, and a block's column c needs only columns c of the blocks it is computed from
  // (besides whole blocks of A and of D, T_32 as the left factor), so inside a warp __syncwarp
  // orders them. Warps 0 and 1 take columns 0..7 and 8..15 of block column 0, warps 2 and 3
  // of block columns 1 and 2.
  const int rg = lane & 3, col = 8 * (warp & 1) + (lane >> 2);
  {
    float acc[4];
    if (warp < 2) {
      // T_10 = -D_1 S with S = A_10 D_0 kept in its place; then R_00 = A_20 D_0 + A_21 T_10 and
      // R_10 = A_30 D_0 + A_31 T_10 (the first block column of A_ba M_a^-1) in the places of
      // T_20 and T_30.
      const float* d0c = XBlk(as, 0, 0) + col * kAPitch;
      float* t10c = XBlk(as, 1, 0) + col * kAPitch;
      acc[0] = acc[1] = acc[2] = acc[3] = 0.f;
      MulRowMajor(acc, ABlk(as, 1, 0), d0c, rg);
      StoreRows(t10c, acc, rg);
      __syncwarp();
      acc[0] = acc[1] = acc[2] = acc[3] = 0.f;
      MulTransposed(acc, XBlk(as, 1, 1), t10c, rg);
      __syncwarp();  // every row group has read S
      StoreNegRows(t10c, acc, rg);
      __syncwarp();
#pragma unroll
      for (int i = 2; i < 4; ++i) {
        acc[0] = acc[1] = acc[2] = acc[3] = 0.f;
        MulRowMajor(acc, ABlk(as, i, 0), d0c, rg);
        MulRowMajor(acc, ABlk(as, i, 1), t10c, rg);
        StoreRows(XBlk(as, i, 0) + col * kAPitch, acc, rg);
      }
    } else {
      // R_01 = A_21 D_1 and R_11 = A_31 D_1 (the second block column of A_ba M_a^-1) in the
      // places of T_21 and T_31; T_32 = -D_3 S with S = A_32 D_2 kept in its place.
      const float* d1c = XBlk(as, 1, 1) + col * kAPitch;
      float* t32c = XBlk(as, 3, 2) + col * kAPitch;
      acc[0] = acc[1] = acc[2] = acc[3] = 0.f;
      MulRowMajor(acc, ABlk(as, 3, 2), XBlk(as, 2, 2) + col * kAPitch, rg);
      StoreRows(t32c, acc, rg);
#pragma unroll
      for (int i = 2; i < 4; ++i) {
        acc[0] = acc[1] = acc[2] = acc[3] = 0.f;
        MulRowMajor(acc, ABlk(as, i, 1), d1c, rg);
        StoreRows(XBlk(as, i, 1) + col * kAPitch, acc, rg);
      }
      __syncwarp();
      acc[0] = acc[1] = acc[2] = acc[3] = 0.f;
      MulTransposed(acc, XBlk(as, 3, 3), t32c, rg);
      __syncwarp();  // every row group has read S
      StoreNegRows(t32c, acc, rg);
    }
  }
  __syncthreads();

  // The lower-left half in place: [T_2j; T_3j] = -[[D_2, 0], [T_32, D_3]] [R_0j; R_1j] for
  // block column j = 0 (warps 0, 1) and 1 (warps 2, 3).
  {
    const int j = warp >> 1;
    float* r0c = XBlk(as, 2, j) + col * kAPitch;
    float* r1c = XBlk(as, 3, j) + col * kAPitch;
    float t2[4] = {0.f, 0.f, 0.f, 0.f}, t3[4] = {0.f, 0.f, 0.f, 0.f};
    MulTransposed(t2, XBlk(as, 2, 2), r0c, rg);
    MulTransposed(t3, XBlk(as, 3, 2), r0c, rg);
    MulTransposed(t3, XBlk(as, 3, 3), r1c, rg);
    __syncwarp();  // every row group has read R_0j and R_1j
    StoreNegRows(r0c, t2, rg);
    StoreNegRows(r1c, t3, rg);
  }
  gdn::CpAsyncWait<0>();
  __syncthreads();

  // u = Tinv diag(beta) v (warps 0, 1) and w = Tinv diag(beta 2^b) k (warps 2, 3); warp w & 1
  // takes row blocks 0 and 3, or 1 and 2 (five k steps either way).
  const int64_t tp = static_cast<int64_t>(gridDim.x) * kC;  // padded tokens
  const int64_t prow = bh * tp + t0;                        // first padded row of the chunk
  const int rb0 = warp & 1, rb1 = 3 - rb0;
  if (warp < 2) {
    bf16* ug = static_cast<bf16*>(p.ws.u) + prow * V;
    TinvTimes<V, L::kVP, false>(as, bs, betas, vs, ug, rb0, lane);
    TinvTimes<V, L::kVP, false>(as, bs, betas, vs, ug, rb1, lane);
  } else {
    bf16* wg = static_cast<bf16*>(p.ws.w) + prow * K;
    TinvTimes<K, L::kKP, true>(as, bs, betas, ks, wg, rb0, lane);
    TinvTimes<K, L::kKP, true>(as, bs, betas, ks, wg, rb1, lane);
  }
  if (tid < kC) p.ws.b[prow + tid] = bs[tid];
  if (p.ws.tinv != nullptr) {  // null: not stored (forward only)
    // Tinv in bf16, row r = 16 warp + lane / 2, 16-byte column groups lane % 2, +2, +4, +6.
    bf16* tg = static_cast<bf16*>(p.ws.tinv) + prow * kC;
    const int r = kTB * warp + (lane >> 1);
#pragma unroll
    for (int n = 0; n < kC / 16; ++n) {
      const int c0 = 8 * ((lane & 1) + 2 * n);
      uint32_t q[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = c0 + 2 * e;
        const float lo = c <= r ? as[c * kAPitch + r] : 0.f;
        const float hi = c + 1 <= r ? as[(c + 1) * kAPitch + r] : 0.f;
        q[e] = gdn::PackBf16(lo, hi);
      }
      *reinterpret_cast<uint4*>(tg + r * kC + c0) = make_uint4(q[0], q[1], q[2], q[3]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// (2) The state recurrence over chunks. Block = (slice of S value columns, sequence); the
// slice's [K][S] fp32 state lives in registers, warp w of W (RecurrenceWarps) holding key rows
// w K / W ...

template <int K, int S>
struct RecurrenceLayout {
  static constexpr int kKP = K + 8, kSP = S + 8;
  // One stage: w, k (bf16 [C][kKP]), u (bf16 [C][kSP]), b (fp32 [C]).
  static constexpr int kW = 0;
  static constexpr int kK = kW + kC * kKP * 2;
  static constexpr int kU = kK + kC * kKP * 2;
  static constexpr int kB = kU + kC * kSP * 2;
  static constexpr int kStage = kB + kC * 4;
  static constexpr int kState = 2 * kStage;            // S in bf16 [K][kSP]
  static constexpr int kVd = kState + K * kSP * 2;     // e^(b_C - b) v_new (bf16 [C][kSP])
  static constexpr int kVn = kVd + kC * kSP * 2;       // v_new (bf16 [C][kSP]), for its store
  static constexpr int kBytes = kVn + kC * kSP * 2;
};

// Copies the [kRows][S] bf16 tile at `src` (row pitch kPitch) to global rows `dst_pitch` elements
// apart in 16-byte vectors, a row's vectors on adjacent threads: whole 32-byte sectors, which the
// fragments' 4-byte stores would write in halves.
template <int kRows, int S, int kPitch, int kThreads>
__device__ __forceinline__ void StoreTile(bf16* dst, int64_t dst_pitch, const bf16* src, int tid) {
  constexpr int kVecPerRow = S / 8;
  static_assert(kRows * kVecPerRow % kThreads == 0, "tile does not split evenly over the block");
#pragma unroll
  for (int n = 0; n < kRows * kVecPerRow / kThreads; ++n) {
    const int i = tid + n * kThreads, r = i / kVecPerRow, cv = i % kVecPerRow;
    *reinterpret_cast<uint4*>(dst + r * dst_pitch + 8 * cv) =
        *reinterpret_cast<const uint4*>(src + r * kPitch + 8 * cv);
  }
}

// Warps of a recurrence block: 4, or 8 at K = 256 with 32 or more columns, so that a thread's
// share of the fp32 state stays at most 64 registers (K S / 32 / warps).
template <int K, int S>
constexpr int RecurrenceWarps() {
  return K > 128 && S >= 32 ? 8 : 4;
}

template <int K, int V, int S, bool kPacked>
__global__ void __launch_bounds__(32 * RecurrenceWarps<K, S>())
    RecurrenceKernel(GatedDeltaFastParams p) {
  using L = RecurrenceLayout<K, S>;
  static_assert(L::kBytes <= kGatedDeltaMaxBlockSmem, "over the shared memory of a block");
  constexpr int kWarps = RecurrenceWarps<K, S>(), kRThreads = 32 * kWarps;
  constexpr int kRows = K / kWarps;  // state rows per warp
  constexpr int kMT = kRows / 16;    // m16 tiles of state rows per warp
  constexpr int kNT = S / 8;         // n8 tiles of state columns
  extern __shared__ __align__(16) char smem[];
  bf16* st = reinterpret_cast<bf16*>(smem + L::kState);
  bf16* vd = reinterpret_cast<bf16*>(smem + L::kVd);
  bf16* vns = reinterpret_cast<bf16*>(smem + L::kVn);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int col0 = blockIdx.x * S;  // first value column of the slice
  const int64_t bh = blockIdx.y;
  // The sequence: its length, chunks, first token (tok0) and first padded row (row0) and chunk
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
  const bf16* wg = static_cast<const bf16*>(p.ws.w) + row0 * K;
  const bf16* kg = static_cast<const bf16*>(p.k) + tok0 * K;
  const bf16* ug = static_cast<const bf16*>(p.ws.u) + row0 * V + col0;
  const float* bg = p.ws.b + row0;
  bf16* vng = static_cast<bf16*>(p.ws.v_new) + row0 * V + col0;
  bf16* csg = static_cast<bf16*>(p.ws.chunk_states) + state0 * K * V + col0;

  auto load_stage = [&](int c) {
    char* base = smem + (c & 1) * L::kStage;
    const int64_t t0 = static_cast<int64_t>(c) * kC;
    const int rows = RowsOf(tokens, t0);
    gdn::CopyTile<kC, K, L::kKP, kRThreads>(reinterpret_cast<bf16*>(base + L::kW), wg + t0 * K,
                                            K, kC, tid);
    gdn::CopyTile<kC, K, L::kKP, kRThreads>(reinterpret_cast<bf16*>(base + L::kK), kg + t0 * K,
                                            K, rows, tid);
    gdn::CopyTile<kC, S, L::kSP, kRThreads>(reinterpret_cast<bf16*>(base + L::kU), ug + t0 * V,
                                            V, kC, tid);
    if (tid < kC / 4) {
      gdn::CpAsync16(base + L::kB + 16 * tid, bg + t0 + 4 * tid, true);
    }
  };

  // State rows of this thread's accumulators: warp w, m-tile mt, half e / 2.
  const int srow0 = warp * kRows + (lane >> 2), scol0 = 2 * (lane & 3);
  float s[kMT][kNT][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = srow0 + 16 * mt + 8 * (e >> 1), c = 8 * nt + scol0 + (e & 1);
        s[mt][nt][e] = p.initial_state != nullptr
                           ? p.initial_state[(bh * K + r) * V + col0 + c]
                           : 0.f;
      }
    }
  }

  if (!kPacked || nchunks > 0) load_stage(0);
  gdn::CpAsyncCommit();
  for (int c = 0; c < nchunks; ++c) {
    gdn::CpAsyncWait<0>();
    __syncthreads();  // stage c landed; every read of the other stage, st and vd is done
    if (c + 1 < nchunks) load_stage(c + 1);
    gdn::CpAsyncCommit();
    const char* stage = smem + (c & 1) * L::kStage;
    const bf16* ws = reinterpret_cast<const bf16*>(stage + L::kW);
    const bf16* ks = reinterpret_cast<const bf16*>(stage + L::kK);
    const bf16* us = reinterpret_cast<const bf16*>(stage + L::kU);
    const float* bs = reinterpret_cast<const float*>(stage + L::kB);

    // The chunk-start state in bf16 into shared memory, then from there to the chunk-state store.
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
        const int r = srow0 + 16 * mt, col = 8 * nt + scol0;
        *reinterpret_cast<uint32_t*>(st + r * L::kSP + col) =
            gdn::PackBf16(s[mt][nt][0], s[mt][nt][1]);
        *reinterpret_cast<uint32_t*>(st + (r + 8) * L::kSP + col) =
            gdn::PackBf16(s[mt][nt][2], s[mt][nt][3]);
      }
    }
    __syncthreads();
    StoreTile<K, S, L::kSP, kRThreads>(csg + static_cast<int64_t>(c) * K * V, V, st, tid);

    // v_new = u - w S for rows 16 (warp % 4).., kG columns at a time (fewer live accumulators
    // beside the state's; with 8 warps, warps 4.. take the other half of the columns);
    // vns = v_new, vd = e^(b_C - b_t) v_new.
    {
      constexpr int kColWarps = kWarps / 4;  // warps sharing a row block, by columns
      constexpr int kG = S / kColWarps < 32 ? S / kColWarps : 32;
      static_assert(kG >= 16 && S % (kG * kColWarps) == 0, "column groups of whole k16 tiles");
      // This warp's row block and first column group (constants with 4 warps, for the unroller).
      const int wr = kColWarps == 1 ? warp : warp & 3, wg0 = kColWarps == 1 ? 0 : kG * (warp >> 2);
      const float b_last = bs[kC - 1];
      const int r = 16 * wr + (lane >> 2);
      const float e_lo = gdn::Exp2(b_last - bs[r]), e_hi = gdn::Exp2(b_last - bs[r + 8]);
#pragma unroll
      for (int g0 = wg0; g0 < S; g0 += kG * kColWarps) {
        float acc[kG / 8][4];
#pragma unroll
        for (int j = 0; j < kG / 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll
        for (int k0 = 0; k0 < K; k0 += 16) {
          uint32_t a[4];
          gdn::LoadA(a, ws, L::kKP, 16 * wr, k0, lane);
#pragma unroll
          for (int np = 0; np < kG / 16; ++np) {
            uint32_t b[4];
            gdn::LoadB2(b, st, L::kSP, k0, g0 + 16 * np, lane);
            gdn::Mma(acc[2 * np], a, b[0], b[1]);
            gdn::Mma(acc[2 * np + 1], a, b[2], b[3]);
          }
        }
#pragma unroll
        for (int j = 0; j < kG / 8; ++j) {
          const int col = g0 + 8 * j + scol0;
          const float2 u_lo =
              gdn::UnpackBf16(*reinterpret_cast<const uint32_t*>(us + r * L::kSP + col));
          const float2 u_hi =
              gdn::UnpackBf16(*reinterpret_cast<const uint32_t*>(us + (r + 8) * L::kSP + col));
          const float x0 = u_lo.x - acc[j][0], x1 = u_lo.y - acc[j][1];
          const float x2 = u_hi.x - acc[j][2], x3 = u_hi.y - acc[j][3];
          *reinterpret_cast<uint32_t*>(vns + r * L::kSP + col) = gdn::PackBf16(x0, x1);
          *reinterpret_cast<uint32_t*>(vns + (r + 8) * L::kSP + col) = gdn::PackBf16(x2, x3);
          *reinterpret_cast<uint32_t*>(vd + r * L::kSP + col) =
              gdn::PackBf16(x0 * e_lo, x1 * e_lo);
          *reinterpret_cast<uint32_t*>(vd + (r + 8) * L::kSP + col) =
              gdn::PackBf16(x2 * e_hi, x3 * e_hi);
        }
      }
    }
    __syncthreads();
    StoreTile<kC, S, L::kSP, kRThreads>(vng + static_cast<int64_t>(c) * kC * V, V, vns, tid);

    // S <- e^(b_C) S + k^T vd.
    const float decay = gdn::Exp2(bs[kC - 1]);
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] *= decay;
      }
#pragma unroll
      for (int k0 = 0; k0 < kC; k0 += 16) {
        uint32_t a[4];
        gdn::LoadAT(a, ks, L::kKP, warp * kRows + 16 * mt, k0, lane);
#pragma unroll
        for (int np = 0; np < kNT / 2; ++np) {
          uint32_t b[4];
          gdn::LoadB2(b, vd, L::kSP, k0, 16 * np, lane);
          gdn::Mma(s[mt][2 * np], a, b[0], b[1]);
          gdn::Mma(s[mt][2 * np + 1], a, b[2], b[3]);
        }
      }
    }
  }

#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      const int r = srow0 + 16 * mt, col = col0 + 8 * nt + scol0;
      float* f = p.final_state + (bh * K + r) * V + col;
      *reinterpret_cast<float2*>(f) = make_float2(s[mt][nt][0], s[mt][nt][1]);
      *reinterpret_cast<float2*>(f + 8 * V) = make_float2(s[mt][nt][2], s[mt][nt][3]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// (3) Outputs, per chunk: o = scale (diag(2^b) q S0 + P v_new), P = (2^(b_t - b_s) q_t.k_s)_{s<=t}.
// Block = (chunk and slice of VS value columns, sequence): VS = V up to 128; at V = 256 four
// slices of 64 (each computes P again), which keeps S0's slice in shared memory at two blocks per
// SM. A chunk's slices are adjacent blocks (blockIdx.x = slices * chunk + slice), so they run
// together and all but the first find the chunk's q and k in L2.

template <int V>
constexpr int OutputSliceColumns() {
  return V <= 128 ? V : 64;
}

template <int K, int VS>
struct OutputLayout {
  static constexpr int kKP = K + 8, kVP = VS + 8;
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kC * kKP * 2;
  static constexpr int kVn = kK + kC * kKP * 2;
  static constexpr int kS = kVn + kC * kVP * 2;  // S0 bf16 [K][kVP]
  static constexpr int kB = kS + K * kVP * 2;
  static constexpr int kBytes = kB + kC * 4;
};

template <int K, int V, bool kPacked>
__global__ void __launch_bounds__(kThreads) OutputKernel(GatedDeltaFastParams p) {
  constexpr int VS = OutputSliceColumns<V>(), kSlices = V / VS;
  using L = OutputLayout<K, VS>;
  static_assert(L::kBytes <= kGatedDeltaMaxBlockSmem, "over the shared memory of a block");
  extern __shared__ __align__(16) char smem[];
  bf16* qs = reinterpret_cast<bf16*>(smem + L::kQ);
  bf16* ks = reinterpret_cast<bf16*>(smem + L::kK);
  bf16* vn = reinterpret_cast<bf16*>(smem + L::kVn);
  bf16* ss = reinterpret_cast<bf16*>(smem + L::kS);
  float* bs = reinterpret_cast<float*>(smem + L::kB);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int chunk = blockIdx.x / kSlices;
  const int64_t bh = blockIdx.y;
  const int col0 = blockIdx.x % kSlices * VS;  // first value column of the slice
  const int64_t t0 = static_cast<int64_t>(chunk) * kC;
  int rows;
  int64_t tok;
  if constexpr (kPacked) {
    gdn::PackedChunk(p.varlen, p.tokens, chunk, bh, &tok, &rows);
  } else {
    rows = RowsOf(p.tokens, t0);
    tok = bh * p.tokens + t0;
  }
  const int64_t nchunks = gridDim.x / kSlices, tp = nchunks * kC;
  const int64_t prow = bh * tp + t0;
  gdn::CopyTile<kC, K, L::kKP, kThreads>(qs, static_cast<const bf16*>(p.q) + tok * K, K, rows,
                                         tid);
  gdn::CopyTile<kC, K, L::kKP, kThreads>(ks, static_cast<const bf16*>(p.k) + tok * K, K, rows,
                                         tid);
  if (tid < kC / 4) gdn::CpAsync16(bs + 4 * tid, p.ws.b + prow + 4 * tid, true);
  gdn::CpAsyncCommit();
  // v_new and S0 in a second group: they land while the scores are computed.
  gdn::CopyTile<kC, VS, L::kVP, kThreads>(
      vn, static_cast<const bf16*>(p.ws.v_new) + prow * V + col0, V, kC, tid);
  gdn::CopyTile<K, VS, L::kVP, kThreads>(
      ss, static_cast<const bf16*>(p.ws.chunk_states) + (bh * nchunks + chunk) * K * V + col0, V, K,
      tid);
  gdn::CpAsyncCommit();
  gdn::CpAsyncWait<1>();
  __syncthreads();

  const int r = 16 * warp + (lane >> 2), c0 = 2 * (lane & 3);
  // P for rows 16 warp.., as A fragments of the k16 steps up to the diagonal.
  uint32_t pa[4][4];
  {
    float acc[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll
    for (int k0 = 0; k0 < K; k0 += 16) {
      uint32_t a[4];
      gdn::LoadA(a, qs, L::kKP, 16 * warp, k0, lane);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        if (np > warp) break;
        uint32_t b[4];
        gdn::LoadBT2(b, ks, L::kKP, k0, 16 * np, lane);
        gdn::Mma(acc[2 * np], a, b[0], b[1]);
        gdn::Mma(acc[2 * np + 1], a, b[2], b[3]);
      }
    }
    const float b_lo = bs[r], b_hi = bs[r + 8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int rr = r + 8 * (e >> 1), cc = 8 * j + c0 + (e & 1);
        acc[j][e] = cc <= rr ? acc[j][e] * gdn::Exp2((e >> 1 ? b_hi : b_lo) - bs[cc]) : 0.f;
      }
    }
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) gdn::AccToA(pa[kk], acc[2 * kk], acc[2 * kk + 1]);
  }

  gdn::CpAsyncWait<0>();
  __syncthreads();
  float o[VS / 8][4];
#pragma unroll
  for (int j = 0; j < VS / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
#pragma unroll
  for (int k0 = 0; k0 < K; k0 += 16) {
    uint32_t a[4];
    gdn::LoadA(a, qs, L::kKP, 16 * warp, k0, lane);
#pragma unroll
    for (int np = 0; np < VS / 16; ++np) {
      uint32_t b[4];
      gdn::LoadB2(b, ss, L::kVP, k0, 16 * np, lane);
      gdn::Mma(o[2 * np], a, b[0], b[1]);
      gdn::Mma(o[2 * np + 1], a, b[2], b[3]);
    }
  }
  const float g_lo = gdn::Exp2(bs[r]), g_hi = gdn::Exp2(bs[r + 8]);
#pragma unroll
  for (int j = 0; j < VS / 8; ++j) {
    o[j][0] *= g_lo;
    o[j][1] *= g_lo;
    o[j][2] *= g_hi;
    o[j][3] *= g_hi;
  }
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    if (kk > warp) break;
#pragma unroll
    for (int np = 0; np < VS / 16; ++np) {
      uint32_t b[4];
      gdn::LoadB2(b, vn, L::kVP, 16 * kk, 16 * np, lane);
      gdn::Mma(o[2 * np], pa[kk], b[0], b[1]);
      gdn::Mma(o[2 * np + 1], pa[kk], b[2], b[3]);
    }
  }
  // o through this warp's own rows of qs (which only this warp read) to whole-sector stores.
  static_assert(VS <= K, "o is staged in q's rows");
  __syncwarp();
#pragma unroll
  for (int j = 0; j < VS / 8; ++j) {
    const int col = 8 * j + c0;
    *reinterpret_cast<uint32_t*>(qs + r * L::kKP + col) =
        gdn::PackBf16(p.scale * o[j][0], p.scale * o[j][1]);
    *reinterpret_cast<uint32_t*>(qs + (r + 8) * L::kKP + col) =
        gdn::PackBf16(p.scale * o[j][2], p.scale * o[j][3]);
  }
  __syncwarp();
  bf16* og = static_cast<bf16*>(p.o) + tok * V + col0;
  constexpr int kVecPerRow = VS / 8;
#pragma unroll
  for (int n = 0; n < 16 * kVecPerRow / 32; ++n) {
    const int i = lane + 32 * n, row = 16 * warp + i / kVecPerRow, cv = i % kVecPerRow;
    if (row < rows) {
      *reinterpret_cast<uint4*>(og + static_cast<int64_t>(row) * V + 8 * cv) =
          *reinterpret_cast<const uint4*>(qs + row * L::kKP + 8 * cv);
    }
  }
}

template <typename Kernel>
cudaError_t Launch(Kernel kernel, dim3 grid, int smem_bytes, const GatedDeltaFastParams& p,
                   cudaStream_t stream, int threads = kThreads) {
  HYB_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    smem_bytes));
  kernel<<<grid, threads, smem_bytes, stream>>>(p);
  HYB_CUDA_TRY(cudaGetLastError());
  return cudaSuccess;
}

// Fixed-length: grid (chunks, B * H) per chunk. Packed: (total_chunks, H). The output kernel
// multiplies the first dimension by its value slices (V / OutputSliceColumns).
template <int K, int V, bool kPacked>
cudaError_t LaunchDims(const GatedDeltaFastParams& p, cudaStream_t stream) {
  const int64_t nchunks = kPacked ? p.varlen.total_chunks : (p.tokens + kC - 1) / kC;
  const int64_t rows = kPacked ? p.varlen.heads : p.batch_heads;
  constexpr int kOutSlices = V / OutputSliceColumns<V>();  // output blocks per chunk
  if (nchunks * kOutSlices > 0x7fffffff || p.batch_heads > 65535) {
    return cudaErrorInvalidValue;
  }
  const dim3 per_chunk(static_cast<unsigned>(nchunks), static_cast<unsigned>(rows));
  HYB_CUDA_TRY(
      Launch(PrepareKernel<K, V, kPacked>, per_chunk, PrepareLayout<K, V>::kBytes, p, stream));
  const int slice = p.slice_columns > 0
                        ? p.slice_columns
                        : GatedDeltaFastForwardSliceColumns(p.batch_heads, V, p.num_sms);
  if (slice != 16 && slice != 32 && slice != 64) return cudaErrorInvalidValue;
  const dim3 slices(static_cast<unsigned>(V / slice), static_cast<unsigned>(p.batch_heads));
  auto recurrence = [&](auto columns) {
    constexpr int S = decltype(columns)::value;
    return Launch(RecurrenceKernel<K, V, S, kPacked>, slices, RecurrenceLayout<K, S>::kBytes, p,
                  stream, 32 * RecurrenceWarps<K, S>());
  };
  HYB_CUDA_TRY(slice == 64   ? recurrence(std::integral_constant<int, 64>{})
               : slice == 32 ? recurrence(std::integral_constant<int, 32>{})
                             : recurrence(std::integral_constant<int, 16>{}));
  const dim3 per_chunk_slice(per_chunk.x * kOutSlices, per_chunk.y);
  HYB_CUDA_TRY(Launch(OutputKernel<K, V, kPacked>, per_chunk_slice,
                      OutputLayout<K, OutputSliceColumns<V>()>::kBytes, p, stream));
  return cudaSuccess;
}

}  // namespace

bool GatedDeltaFastSupportsDims(int key_dim, int value_dim) {
  return key_dim == value_dim && (key_dim == 64 || key_dim == 128);
}

bool GatedDeltaFastForwardSupportsDims(int key_dim, int value_dim) {
  return key_dim == value_dim && (key_dim == 64 || key_dim == 128 || key_dim == 256);
}

bool GatedDeltaFastVarlenValid(const GatedDeltaFastVarlen& vs, int64_t batch_heads) {
  return vs.cu_chunks != nullptr && vs.chunk_seq != nullptr && vs.heads > 0 &&
         vs.total_chunks > 0 && batch_heads % vs.heads == 0;
}

GatedDeltaFastVarlenTables GatedDeltaFastVarlenTablesOf(const std::vector<int64_t>& cu_seqlens) {
  GatedDeltaFastVarlenTables t;
  t.cu_chunks.reserve(cu_seqlens.size());
  t.cu_chunks.push_back(0);
  for (size_t n = 0; n + 1 < cu_seqlens.size(); ++n) {
    const int64_t chunks = (cu_seqlens[n + 1] - cu_seqlens[n] + kC - 1) / kC;
    t.cu_chunks.push_back(t.cu_chunks.back() + chunks);
    t.chunk_seq.insert(t.chunk_seq.end(), chunks, static_cast<int64_t>(n));
  }
  return t;
}

namespace {

// The widest slice (64, 32, else 16 columns) whose blocks, batch_heads x value_dim / slice of
// them, number at least min_blocks.
int WidestSliceWithBlocks(int64_t batch_heads, int value_dim, int64_t min_blocks) {
  for (int slice = 64; slice > 16; slice /= 2) {
    if (slice <= value_dim && batch_heads * (value_dim / slice) >= min_blocks) return slice;
  }
  return 16;
}

}  // namespace

int GatedDeltaFastSliceColumns(int64_t batch_heads, int value_dim, int num_sms) {
  return WidestSliceWithBlocks(batch_heads, value_dim, num_sms);
}

int GatedDeltaFastForwardSliceColumns(int64_t batch_heads, int value_dim, int num_sms) {
  // On an H200 (132 SMs, K = V = 128): 64 columns at B H = 64 took 1.142 ms for the whole
  // forward against 32 columns' 1.205; 16 columns at B H = 16 took 1.393 against 32 columns'
  // 1.649 (bench/gated_delta_bench --sweep). Three quarters of the SMs, rounded up.
  return WidestSliceWithBlocks(batch_heads, value_dim, (3 * int64_t{num_sms} + 3) / 4);
}

cudaError_t LaunchGatedDeltaFast(const GatedDeltaFastParams& p, cudaStream_t stream) {
  if (!GatedDeltaFastForwardSupportsDims(p.key_dim, p.value_dim) || p.tokens <= 0 ||
      p.batch_heads <= 0) {
    return cudaErrorInvalidValue;
  }
  if (p.varlen.cu_seqlens != nullptr) {
    if (!GatedDeltaFastVarlenValid(p.varlen, p.batch_heads)) return cudaErrorInvalidValue;
    if (p.key_dim == 64) return LaunchDims<64, 64, true>(p, stream);
    if (p.key_dim == 128) return LaunchDims<128, 128, true>(p, stream);
    return LaunchDims<256, 256, true>(p, stream);
  }
  if (p.key_dim == 64) return LaunchDims<64, 64, false>(p, stream);
  if (p.key_dim == 128) return LaunchDims<128, 128, false>(p, stream);
  return LaunchDims<256, 256, false>(p, stream);
}

}  // namespace hyb::kernels::cuda
