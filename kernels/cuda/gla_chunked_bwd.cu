// Chunked GLA backward for sm_80+ (sized for sm_90's shared memory): bf16 q/k/v/do, fp32 gates
// and states, tensor-core products (mma.sync m16n8k16, bf16 operands, fp32 accumulation).
//
// Per chunk of C = 64 tokens, with b_t = cumulative log2 decay inside the chunk (b_t includes
// g_t), S0 = state at the chunk start (written by the forward), dS = dL/dS at the chunk end:
//   dA[t, s] = scale * do_t . v_s                                      (s <= t)
//   A[t, s]  = scale * sum_d q_t[d] k_s[d] 2^(b_t[d] - b_s[d])         (s <= t)
//   dq_t = scale 2^b_t (S0 do_t) + sum_{s<=t} dA[t, s] 2^(b_t - b_s) k_s
//   dk_s = sum_{t>=s} dA[t, s] 2^(b_t - b_s) q_t + 2^(b_C - b_s) (dS v_s)
//   dv_s = sum_{t>=s} A[t, s] do_t + dS^T (2^(b_C - b_s) k_s)
//   dg_t = sum_{u>=t in the chunk} (q_u dq_u - k_u dk_u) + rowsum(S_end * dS)
// and the state gradient at the chunk start, dS0 = 2^b_C dS + scale sum_t (2^b_t q_t) do_t^T.
// The last line is the chunk-local form of dg: the gradient with respect to b_t of the chunk's
// outputs and end state, summed over the positions whose cumulative decay includes g_t.
//
// Decays on tensor cores. A product over tokens with a weight 2^(b_t - b_s) is split as
// 2^(b_t - r) * 2^(r - b_s) with a reference r between the two positions, so that both factors
// are <= 1: the chunk's 16-token blocks i have scaled copies of q and k (shared memory, bf16)
//   Qo = q 2^(b_t - b_16i)    (reference: the block's first token)
//   Ko = k 2^(b_16i+15 - b_s) (reference: the block's last token)
//   Qd = q 2^(b_t - b_16i+8), Kd = k 2^(b_16i+8 - b_s)  (diagonal blocks: the middle token)
//   Kc = k 2^(b_C - b_s)      (the chunk end)
// Gradients sum over blocks of different references: the accumulator moves from one reference to
// the next by a per-column factor <= 1 (Horner), and the output is multiplied by its final
// factor. Only inside a diagonal block do factors exceed 1, bounded by 8 tokens of decay: exact
// for per-token log decays down to about -11 (the forward's bound; GLA's logsigmoid(x) / 16
// gates are far above it).
//
// Rounded to bf16 (tensor-core operands): the scaled copies above (Ko once more after a factor
// <= 1 for A's off-diagonal blocks), S0 and dS, A and dA, and in the reverse scan scale 2^b q.
// fp32: cumulative decays and every exponential, accumulation, the Horner factors, the state
// gradients carried from chunk to chunk and stored for the chunk pass, rowsum(S_end * dS) and the
// reverse cumulative sum of dg. dq, dk, dv are written once each, in bf16 or fp32
// (GlaChunkedBackwardParams::grads_bf16); dg in fp32.
//
// Launches: (1) GlaStateGradKernel walks the chunks of each sequence in reverse, the state
// gradient in registers as the forward keeps its state, and writes dS at every chunk end (and at
// the start: the initial state's gradient); with fewer sequences than multiprocessors a block
// owns 32 state columns. (2) GlaChunkGradKernel computes one chunk per block.
//
// Head dims of 256: both kernels run on slices of the key and value dims (gla_slices.cuh); the
// gradients that are sums over slices are added in fp32 and stored after the chunk pass.
#include <cuda_bf16.h>

#include <algorithm>

#include "cuda_check.h"
#include "gla_slices.cuh"
#include "linear_attention_launch.h"
#include "mma_bf16.cuh"
#include "varlen_seqs.cuh"

namespace hyb::kernels::cuda {
namespace {

constexpr int kC = kGlaChunk;  // tokens per chunk
constexpr int kThreads = 256;  // 8 warps
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ uint32_t Ld32(const __nv_bfloat16* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// Fragment loaders (lane = threadIdx.x % 32, g8 = lane / 4, t4 = lane % 4; pitches in elements).
// A (16x16) at rows m0.., columns k0.. of a row-major [m][k] tile.
__device__ __forceinline__ void LoadA(uint32_t (&a)[4], const __nv_bfloat16* base, int pitch,
                                      int m0, int k0, int lane) {
  const __nv_bfloat16* p = base + (m0 + lane / 4) * pitch + k0 + 2 * (lane % 4);
  a[0] = Ld32(p);
  a[1] = Ld32(p + 8 * pitch);
  a[2] = Ld32(p + 8);
  a[3] = Ld32(p + 8 * pitch + 8);
}
// A (16x16) = the transpose of the [k][m] tile stored at rows k0.., columns m0...
__device__ __forceinline__ void LoadAFromTransposed(uint32_t (&a)[4], const __nv_bfloat16* base,
                                                    int pitch, int k0, int m0, int lane) {
  const int mat = lane / 8, r = lane % 8;
  LdMatrixX4Trans(a, base + (k0 + r + 8 * (mat / 2)) * pitch + m0 + 8 * (mat % 2));
}
// B fragments of two n8 tiles (n0.., n0 + 8..) of a row-major [k][n] tile at rows k0..:
// (b[0], b[1]) and (b[2], b[3]).
__device__ __forceinline__ void LoadB2(uint32_t (&b)[4], const __nv_bfloat16* base, int pitch,
                                       int k0, int n0, int lane) {
  LdMatrixX4Trans(b, base + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * pitch + n0 +
                         (lane >> 4) * 8);
}
// B fragment of one n8 tile from the transposed, row-major [n][k] tile (rows n0.., columns k0..).
__device__ __forceinline__ void LoadBFromTransposed(uint32_t& b0, uint32_t& b1,
                                                    const __nv_bfloat16* base, int pitch, int n0,
                                                    int k0, int lane) {
  const __nv_bfloat16* p = base + (n0 + lane / 4) * pitch + k0 + 2 * (lane % 4);
  b0 = Ld32(p);
  b1 = Ld32(p + 8);
}

__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int src_size = valid ? 16 : 0;  // 0: fill with zeros, read nothing
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
               "r"(src_size));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n"); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Copies rows [0, rows_valid) of kCols columns (global rows `src_pitch` bytes apart) into shared
// memory with row pitch kPitch elements; rows past the end (up to kC) are zero-filled.
template <int kCols, int kElemBytes, int kPitch>
__device__ __forceinline__ void CopyTile(char* dst, const char* src, int64_t src_pitch,
                                         int64_t rows_valid, int tid) {
  constexpr int kVecPerRow = kCols * kElemBytes / 16;
  constexpr int kTotal = kC * kVecPerRow;
  static_assert(kTotal % kThreads == 0, "tile does not split evenly over the block");
#pragma unroll
  for (int n = 0; n < kTotal / kThreads; ++n) {
    const int i = tid + n * kThreads;
    const int row = i / kVecPerRow, cv = i % kVecPerRow;
    const bool ok = row < rows_valid;
    const char* s = src + (static_cast<int64_t>(row) * src_pitch + cv * 16);
    CpAsync16(dst + (row * kPitch * kElemBytes + cv * 16), ok ? s : src, ok);
  }
}

// In-place cumulative sum over the chunk's tokens of the gates (row pitch kBP floats), converted
// to log2 units; `tot` is scratch of 4 K floats. Ends with a barrier.
template <int K, int kBP>
__device__ __forceinline__ void CumsumLog2(float* b, float* tot, int tid) {
  constexpr int kParts = kThreads / K, kRows = kC / kParts;
  const int d = tid % K, part = tid / K;
  float x[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) x[r] = b[(part * kRows + r) * kBP + d];
  float run = 0.f;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    run += x[r] * kLog2e;
    x[r] = run;
  }
  tot[part * K + d] = run;
  __syncthreads();
  float off = 0.f;
  for (int p = 0; p < part; ++p) off += tot[p * K + d];
#pragma unroll
  for (int r = 0; r < kRows; ++r) b[(part * kRows + r) * kBP + d] = x[r] + off;
  __syncthreads();
}

// Stores the pair (x, y) at columns (col, col + 1) of a gradient row.
__device__ __forceinline__ void StorePair(float* p, float x, float y) {
  *reinterpret_cast<float2*>(p) = make_float2(x, y);
}
__device__ __forceinline__ void StorePair(__nv_bfloat16* p, float x, float y) {
  *reinterpret_cast<uint32_t*>(p) = PackBf16(x, y);
}

// ---------------------------------------------------------------------------------------------
// (1) State gradients, reverse over chunks. Block = (sequence, slice of W state columns). The
// slice's [K, W] gradient lives in registers: warp = (16 key rows) x (W / kCS columns).

template <int K, int W>
struct ScanLayout {
  static constexpr int kKP = K + 8;  // q and 2^b q row pitch (bf16)
  static constexpr int kBP = K + 8;  // gates row pitch (fp32)
  static constexpr int kWP = W + 8;  // do row pitch (bf16)
  static constexpr int kQ = 0;
  static constexpr int kB = kQ + kC * kKP * 2;
  static constexpr int kDo = kB + kC * kBP * 4;
  static constexpr int kStage = kDo + kC * kWP * 2;
  static constexpr int kQe = 2 * kStage;          // scale 2^b q, bf16 [C][K]
  static constexpr int kTot = kQe + kC * kKP * 2;  // cumsum partial totals, fp32 [4][K]
  static constexpr int kBytes = kTot + 4 * K * 4;
};

struct ScanArgs {
  const __nv_bfloat16* q;
  const float* g;
  const __nv_bfloat16* d_output;
  GlaStrides qs, gs, dos;
  int64_t heads;
  const float* d_final_state;
  float* d_chunk_states;  // [BH, N, K, V]: dL/dS at every chunk end
  float* d_initial_state;
  int64_t tokens;
  int nchunks;
  int value_dim;
  int slices;  // blocks per sequence (V / W)
  float scale;
  VarlenSeqs varlen;  // packed sequences, or none
};

// K: the block's key rows (KF, the key dim, is K or a multiple of it: blocks then also cover
// key slices, gla_slices.cuh). Block x = bh * slices + slice; slice = column slice * (KF / K) +
// key slice.
template <int K, int W, int KF>
__global__ void __launch_bounds__(kThreads) GlaStateGradKernel(const ScanArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // cp.async and bf16 mma.sync need sm_80; built only so that any arch list compiles
#else
  using L = ScanLayout<K, W>;
  extern __shared__ __align__(128) char smem[];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g8 = lane / 4, t4 = lane % 4;
  const int64_t bh = blockIdx.x / a.slices;
  const int slice = static_cast<int>(blockIdx.x % a.slices);
  const int col_base = (KF == K ? slice : slice / (KF / K)) * W;  // first state column
  const int koff = KF == K ? 0 : (slice % (KF / K)) * K;          // first key row
  const int V = a.value_dim;
  const int64_t H = a.heads;
  const SeqSpan sq = SeqOf(a.varlen, bh, H, a.tokens, kC);
  const int64_t T = sq.tokens;

  constexpr int kRB = K / 16, kCS = 8 / kRB, kWC = W / kCS, kSN = kWC / 8;
  static_assert(kRB * kCS == 8 && kSN % 2 == 0, "unsupported head dims");
  const int rb = warp % kRB, cs = warp / kRB;
  const int d_lo = 16 * rb + g8, d_hi = d_lo + 8;
  const int wcol0 = cs * kWC;                // first column of this warp inside the slice
  const int col0 = col_base + wcol0 + 2 * t4;  // + 8 j: this lane's state columns

  const char* qg = TokenBytes(a.q, a.qs, sq.row, H, sq.token0, koff);
  const char* gg = TokenBytes(a.g, a.gs, sq.row, H, sq.token0, koff);
  const char* dog = TokenBytes(a.d_output, a.dos, sq.row, H, sq.token0, col_base);
  const int64_t q_pitch = a.qs.token * 2, g_pitch = a.gs.token * 4, do_pitch = a.dos.token * 2;
  auto load_chunk = [&](int c, int stage) {
    char* base = smem + stage * L::kStage;
    const int64_t t0 = static_cast<int64_t>(c) * kC;
    const int64_t rows = T - t0;
    CopyTile<K, 2, L::kKP>(base + L::kQ, qg + t0 * q_pitch, q_pitch, rows, tid);
    CopyTile<K, 4, L::kBP>(base + L::kB, gg + t0 * g_pitch, g_pitch, rows, tid);
    CopyTile<W, 2, L::kWP>(base + L::kDo, dog + t0 * do_pitch, do_pitch, rows, tid);
    CpAsyncCommit();
  };

  float ds[kSN][4];
  {
    const float* s1 = a.d_final_state != nullptr ? a.d_final_state + bh * KF * V : nullptr;
#pragma unroll
    for (int j = 0; j < kSN; ++j) {
      float2 lo = make_float2(0.f, 0.f), hi = lo;
      if (s1 != nullptr) {
        lo = *reinterpret_cast<const float2*>(s1 + (koff + d_lo) * V + col0 + 8 * j);
        hi = *reinterpret_cast<const float2*>(s1 + (koff + d_hi) * V + col0 + 8 * j);
      }
      ds[j][0] = lo.x;
      ds[j][1] = lo.y;
      ds[j][2] = hi.x;
      ds[j][3] = hi.y;
    }
  }
  auto write_state = [&](float* out) {  // out: [KF, V] of this sequence
#pragma unroll
    for (int j = 0; j < kSN; ++j) {
      *reinterpret_cast<float2*>(out + (koff + d_lo) * V + col0 + 8 * j) =
          make_float2(ds[j][0], ds[j][1]);
      *reinterpret_cast<float2*>(out + (koff + d_hi) * V + col0 + 8 * j) =
          make_float2(ds[j][2], ds[j][3]);
    }
  };

  __nv_bfloat16* qe = reinterpret_cast<__nv_bfloat16*>(smem + L::kQe);
  float* tot = reinterpret_cast<float*>(smem + L::kTot);
  const int n = static_cast<int>(sq.nchunks);
  if (n > 0) load_chunk(n - 1, 0);  // (an empty packed sequence: dS0 = dS_T)
  for (int c = n - 1; c >= 0; --c) {
    const int stage = (n - 1 - c) & 1;
    write_state(a.d_chunk_states + (sq.dstate_slot + c) * KF * V);
    if (c > 0) {
      load_chunk(c - 1, stage ^ 1);  // that stage's last readers passed the previous barrier
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    char* base = smem + stage * L::kStage;
    const __nv_bfloat16* qs = reinterpret_cast<const __nv_bfloat16*>(base + L::kQ);
    float* bs = reinterpret_cast<float*>(base + L::kB);
    const __nv_bfloat16* dos = reinterpret_cast<const __nv_bfloat16*>(base + L::kDo);
    CumsumLog2<K, L::kBP>(bs, tot, tid);
    // qe = scale 2^b q (b <= 0), 8 elements per step.
    for (int i = tid; i < kC * K / 8; i += kThreads) {
      const int t = i / (K / 8), d = (i % (K / 8)) * 8;
      const uint4 qv = *reinterpret_cast<const uint4*>(qs + t * L::kKP + d);
      const uint32_t qw[4] = {qv.x, qv.y, qv.z, qv.w};
      uint32_t out[4];
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        const float2 x = UnpackBf16(qw[p]);
        const float2 bb = *reinterpret_cast<const float2*>(bs + t * L::kBP + d + 2 * p);
        out[p] = PackBf16(a.scale * x.x * Exp2(bb.x), a.scale * x.y * Exp2(bb.y));
      }
      *reinterpret_cast<uint4*>(qe + t * L::kKP + d) = make_uint4(out[0], out[1], out[2], out[3]);
    }
    __syncthreads();
    // dS <- 2^b_C dS + (scale 2^b q)^T do.
    {
      const float e_lo = Exp2(bs[(kC - 1) * L::kBP + d_lo]);
      const float e_hi = Exp2(bs[(kC - 1) * L::kBP + d_hi]);
#pragma unroll
      for (int j = 0; j < kSN; ++j) {
        ds[j][0] *= e_lo;
        ds[j][1] *= e_lo;
        ds[j][2] *= e_hi;
        ds[j][3] *= e_hi;
      }
#pragma unroll
      for (int kk = 0; kk < kC / 16; ++kk) {
        uint32_t af[4];
        LoadAFromTransposed(af, qe, L::kKP, 16 * kk, 16 * rb, lane);
#pragma unroll
        for (int jp = 0; jp < kSN / 2; ++jp) {
          uint32_t bf[4];
          LoadB2(bf, dos, L::kWP, 16 * kk, wcol0 + 16 * jp, lane);
          Mma(ds[2 * jp], af, bf[0], bf[1]);
          Mma(ds[2 * jp + 1], af, bf[2], bf[3]);
        }
      }
    }
    __syncthreads();  // every read of this stage and of qe is done
  }
  write_state(a.d_initial_state + bh * KF * V);
#endif
}

// ---------------------------------------------------------------------------------------------
// (2) Per-chunk gradients. Block = one chunk of one sequence; warp w owns the 16-token block
// i = w % 4 and half h = w / 4 of the columns of dq, dk (key columns) and dv (value columns).

template <int K, int V>
struct ChunkLayout {
  static constexpr int kKP = K + 8;   // bf16 [C][K] tiles
  static constexpr int kVP = V + 8;   // bf16 [C][V] tiles and [K][V] states
  static constexpr int kBP = K + 8;   // cumulative decay, fp32
  static constexpr int kAP = kC + 8;  // A, dA
  static constexpr int kTile = kC * kKP * 2;
  static constexpr int kV = 0;
  static constexpr int kDo = kV + kC * kVP * 2;
  static constexpr int kB = kDo + kC * kVP * 2;
  static constexpr int kQo = kB + kC * kBP * 4;
  static constexpr int kQd = kQo + kTile;
  static constexpr int kKo = kQd + kTile;
  static constexpr int kKd = kKo + kTile;
  // S0 (bf16 [K][V]) until dq is done, then Kc (bf16 [C][K]).
  static constexpr int kS0 = kKd + kTile;
  static constexpr int kS0Bytes = (K * kVP * 2 > kTile) ? K * kVP * 2 : kTile;
  static constexpr int kDs = kS0 + kS0Bytes;  // dS, bf16 [K][V]
  static constexpr int kA = kDs + K * kVP * 2;
  static constexpr int kDA = kA + kC * kAP * 2;
  static constexpr int kTot = kDA + kC * kAP * 2;  // fp32 [4][K]: cumsum, then dg block sums
  static constexpr int kDgl = kTot + 4 * K * 4;    // rowsum(S_end * dS), fp32 [K]
  static constexpr int kBytes = kDgl + K * 4;
  static_assert(kBytes <= 232448, "exceeds sm_90's shared memory per block");
};

struct ChunkArgs {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  const float* g;
  const __nv_bfloat16* d_output;
  GlaStrides qs, ks, vs, gs, dos;
  const float* chunk_states;    // [BH, N + 1, K, V]
  const float* d_chunk_states;  // [BH, N, K, V]
  void* dq;
  void* dk;
  void* dv;
  float* dg;
  GlaStrides dqs, dks, dvs, dgs;
  // Sliced head dims (gla_slices.cuh): zeroed fp32 sums [rows, T, K] (dq, dk, dg, when V = 256)
  // and [rows, T, V] (dv, when K = 256) that the slices add into; else null.
  float* dq_sum;
  float* dk_sum;
  float* dg_sum;
  float* dv_sum;
  int64_t heads;
  int64_t tokens;
  int nchunks;  // per sequence (fixed-length)
  float scale;
  VarlenSeqs varlen;  // packed sequences, or none
  int64_t num_seqs;   // packed: N
};

// Blocks per multiprocessor the chunk kernel is built for (its shared memory allows two at
// K = V = 64).
template <int K, int V>
constexpr int ChunkMinBlocks() {
  return ChunkLayout<K, V>::kBytes <= 115712 ? 2 : 1;
}

// Adds (x, y) into columns (col, col + 1) of a gradient's fp32 sum.
__device__ __forceinline__ void AddPair(float* p, float x, float y) {
  atomicAdd(p, x);
  atomicAdd(p + 1, y);
}

// K x V: the block's slice; KF x VF: the head dims (equal to K x V except for dims of 256:
// slice blockIdx.y = key slice * (VF / V) + value slice, gla_slices.cuh).
template <int K, int V, int KF, int VF, typename GradT>
__global__ void __launch_bounds__(kThreads, (ChunkMinBlocks<K, V>()))
    GlaChunkGradKernel(const ChunkArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  using L = ChunkLayout<K, V>;
  extern __shared__ __align__(128) char smem[];
  __nv_bfloat16* vs = reinterpret_cast<__nv_bfloat16*>(smem + L::kV);
  __nv_bfloat16* dos = reinterpret_cast<__nv_bfloat16*>(smem + L::kDo);
  float* bs = reinterpret_cast<float*>(smem + L::kB);
  __nv_bfloat16* qo = reinterpret_cast<__nv_bfloat16*>(smem + L::kQo);
  __nv_bfloat16* qd = reinterpret_cast<__nv_bfloat16*>(smem + L::kQd);
  __nv_bfloat16* ko = reinterpret_cast<__nv_bfloat16*>(smem + L::kKo);
  __nv_bfloat16* kd = reinterpret_cast<__nv_bfloat16*>(smem + L::kKd);
  __nv_bfloat16* s0s = reinterpret_cast<__nv_bfloat16*>(smem + L::kS0);
  __nv_bfloat16* kcs = s0s;  // after dq
  __nv_bfloat16* dss = reinterpret_cast<__nv_bfloat16*>(smem + L::kDs);
  __nv_bfloat16* as = reinterpret_cast<__nv_bfloat16*>(smem + L::kA);
  __nv_bfloat16* das = reinterpret_cast<__nv_bfloat16*>(smem + L::kDA);
  float* tot = reinterpret_cast<float*>(smem + L::kTot);
  float* dgl = reinterpret_cast<float*>(smem + L::kDgl);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g8 = lane / 4, t4 = lane % 4;
  // This block's first key and value column, and which gradients are sums over slices.
  constexpr bool kSliced = K != KF || V != VF;
  constexpr bool kSumKeySide = V != VF;    // dq, dk, dg: over value slices
  constexpr bool kSumValueSide = K != KF;  // dv: over key slices
  const int slice = kSliced ? static_cast<int>(blockIdx.y) : 0;
  const int koff = kSliced ? (slice / (VF / V)) * K : 0;
  const int voff = kSliced ? (slice % (VF / V)) * V : 0;
  int64_t bh = 0, c64 = 0;
  ChunkOfBlock(a.varlen, a.num_seqs, a.heads, a.nchunks, blockIdx.x, &bh, &c64);
  const int c = static_cast<int>(c64);
  const int64_t H = a.heads;
  const SeqSpan sq = SeqOf(a.varlen, bh, H, a.tokens, kC);
  // t0: this chunk's first token in the sequence; tt0: in its row of the per-token tensors.
  const int64_t T = sq.tokens, t0 = static_cast<int64_t>(c) * kC, tt0 = sq.token0 + t0;
  const int64_t rows = T - t0;  // valid tokens of this chunk (may exceed kC)
  const int64_t row = sq.row;
  const int64_t sum_row0 = row * a.tokens + tt0;  // this chunk's first row in the fp32 sums

  const __nv_bfloat16* qg = a.q + TokenOffset(a.qs, row, H, tt0) + koff;
  const __nv_bfloat16* kg = a.k + TokenOffset(a.ks, row, H, tt0) + koff;

  // Gates, v and do into shared memory (asynchronous) while the states are converted.
  {
    const char* gg = TokenBytes(a.g, a.gs, row, H, tt0, koff);
    const char* vg = TokenBytes(a.v, a.vs, row, H, tt0, voff);
    const char* dg = TokenBytes(a.d_output, a.dos, row, H, tt0, voff);
    CopyTile<K, 4, L::kBP>(smem + L::kB, gg, a.gs.token * 4, rows, tid);
    CopyTile<V, 2, L::kVP>(smem + L::kV, vg, a.vs.token * 2, rows, tid);
    CopyTile<V, 2, L::kVP>(smem + L::kDo, dg, a.dos.token * 2, rows, tid);
    CpAsyncCommit();
  }
  // S0 and dS to bf16; rowsum(S_end * dS) in fp32 (S_end: the next chunk's start state). The
  // slice's [K, V] block of the full [KF, VF] states.
  {
    const float* s0f = a.chunk_states + (sq.state_slot + c) * KF * VF + koff * VF + voff;
    const float* dsf = a.d_chunk_states + (sq.dstate_slot + c) * KF * VF + koff * VF + voff;
    constexpr int kRowVec = V / 4;  // float4 per state row: the lanes that share a row
    constexpr int kLanes = kRowVec;
    static_assert(kLanes <= 32 && 32 % kLanes == 0, "a state row must fit in one warp");
#pragma unroll 2
    for (int i = tid; i < K * V / 4; i += kThreads) {
      const int d = i / kRowVec, e = (i % kRowVec) * 4;
      const int gi = d * VF + e;  // (i * 4 unless sliced)
      const float4 x = *reinterpret_cast<const float4*>(s0f + gi);
      const float4 y = *reinterpret_cast<const float4*>(dsf + gi);
      const float4 z = *reinterpret_cast<const float4*>(s0f + KF * VF + gi);
      *reinterpret_cast<uint2*>(s0s + d * L::kVP + e) =
          make_uint2(PackBf16(x.x, x.y), PackBf16(x.z, x.w));
      *reinterpret_cast<uint2*>(dss + d * L::kVP + e) =
          make_uint2(PackBf16(y.x, y.y), PackBf16(y.z, y.w));
      float sum = z.x * y.x + z.y * y.y + z.z * y.z + z.w * y.w;
#pragma unroll
      for (int off = kLanes / 2; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      if (lane % kLanes == 0) dgl[d] = sum;
    }
  }
  CpAsyncWait<0>();
  __syncthreads();
  CumsumLog2<K, L::kBP>(bs, tot, tid);

  // Scaled copies of q and k (8 elements per step; tokens past T read as zeros).
  for (int i = tid; i < kC * K / 8; i += kThreads) {
    const int t = i / (K / 8), d = (i % (K / 8)) * 8;
    const int blk = t / 16;
    uint4 qv = make_uint4(0, 0, 0, 0), kv = qv;
    if (t < rows) {
      qv = *reinterpret_cast<const uint4*>(qg + t * a.qs.token + d);
      kv = *reinterpret_cast<const uint4*>(kg + t * a.ks.token + d);
    }
    const uint32_t qw[4] = {qv.x, qv.y, qv.z, qv.w}, kw[4] = {kv.x, kv.y, kv.z, kv.w};
    const float* bt = bs + t * L::kBP + d;
    const float* b_first = bs + (16 * blk) * L::kBP + d;
    const float* b_mid = bs + (16 * blk + 8) * L::kBP + d;
    const float* b_last = bs + (16 * blk + 15) * L::kBP + d;
    uint32_t o_qo[4], o_qd[4], o_ko[4], o_kd[4];
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const float2 x = UnpackBf16(qw[p]), y = UnpackBf16(kw[p]);
      const float2 b = *reinterpret_cast<const float2*>(bt + 2 * p);
      const float2 rf = *reinterpret_cast<const float2*>(b_first + 2 * p);
      const float2 rm = *reinterpret_cast<const float2*>(b_mid + 2 * p);
      const float2 rl = *reinterpret_cast<const float2*>(b_last + 2 * p);
      o_qo[p] = PackBf16(x.x * Exp2(b.x - rf.x), x.y * Exp2(b.y - rf.y));
      o_qd[p] = PackBf16(x.x * Exp2(b.x - rm.x), x.y * Exp2(b.y - rm.y));
      o_ko[p] = PackBf16(y.x * Exp2(rl.x - b.x), y.y * Exp2(rl.y - b.y));
      o_kd[p] = PackBf16(y.x * Exp2(rm.x - b.x), y.y * Exp2(rm.y - b.y));
    }
    const int off = t * L::kKP + d;
    *reinterpret_cast<uint4*>(qo + off) = make_uint4(o_qo[0], o_qo[1], o_qo[2], o_qo[3]);
    *reinterpret_cast<uint4*>(qd + off) = make_uint4(o_qd[0], o_qd[1], o_qd[2], o_qd[3]);
    *reinterpret_cast<uint4*>(ko + off) = make_uint4(o_ko[0], o_ko[1], o_ko[2], o_ko[3]);
    *reinterpret_cast<uint4*>(kd + off) = make_uint4(o_kd[0], o_kd[1], o_kd[2], o_kd[3]);
  }
  __syncthreads();

  // A and dA (scaled, zero above the diagonal, bf16): 20 causal tiles of 16 rows x 8 columns
  // each, 40 tasks over 8 warps.
  for (int task = warp; task < 40; task += 8) {
    const bool is_da = task >= 20;
    const int idx = is_da ? task - 20 : task;
    const int i = idx < 2 ? 0 : idx < 6 ? 1 : idx < 12 ? 2 : 3;
    const int ct = idx - i * (i + 1), j = ct / 2;
    const int r0 = 16 * i + g8, r1 = r0 + 8;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    if (is_da) {
#pragma unroll
      for (int kk = 0; kk < V / 16; ++kk) {
        uint32_t af[4], b0, b1;
        LoadA(af, dos, L::kVP, 16 * i, 16 * kk, lane);
        LoadBFromTransposed(b0, b1, vs, L::kVP, 8 * ct, 16 * kk, lane);
        Mma(acc, af, b0, b1);
      }
    } else if (i == j) {
#pragma unroll
      for (int kk = 0; kk < K / 16; ++kk) {
        uint32_t af[4], b0, b1;
        LoadA(af, qd, L::kKP, 16 * i, 16 * kk, lane);
        LoadBFromTransposed(b0, b1, kd, L::kKP, 8 * ct, 16 * kk, lane);
        Mma(acc, af, b0, b1);
      }
    } else {
      // Qo (reference b_16i) times Ko (reference b_16j+15) times 2^(b_16i - b_16j+15) <= 1.
      const float* r_i = bs + (16 * i) * L::kBP;
      const float* r_j = bs + (16 * j + 15) * L::kBP;
#pragma unroll
      for (int kk = 0; kk < K / 16; ++kk) {
        const int d0 = 16 * kk + 2 * t4, d1 = d0 + 8;
        uint32_t af[4], b0, b1;
        LoadA(af, qo, L::kKP, 16 * i, 16 * kk, lane);
        LoadBFromTransposed(b0, b1, ko, L::kKP, 8 * ct, 16 * kk, lane);
        const float2 x0 = UnpackBf16(b0), x1 = UnpackBf16(b1);
        b0 = PackBf16(x0.x * Exp2(r_i[d0] - r_j[d0]), x0.y * Exp2(r_i[d0 + 1] - r_j[d0 + 1]));
        b1 = PackBf16(x1.x * Exp2(r_i[d1] - r_j[d1]), x1.y * Exp2(r_i[d1 + 1] - r_j[d1 + 1]));
        Mma(acc, af, b0, b1);
      }
    }
    const int col = 8 * ct + 2 * t4;
    __nv_bfloat16* out = is_da ? das : as;
    *reinterpret_cast<uint32_t*>(out + r0 * L::kAP + col) =
        PackBf16(col <= r0 ? a.scale * acc[0] : 0.f, col + 1 <= r0 ? a.scale * acc[1] : 0.f);
    *reinterpret_cast<uint32_t*>(out + r1 * L::kAP + col) =
        PackBf16(col <= r1 ? a.scale * acc[2] : 0.f, col + 1 <= r1 ? a.scale * acc[3] : 0.f);
  }
  __syncthreads();

  const int i = warp % 4, half = warp / 4;
  const int r0 = 16 * i + g8, r1 = r0 + 8;  // this lane's rows (tokens) of the block
  constexpr int kNK = K / 16;               // n8 tiles of the warp's K / 2 key columns
  const int kbase = half * (K / 2);
  auto key_col = [&](int j) { return kbase + 8 * j + 2 * t4; };  // + 0, + 1
  const float* b_mid = bs + (16 * i + 8) * L::kBP;

  // Multiplies accumulator columns by 2^(to[d] - from[d]) (rows of bs, or null for b = 0).
  auto rescale = [&](float (&acc)[kNK][4], const float* to, const float* from) {
#pragma unroll
    for (int j = 0; j < kNK; ++j) {
      const int d = key_col(j);
      const float f0 = Exp2((to ? to[d] : 0.f) - (from ? from[d] : 0.f));
      const float f1 = Exp2((to ? to[d + 1] : 0.f) - (from ? from[d + 1] : 0.f));
      acc[j][0] *= f0;
      acc[j][1] *= f1;
      acc[j][2] *= f0;
      acc[j][3] *= f1;
    }
  };

  float db[kNK][4];  // q dq - k dk at this lane's elements
  // dq = 2^(b_t - b_mid) [2^(b_mid - e_{i-1}) [... [2^(e_0) scale X + P_0] ...] + P_diag].
  {
    float acc[kNK][4];
#pragma unroll
    for (int j = 0; j < kNK; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < V / 16; ++kk) {  // X = do S0^T
      uint32_t af[4];
      LoadA(af, dos, L::kVP, 16 * i, 16 * kk, lane);
#pragma unroll
      for (int j = 0; j < kNK; ++j) {
        uint32_t b0, b1;
        LoadBFromTransposed(b0, b1, s0s, L::kVP, kbase + 8 * j, 16 * kk, lane);
        Mma(acc[j], af, b0, b1);
      }
    }
#pragma unroll
    for (int j = 0; j < kNK; ++j) {
      acc[j][0] *= a.scale;
      acc[j][1] *= a.scale;
      acc[j][2] *= a.scale;
      acc[j][3] *= a.scale;
    }
    const float* ref = nullptr;  // reference of acc: b = 0 (the chunk start)
    for (int jb = 0; jb <= i; ++jb) {
      const bool diag = jb == i;
      const float* next = diag ? b_mid : bs + (16 * jb + 15) * L::kBP;
      rescale(acc, next, ref);
      ref = next;
      uint32_t af[4];
      LoadA(af, das, L::kAP, 16 * i, 16 * jb, lane);
      const __nv_bfloat16* kt = diag ? kd : ko;
#pragma unroll
      for (int jp = 0; jp < kNK / 2; ++jp) {
        uint32_t bf[4];
        LoadB2(bf, kt, L::kKP, 16 * jb, kbase + 16 * jp, lane);
        Mma(acc[2 * jp], af, bf[0], bf[1]);
        Mma(acc[2 * jp + 1], af, bf[2], bf[3]);
      }
    }
    GradT* out = static_cast<GradT*>(a.dq) + TokenOffset(a.dqs, row, H, tt0) + koff;
    float* sum = kSumKeySide ? a.dq_sum + sum_row0 * KF + koff : nullptr;
#pragma unroll
    for (int j = 0; j < kNK; ++j) {
      const int d = key_col(j);
      const float2 q0 = r0 < rows ? UnpackBf16(Ld32(qg + r0 * a.qs.token + d)) : float2{0.f, 0.f};
      const float2 q1 = r1 < rows ? UnpackBf16(Ld32(qg + r1 * a.qs.token + d)) : float2{0.f, 0.f};
      const float x0 = acc[j][0] * Exp2(bs[r0 * L::kBP + d] - b_mid[d]);
      const float x1 = acc[j][1] * Exp2(bs[r0 * L::kBP + d + 1] - b_mid[d + 1]);
      const float x2 = acc[j][2] * Exp2(bs[r1 * L::kBP + d] - b_mid[d]);
      const float x3 = acc[j][3] * Exp2(bs[r1 * L::kBP + d + 1] - b_mid[d + 1]);
      if constexpr (kSumKeySide) {
        if (r0 < rows) AddPair(sum + r0 * KF + d, x0, x1);
        if (r1 < rows) AddPair(sum + r1 * KF + d, x2, x3);
      } else {
        if (r0 < rows) StorePair(out + r0 * a.dqs.token + d, x0, x1);
        if (r1 < rows) StorePair(out + r1 * a.dqs.token + d, x2, x3);
      }
      db[j][0] = q0.x * x0;
      db[j][1] = q0.y * x1;
      db[j][2] = q1.x * x2;
      db[j][3] = q1.y * x3;
    }
  }

  // dk = 2^(b_mid - b_s) [2^(b_16(i+1) - b_mid) [... [2^(b_48 - b_C) Y + P_3] ...] + P_diag].
  {
    float acc[kNK][4];
#pragma unroll
    for (int j = 0; j < kNK; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < V / 16; ++kk) {  // Y = v dS^T
      uint32_t af[4];
      LoadA(af, vs, L::kVP, 16 * i, 16 * kk, lane);
#pragma unroll
      for (int j = 0; j < kNK; ++j) {
        uint32_t b0, b1;
        LoadBFromTransposed(b0, b1, dss, L::kVP, kbase + 8 * j, 16 * kk, lane);
        Mma(acc[j], af, b0, b1);
      }
    }
    const float* ref = bs + (kC - 1) * L::kBP;  // b_C
    for (int ib = 3; ib >= i; --ib) {
      const bool diag = ib == i;
      const float* next = diag ? b_mid : bs + (16 * ib) * L::kBP;
      rescale(acc, ref, next);  // reference moves up to an earlier token: factor <= 1
      ref = next;
      uint32_t af[4];
      LoadAFromTransposed(af, das, L::kAP, 16 * ib, 16 * i, lane);  // dA^T rows s, columns t
      const __nv_bfloat16* qt = diag ? qd : qo;
#pragma unroll
      for (int jp = 0; jp < kNK / 2; ++jp) {
        uint32_t bf[4];
        LoadB2(bf, qt, L::kKP, 16 * ib, kbase + 16 * jp, lane);
        Mma(acc[2 * jp], af, bf[0], bf[1]);
        Mma(acc[2 * jp + 1], af, bf[2], bf[3]);
      }
    }
    GradT* out = static_cast<GradT*>(a.dk) + TokenOffset(a.dks, row, H, tt0) + koff;
    float* sum = kSumKeySide ? a.dk_sum + sum_row0 * KF + koff : nullptr;
#pragma unroll
    for (int j = 0; j < kNK; ++j) {
      const int d = key_col(j);
      const float2 k0 = r0 < rows ? UnpackBf16(Ld32(kg + r0 * a.ks.token + d)) : float2{0.f, 0.f};
      const float2 k1 = r1 < rows ? UnpackBf16(Ld32(kg + r1 * a.ks.token + d)) : float2{0.f, 0.f};
      const float x0 = acc[j][0] * Exp2(b_mid[d] - bs[r0 * L::kBP + d]);
      const float x1 = acc[j][1] * Exp2(b_mid[d + 1] - bs[r0 * L::kBP + d + 1]);
      const float x2 = acc[j][2] * Exp2(b_mid[d] - bs[r1 * L::kBP + d]);
      const float x3 = acc[j][3] * Exp2(b_mid[d + 1] - bs[r1 * L::kBP + d + 1]);
      if constexpr (kSumKeySide) {
        if (r0 < rows) AddPair(sum + r0 * KF + d, x0, x1);
        if (r1 < rows) AddPair(sum + r1 * KF + d, x2, x3);
      } else {
        if (r0 < rows) StorePair(out + r0 * a.dks.token + d, x0, x1);
        if (r1 < rows) StorePair(out + r1 * a.dks.token + d, x2, x3);
      }
      db[j][0] -= k0.x * x0;
      db[j][1] -= k0.y * x1;
      db[j][2] -= k1.x * x2;
      db[j][3] -= k1.y * x3;
    }
  }

  // dg, first half: suffix sums of q dq - k dk over this block's 16 rows (rows g8 in db[.][0..1],
  // g8 + 8 in db[.][2..3]; lanes 4 apart hold consecutive rows), block totals to shared memory.
#pragma unroll
  for (int j = 0; j < kNK; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float lo = db[j][e], hi = db[j][2 + e];
#pragma unroll
      for (int off = 1; off < 8; off *= 2) {
        const float ylo = __shfl_down_sync(0xffffffffu, lo, 4 * off);
        const float yhi = __shfl_down_sync(0xffffffffu, hi, 4 * off);
        if (g8 + off < 8) {
          lo += ylo;
          hi += yhi;
        }
      }
      lo += __shfl_sync(0xffffffffu, hi, t4);  // the upper 8 rows' total
      db[j][e] = lo;
      db[j][2 + e] = hi;
      const float block_total = __shfl_sync(0xffffffffu, lo, t4);
      if (g8 == 0) tot[i * K + key_col(j) + e] = block_total;
    }
  }
  __syncthreads();  // S0 and the cumsum scratch are free; block totals are in place

  // Kc = k 2^(b_C - b_s) where S0 was.
  for (int idx = tid; idx < kC * K / 8; idx += kThreads) {
    const int t = idx / (K / 8), d = (idx % (K / 8)) * 8;
    uint4 kv = make_uint4(0, 0, 0, 0);
    if (t < rows) kv = *reinterpret_cast<const uint4*>(kg + t * a.ks.token + d);
    const uint32_t kw[4] = {kv.x, kv.y, kv.z, kv.w};
    uint32_t o[4];
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const float2 y = UnpackBf16(kw[p]);
      const float2 b = *reinterpret_cast<const float2*>(bs + t * L::kBP + d + 2 * p);
      const float2 bc = *reinterpret_cast<const float2*>(bs + (kC - 1) * L::kBP + d + 2 * p);
      o[p] = PackBf16(y.x * Exp2(bc.x - b.x), y.y * Exp2(bc.y - b.y));
    }
    *reinterpret_cast<uint4*>(kcs + t * L::kKP + d) = make_uint4(o[0], o[1], o[2], o[3]);
  }

  // dg, second half: add the later blocks' totals and rowsum(S_end * dS).
  {
    float* out = a.dg + TokenOffset(a.dgs, row, H, tt0) + koff;
    float* sum = kSumKeySide ? a.dg_sum + sum_row0 * KF + koff : nullptr;
#pragma unroll
    for (int j = 0; j < kNK; ++j) {
      const int d = key_col(j);
      float add0 = dgl[d], add1 = dgl[d + 1];
      for (int ib = i + 1; ib < 4; ++ib) {
        add0 += tot[ib * K + d];
        add1 += tot[ib * K + d + 1];
      }
      if constexpr (kSumKeySide) {
        if (r0 < rows) AddPair(sum + r0 * KF + d, db[j][0] + add0, db[j][1] + add1);
        if (r1 < rows) AddPair(sum + r1 * KF + d, db[j][2] + add0, db[j][3] + add1);
      } else {
        if (r0 < rows) StorePair(out + r0 * a.dgs.token + d, db[j][0] + add0, db[j][1] + add1);
        if (r1 < rows) StorePair(out + r1 * a.dgs.token + d, db[j][2] + add0, db[j][3] + add1);
      }
    }
  }
  __syncthreads();  // Kc is in place

  // dv = A^T do + Kc dS: rows s of block i, value columns of half `half`.
  {
    constexpr int kNV = V / 16;
    const int vbase = half * (V / 2);
    float acc[kNV][4];
#pragma unroll
    for (int j = 0; j < kNV; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    for (int ib = i; ib < 4; ++ib) {
      uint32_t af[4];
      LoadAFromTransposed(af, as, L::kAP, 16 * ib, 16 * i, lane);  // A^T rows s, columns t
#pragma unroll
      for (int jp = 0; jp < kNV / 2; ++jp) {
        uint32_t bf[4];
        LoadB2(bf, dos, L::kVP, 16 * ib, vbase + 16 * jp, lane);
        Mma(acc[2 * jp], af, bf[0], bf[1]);
        Mma(acc[2 * jp + 1], af, bf[2], bf[3]);
      }
    }
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) {
      uint32_t af[4];
      LoadA(af, kcs, L::kKP, 16 * i, 16 * kk, lane);
#pragma unroll
      for (int jp = 0; jp < kNV / 2; ++jp) {
        uint32_t bf[4];
        LoadB2(bf, dss, L::kVP, 16 * kk, vbase + 16 * jp, lane);
        Mma(acc[2 * jp], af, bf[0], bf[1]);
        Mma(acc[2 * jp + 1], af, bf[2], bf[3]);
      }
    }
    GradT* out = static_cast<GradT*>(a.dv) + TokenOffset(a.dvs, row, H, tt0) + voff;
    float* sum = kSumValueSide ? a.dv_sum + sum_row0 * VF + voff : nullptr;
#pragma unroll
    for (int j = 0; j < kNV; ++j) {
      const int e = vbase + 8 * j + 2 * t4;
      if constexpr (kSumValueSide) {
        if (r0 < rows) AddPair(sum + r0 * VF + e, acc[j][0], acc[j][1]);
        if (r1 < rows) AddPair(sum + r1 * VF + e, acc[j][2], acc[j][3]);
      } else {
        if (r0 < rows) StorePair(out + r0 * a.dvs.token + e, acc[j][0], acc[j][1]);
        if (r1 < rows) StorePair(out + r1 * a.dvs.token + e, acc[j][2], acc[j][3]);
      }
    }
  }
#endif
}

// State columns per block of the reverse scan (of `key_rows` state rows): all of them when the
// sequences fill the device, else 32 (more blocks, each repeating the chunk's 2^b q); at most
// 16384 / key_rows (64 fp32 registers of state per thread).
int GlaScanColumns(int64_t batch_heads, int key_rows, int value_dim, int num_sms) {
  return batch_heads >= num_sms ? std::min(value_dim, 16384 / key_rows) : 32;
}

template <int K, int W, int KF>
cudaError_t LaunchScan(const ScanArgs& s, int64_t bh, cudaStream_t stream) {
  using SL = ScanLayout<K, W>;
  HYB_CUDA_TRY(cudaFuncSetAttribute(GlaStateGradKernel<K, W, KF>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, SL::kBytes));
  GlaStateGradKernel<K, W, KF>
      <<<static_cast<unsigned>(bh * s.slices), kThreads, SL::kBytes, stream>>>(s);
  HYB_CUDA_TRY(cudaGetLastError());
  return cudaSuccess;
}

// `blocks`: one per chunk of every sequence and head (times the slices: grid y).
template <int K, int V, int KF, int VF, typename GradT>
cudaError_t LaunchChunks(const ChunkArgs& c, int64_t blocks, cudaStream_t stream) {
  using CL = ChunkLayout<K, V>;
  constexpr unsigned kSlices = (KF / K) * (VF / V);
  if (blocks == 0) return cudaSuccess;  // only empty packed sequences
  HYB_CUDA_TRY(cudaFuncSetAttribute(GlaChunkGradKernel<K, V, KF, VF, GradT>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, CL::kBytes));
  GlaChunkGradKernel<K, V, KF, VF, GradT>
      <<<dim3(static_cast<unsigned>(blocks), kSlices), kThreads, CL::kBytes, stream>>>(c);
  HYB_CUDA_TRY(cudaGetLastError());
  return cudaSuccess;
}

// Stores the fp32 sums of sliced gradients (null: none) in their tensors.
template <typename GradT>
cudaError_t StoreSums(const GlaChunkedBackwardParams& p, const ChunkArgs& c, int64_t rows,
                      cudaStream_t stream) {
  const int64_t h = p.heads, t = p.tokens;
  if (c.dq_sum != nullptr) {
    HYB_CUDA_TRY(GlaStoreAccumulated(c.dq_sum, static_cast<GradT*>(p.dq), c.dqs, rows, h, t,
                                     p.key_dim, stream));
    HYB_CUDA_TRY(GlaStoreAccumulated(c.dk_sum, static_cast<GradT*>(p.dk), c.dks, rows, h, t,
                                     p.key_dim, stream));
    HYB_CUDA_TRY(GlaStoreAccumulated(c.dg_sum, p.dg, c.dgs, rows, h, t, p.key_dim, stream));
  }
  if (c.dv_sum != nullptr) {
    HYB_CUDA_TRY(GlaStoreAccumulated(c.dv_sum, static_cast<GradT*>(p.dv), c.dvs, rows, h, t,
                                     p.value_dim, stream));
  }
  return cudaSuccess;
}

// KF x VF: the head dims; the kernels run slices of K x V = GlaSliceDim of them.
template <int KF, int VF>
cudaError_t LaunchDims(const GlaChunkedBackwardParams& p, cudaStream_t stream) {
  constexpr int K = GlaSliceDim(KF), V = GlaSliceDim(VF);
  const int64_t bh = p.batch * p.heads;
  const int nchunks = static_cast<int>((p.tokens + kC - 1) / kC);
  ScanArgs s{};
  s.q = static_cast<const __nv_bfloat16*>(p.q);
  s.g = p.g;
  s.d_output = static_cast<const __nv_bfloat16*>(p.d_output);
  s.qs = GlaResolveStrides(p.q_strides, p.heads, p.tokens, KF);
  s.gs = GlaResolveStrides(p.g_strides, p.heads, p.tokens, KF);
  s.dos = GlaResolveStrides(p.d_output_strides, p.heads, p.tokens, VF);
  s.heads = p.heads;
  s.d_final_state = p.d_final_state;
  s.d_chunk_states = static_cast<float*>(p.workspace);
  s.d_initial_state = p.d_initial_state;
  s.tokens = p.tokens;
  s.nchunks = nchunks;
  s.value_dim = VF;
  s.scale = p.scale;
  s.varlen = p.varlen;

  ChunkArgs c{};
  c.q = s.q;
  c.k = static_cast<const __nv_bfloat16*>(p.k);
  c.v = static_cast<const __nv_bfloat16*>(p.v);
  c.g = p.g;
  c.d_output = s.d_output;
  c.qs = s.qs;
  c.ks = GlaResolveStrides(p.k_strides, p.heads, p.tokens, KF);
  c.vs = GlaResolveStrides(p.v_strides, p.heads, p.tokens, VF);
  c.gs = s.gs;
  c.dos = s.dos;
  c.chunk_states = p.chunk_states;
  c.d_chunk_states = s.d_chunk_states;
  c.dq = p.dq;
  c.dk = p.dk;
  c.dv = p.dv;
  c.dg = p.dg;
  c.dqs = GlaResolveStrides(p.dq_strides, p.heads, p.tokens, KF);
  c.dks = GlaResolveStrides(p.dk_strides, p.heads, p.tokens, KF);
  c.dvs = GlaResolveStrides(p.dv_strides, p.heads, p.tokens, VF);
  c.dgs = GlaResolveStrides(p.dg_strides, p.heads, p.tokens, KF);
  c.heads = p.heads;
  c.tokens = p.tokens;
  c.nchunks = nchunks;
  c.scale = p.scale;
  c.varlen = p.varlen;
  c.num_seqs = p.batch;
  const int grad_bytes = p.grads_bf16 ? 2 : 4;
  if (!GlaStridesAligned(p.q, c.qs, 2) || !GlaStridesAligned(p.k, c.ks, 2) ||
      !GlaStridesAligned(p.v, c.vs, 2) || !GlaStridesAligned(p.g, c.gs, 4) ||
      !GlaStridesAligned(p.d_output, c.dos, 2) || !GlaStridesAligned(p.dq, c.dqs, grad_bytes) ||
      !GlaStridesAligned(p.dk, c.dks, grad_bytes) || !GlaStridesAligned(p.dv, c.dvs, grad_bytes) ||
      !GlaStridesAligned(p.dg, c.dgs, 4)) {
    return cudaErrorInvalidValue;
  }

  constexpr int kScanW = VF < 16384 / K ? VF : 16384 / K;  // GlaScanColumns's first choice
  const int w = GlaScanColumns(bh, K, VF, p.num_sms);
  s.slices = (VF / w) * (KF / K);
  const cudaError_t err =
      w == kScanW ? LaunchScan<K, kScanW, KF>(s, bh, stream) : LaunchScan<K, 32, KF>(s, bh, stream);
  if (err != cudaSuccess) return err;

  // Sums of gradients over slices after the state gradients (GlaChunkedBackwardWorkspaceBytes).
  const bool packed = p.varlen.cu_seqlens != nullptr;
  const int64_t rows = GlaTokenRows(packed, p.batch, p.heads);
  float* sums = s.d_chunk_states + (packed ? p.heads * p.varlen.total_chunks : bh * nchunks) *
                                       static_cast<int64_t>(KF) * VF;
  const int64_t key_floats = rows * p.tokens * KF, value_floats = rows * p.tokens * VF;
  int64_t sum_floats = 0;
  if constexpr (VF != V) {
    c.dq_sum = sums;
    c.dk_sum = sums + key_floats;
    c.dg_sum = sums + 2 * key_floats;
    sum_floats += 3 * key_floats;
  }
  if constexpr (KF != K) {
    c.dv_sum = sums + sum_floats;
    sum_floats += value_floats;
  }
  if (sum_floats > 0) {
    HYB_CUDA_TRY(cudaMemsetAsync(sums, 0, static_cast<size_t>(sum_floats) * sizeof(float), stream));
  }
  const int64_t blocks = packed ? p.varlen.total_chunks * p.heads : bh * nchunks;
  if (p.grads_bf16) {
    const cudaError_t e = LaunchChunks<K, V, KF, VF, __nv_bfloat16>(c, blocks, stream);
    return e != cudaSuccess ? e : StoreSums<__nv_bfloat16>(p, c, rows, stream);
  }
  const cudaError_t e = LaunchChunks<K, V, KF, VF, float>(c, blocks, stream);
  return e != cudaSuccess ? e : StoreSums<float>(p, c, rows, stream);
}

}  // namespace

size_t GlaChunkedBackwardWorkspaceBytes(const GlaChunkedBackwardParams& p) {
  // [dS at every chunk end][V = 256: dq, dk, dg sums, rows x T x K each][K = 256: dv's, x V]
  const bool packed = p.varlen.cu_seqlens != nullptr;
  const int64_t chunks =
      packed ? p.heads * p.varlen.total_chunks : p.batch * p.heads * ((p.tokens + kC - 1) / kC);
  int64_t floats = chunks * p.key_dim * p.value_dim;
  const int64_t token_rows = GlaTokenRows(packed, p.batch, p.heads) * p.tokens;
  if (GlaSlices(p.value_dim) > 1) floats += 3 * token_rows * p.key_dim;
  if (GlaSlices(p.key_dim) > 1) floats += token_rows * p.value_dim;
  return static_cast<size_t>(floats) * sizeof(float);
}

cudaError_t LaunchGlaChunkedBackward(const GlaChunkedBackwardParams& p, cudaStream_t stream) {
  if (!GlaChunkedSupportsDims(p.key_dim, p.value_dim)) return cudaErrorInvalidValue;
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
  return GlaDispatchDims(p.key_dim, p.value_dim, [&](auto kf, auto vf) {
    return LaunchDims<decltype(kf)::value, decltype(vf)::value>(p, stream);
  });
}

}  // namespace hyb::kernels::cuda
