// Chunked GLA forward for sm_90 (H100 / H200: its layout takes ~224 KB of shared memory): bf16
// q/k/v, fp32 gates, state and accumulation, tensor-core products through mma.sync m16n8k16.
//
// One thread block walks the chunks (64 tokens) of one segment of one (batch, head) in order,
// keeping the [K, V] state in registers. Its warps are specialised (GlaChunkKernel): 8 consumer
// warps hold the state and, per chunk, write it to shared memory in bf16, update it and produce
// the outputs; 4 producer warps, one chunk ahead, load the tiles (cp.async), sum the gates,
// scale q and k and compute the scores. Per chunk, with b_t = cumulative log2 decay inside the
// chunk (b_t includes g_t):
//   A[t, s] = sum_d q_t[d] k_s[d] 2^(b_t[d] - b_s[d])   for s <= t (intra-chunk scores)
//   o_t     = scale * (sum_d q_t[d] 2^b_t[d] S[d, :] + sum_{s<=t} A[t, s] v_s)
//   S      <- 2^b_C * S + sum_s (k_s 2^(b_C - b_s)) v_s^T
// q and k are scaled once per chunk against an anchor a[d] of each key column's decays
// (DecayAnchor): q_t 2^(b_t - a) and k_s 2^(a - b_s) multiply to q_t k_s 2^(b_t - b_s), so the
// scores are one product of the scaled tiles, the outputs read q 2^(b - a) against St = 2^a S, and
// the state update is S <- 2^b_C S + 2^(b_C - a) (k 2^(a - b))^T v: tensor-core products on
// ldmatrix fragments, ~16K exp2 per chunk. Every factor is <= 2^60 while each column's decays
// span <= 120 (log2) in the chunk: per-token log decays down to ~ -1.3 on average (GLA's
// logsigmoid(x) / 16 gates stay far inside). Chunks past that (strong gates) take the exact path:
// scores in tiles of 8 key columns referenced to the decay at their last column, so that
// q_t 2^(b_t - r) and k_s 2^(r - b_s) are both <= 1 off the diagonal and bounded by 7 steps of
// decay inside it (exact for per-token log decays down to about -12), and outputs from
// q 2^b against St = S. The state update is the anchored one on both paths.
//
// Long sequences with few (batch x heads) are cut into segments of whole chunks: pass 1 computes
// each segment's own state (from zero) and total decay, in pieces; each pass-2 block combines the
// earlier segments' pieces into its start state, then produces outputs. Pass 1
// (GlaStatePassKernel) splits each segment's state by blocks of 64 key rows, which evolve
// independently given the gates, and holds only k, v and g in shared memory: two of its blocks
// share a multiprocessor (gla_state_pass.h). For fixed-length sequences its blocks take equal
// ranges of all (key block, chunk) steps, two per multiprocessor, so that none idles while others
// run two segments: a segment that ranges cut has a piece per range, combined in order. Pass 2
// is launched programmatically dependent on pass 1, so that its blocks start as pass 1's leave
// and wait for the pieces only where they read them. Otherwise pass 2 alone runs, one segment
// per sequence.
//
// Packed sequences (GlaChunkedParams::varlen): blocks map to (sequence, segment, head) through
// the segment offsets, so sequences of any lengths share both passes.
//
// With GlaChunkedParams::chunk_states set, pass 2 also writes the fp32 state at every chunk start
// (and the final state after them): what the backward (gla_chunked_bwd.cu) reads.
//
// q, k, v, g and o are addressed through (batch, head, token) strides (GlaStrides): tiles move
// as 16-byte rows, so [B, H, T, D] views of [B, T, H, D] buffers are read and written in place.
//
// Head dims of 256: blocks run the 128-dim kernel on slices of the key and value dims
// (gla_slices.cuh); with K = 256 the output is the sum of two slices' outputs, added in fp32.
#include <cuda_bf16.h>

#include <algorithm>

#include "cuda_check.h"
#include "gla_slices.cuh"
#include "gla_state_pass.h"
#include "linear_attention_launch.h"
#include "mma_bf16.cuh"
#include "varlen_seqs.cuh"

namespace hyb::kernels::cuda {
namespace {

constexpr int kC = kGlaChunk;  // tokens per chunk
constexpr int kThreads = 256;  // 8 warps
constexpr float kLog2e = 1.4426950408889634f;
// Pass-1 blocks per multiprocessor (shared memory of the 128-value-column layout).
constexpr int kGlaStateBlocksPerSm = GlaBlocksPerSm(GlaStateLayout<128>::kBytes);

// 16 bytes from gmem to the shared-memory address s (or zeros: !valid reads nothing).
__device__ __forceinline__ void CpAsync16(uint32_t s, const void* gmem, bool valid) {
  const int src_size = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
               "r"(src_size));
}
// Programmatic dependent launch (sm_90; the forward's layouts need sm_90 anyway): the grid
// launched after this one with programmatic stream serialization may start once every block of
// this one has called LaunchDependentGrid (or exited); WaitForPrimaryGrid blocks until the grid
// before this one has completed and its writes are visible.
__device__ __forceinline__ void LaunchDependentGrid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
[[maybe_unused]] __device__ __forceinline__ void WaitForPrimaryGrid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n"); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Shared-memory layout (bytes). Rows are padded by 16 bytes (8 bf16 / 8 fp32 for the gates) so
// that fragment loads of 8 rows x 4 lanes fall in distinct banks.
template <int K, int V>
struct Layout {
  static constexpr int kKP = K + 8;   // q, k and St row pitch (elements)
  static constexpr int kVP = V + 8;   // v row pitch
  static constexpr int kBP = K + 8;   // gates / cumulative decay row pitch (floats)
  static constexpr int kAP = kC + 8;  // scores row pitch
};

// The anchor of a key column's decays in a chunk (log2 units). Scores, outputs and the state
// update read q and k scaled once per chunk against it, q_t 2^(b_t - a) and k_s 2^(a - b_s), which
// multiply to the exact q_t k_s 2^(b_t - b_s). a lies within kAnchorSpan above b_C (the chunk's
// last, lowest decay), so k's factors stay <= 2^kAnchorSpan and the state update
// 2^(b_C - a) (k 2^(a - b))^T v is exact for any gates. When also every column's decays span at
// most 2 kAnchorSpan in the chunk (b_0 - b_C), a lies within kAnchorSpan below b_0 too, q's
// factors stay <= 2^kAnchorSpan as well, and the scores are one product of the scaled tiles
// (GlaChunkKernel's anchored path); otherwise they keep per-tile references (its exact path).
// Both kernels compute it from the same three decays, so their scaled k are bit-identical.
constexpr float kAnchorSpan = 60.f;
__device__ __forceinline__ float DecayAnchor(float b_first, float b_mid, float b_last) {
  return fminf(fmaxf(b_mid, b_first - kAnchorSpan), b_last + kAnchorSpan);
}

struct KernelArgs {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  const float* g;
  const float* initial_state;  // per sequence, or null
  __nv_bfloat16* o;
  GlaStrides qs, ks, vs, gs, os;  // resolved element strides
  int64_t heads;
  float* final_state;
  float* chunk_states;  // [BH, nchunks + 1, K, V] or null: state at every chunk start, final
  float* o_accum;       // K = 256: zeroed fp32 [rows, T, V] that the key slices add o into
  // Pass 1's pieces (PieceAt): per segment (all but each sequence's last) and key block, its
  // state from zero and log2 decay over each part of it that one pass-1 block took.
  float* pieces;
  int* piece_parts;    // [slice][segment id][key block]: its pieces, when p1_parts > 1
  int64_t piece_sids;  // segment ids per slice: B H (nseg - 1) fixed-length, slots packed
  int64_t p1_steps;    // fixed-length: pass-1 steps per slice (GlaStatePlanOf)
  int64_t p1_blocks;   // fixed-length: pass-1 blocks per slice
  int p1_parts;        // pieces per segment, at most (1 packed)
  int64_t tokens;
  int nseg;        // segments per sequence (fixed-length)
  int seg_chunks;  // chunks per segment
  float scale;
  VarlenSeqs varlen;           // packed sequences, or none
  const int64_t* cu_segments;  // packed: [N + 1] segment offsets
  int64_t num_seqs;            // packed: N; fixed-length: the batch (pass 1 decodes rows by it)
};

// Segment `seg` of sequence bh, and its slot among all segments (packed: its segment id).
struct SegmentOfBlock {
  int64_t bh;
  int seg, nseg;  // this segment, and the sequence's segment count
  int64_t slot;   // bh nseg + seg fixed-length; packed, over every sequence's segments
};

// Fixed-length: block x = bh * nseg + seg. Packed: x = (cu_segments[n] + seg) * H + h over
// every segment of every sequence (pass 1's blocks of last segments return at once).
__device__ __forceinline__ SegmentOfBlock SegmentOf(const KernelArgs& a, int64_t x) {
  if (a.varlen.cu_seqlens == nullptr) {
    const int64_t bh = x / a.nseg;
    const int seg = static_cast<int>(x % a.nseg);
    return {bh, seg, a.nseg, bh * a.nseg + seg};
  }
  const int64_t gs = x / a.heads, h = x % a.heads;
  const int64_t n = FindSeq(a.cu_segments, a.num_seqs, gs);
  const int64_t s0 = a.cu_segments[n];
  const int nseg = static_cast<int>(a.cu_segments[n + 1] - s0);
  const int seg = static_cast<int>(gs - s0);
  return {n * a.heads + h, seg, nseg, s0 * a.heads + h * nseg + seg};
}

// Piece `part` of key block kb of segment id sid (fixed-length: bh (nseg - 1) + segment; packed:
// the segment's slot), in the slice's [sid][key block][part] array of GlaPieceFloats(V) floats.
template <int V>
__device__ __forceinline__ float* PieceAt(const KernelArgs& a, int64_t sid, int kb, int part,
                                          int key_blocks, int slice) {
  return a.pieces +
         (((slice * a.piece_sids + sid) * key_blocks + kb) * a.p1_parts + part) * GlaPieceFloats(V);
}

// The piece count of key block kb of segment id sid (written by the block that ends the segment).
__device__ __forceinline__ int* PartsAt(const KernelArgs& a, int64_t sid, int kb, int key_blocks,
                                        int slice) {
  return a.piece_parts + (slice * a.piece_sids + sid) * key_blocks + kb;
}

// Copies rows [0, rows_valid) of a [kC][kCols] global tile (rows `src_pitch` bytes apart) into
// shared memory with row pitch kPitch, over kThr threads; rows past the end are zero-filled. Each
// thread walks its rows with a running source pointer, and the row checks come only in a chunk
// that ends the sequence, so that a copy is a few instructions besides the cp.async.
template <int kCols, int kElemBytes, int kPitch, int kThr>
__device__ __forceinline__ void CopyTile(char* dst, const char* src, int64_t src_pitch,
                                         int64_t rows_valid, int tid) {
  constexpr int kVecPerRow = kCols * kElemBytes / 16;
  static_assert(kThr % kVecPerRow == 0 && kC % (kThr / kVecPerRow) == 0, "uneven tile split");
  constexpr int kRowStep = kThr / kVecPerRow, kIters = kC / kRowStep;
  constexpr uint32_t kDstStep = kRowStep * kPitch * kElemBytes;
  const int row0 = tid / kVecPerRow, cv = tid % kVecPerRow;
  const char* s = src + (static_cast<int64_t>(row0) * src_pitch + cv * 16);
  const int64_t step = kRowStep * src_pitch;
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst)) +
                     (row0 * kPitch * kElemBytes + cv * 16);
  if (rows_valid >= kC) {
#pragma unroll
    for (int n = 0; n < kIters; ++n, s += step) CpAsync16(d + n * kDstStep, s, true);
  } else {
#pragma unroll
    for (int n = 0; n < kIters; ++n, s += step) {
      const bool ok = row0 + n * kRowStep < rows_valid;
      CpAsync16(d + n * kDstStep, ok ? s : src, ok);
    }
  }
}

// q[row][d..d+1] * 2^(b[row][d..d+1] - ref), packed to bf16.
template <int K, int V>
__device__ __forceinline__ uint32_t ScaledQ(const __nv_bfloat16* qs, const float* bs, int row,
                                            int d, float2 ref) {
  using L = Layout<K, V>;
  const __nv_bfloat162 q = *reinterpret_cast<const __nv_bfloat162*>(qs + row * L::kKP + d);
  const float2 b = *reinterpret_cast<const float2*>(bs + row * L::kBP + d);
  return PackBf16(__low2float(q) * Exp2(b.x - ref.x), __high2float(q) * Exp2(b.y - ref.y));
}

// k[row][d..d+1] * 2^(ref - b[row][d..d+1]), packed to bf16.
template <int K, int V>
__device__ __forceinline__ uint32_t ScaledK(const __nv_bfloat16* ks, const float* bs, int row,
                                            int d, float2 ref) {
  using L = Layout<K, V>;
  const __nv_bfloat162 k = *reinterpret_cast<const __nv_bfloat162*>(ks + row * L::kKP + d);
  const float2 b = *reinterpret_cast<const float2*>(bs + row * L::kBP + d);
  return PackBf16(__low2float(k) * Exp2(ref.x - b.x), __high2float(k) * Exp2(ref.y - b.y));
}

// The chunk-end state update S <- 2^b_C S + 2^(b_C - a) (k 2^(a - b))^T v of a warp's state
// fragment: key rows row0 + g8 (lo) and row0 + g8 + 8 (hi), value columns col0 + [0, 8 kSN). khat:
// the chunk's k tile scaled in place against each key column's anchor a (DecayAnchor, pitch kKP,
// column 0 = the state's key row 0); vs: its v tile (pitch kVP). e = 2^b_C and f = 2^(b_C - a) of
// rows lo / hi (both <= 1). Each 16 x 8 tile of (k 2^(a - b))^T v is summed from zero over the
// chunk, then combined, so the output pass and the state-only pass 1, which make the same calls
// on the same fragments, get bit-identical states.
template <int kSN, int kKP, int kVP>
__device__ __forceinline__ void UpdateChunkState(float (&S)[kSN][4], const __nv_bfloat16* khat,
                                                 const __nv_bfloat16* vs, int row0, float e_lo,
                                                 float e_hi, float f_lo, float f_hi, int col0,
                                                 int lane) {
  uint32_t a[kC / 16][4];  // A = khat^T: 16 key rows x 16 tokens per kk
#pragma unroll
  for (int kk = 0; kk < kC / 16; ++kk) frag::LoadAT(a[kk], khat, kKP, row0, 16 * kk, lane);
  auto combine = [&](float (&s)[4], const float (&p)[4]) {
    s[0] = __fmaf_rn(e_lo, s[0], __fmul_rn(f_lo, p[0]));
    s[1] = __fmaf_rn(e_lo, s[1], __fmul_rn(f_lo, p[1]));
    s[2] = __fmaf_rn(e_hi, s[2], __fmul_rn(f_hi, p[2]));
    s[3] = __fmaf_rn(e_hi, s[3], __fmul_rn(f_hi, p[3]));
  };
#pragma unroll
  for (int jp = 0; jp < kSN / 2; ++jp) {
    float p0[4] = {0.f, 0.f, 0.f, 0.f}, p1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int kk = 0; kk < kC / 16; ++kk) {
      uint32_t b[4];
      frag::LoadB2(b, vs, kVP, 16 * kk, col0 + 16 * jp, lane);
      Mma(p0, a[kk], b[0], b[1]);
      Mma(p1, a[kk], b[2], b[3]);
    }
    combine(S[2 * jp], p0);
    combine(S[2 * jp + 1], p1);
  }
}

// Scales the chunk's k tile in place to k 2^(a - b) and, with q_too, its q tile to q 2^(b - a)
// (bf16; a = DecayAnchor of each key column; tiles of kCols columns, pitch kKP; decays pitch kBP).
// Thread tid takes four adjacent columns and every (threads / (kCols / 4))-th row.
template <int kCols, int kKP, int kBP, int kThreadsUsed, int kUnroll = 4>
__device__ __forceinline__ void ScaleChunk(__nv_bfloat16* qs, __nv_bfloat16* ks, const float* bs,
                                           int tid, bool q_too) {
  constexpr int kQuads = kCols / 4, kRowStep = kThreadsUsed / kQuads;
  static_assert(kThreadsUsed % kQuads == 0, "rows do not split evenly over the block");
  const int d = 4 * (tid % kQuads);
  const float4 b0 = *reinterpret_cast<const float4*>(bs + d);
  const float4 bm = *reinterpret_cast<const float4*>(bs + (kC / 2 - 1) * kBP + d);
  const float4 bl = *reinterpret_cast<const float4*>(bs + (kC - 1) * kBP + d);
  const float a[4] = {DecayAnchor(b0.x, bm.x, bl.x), DecayAnchor(b0.y, bm.y, bl.y),
                      DecayAnchor(b0.z, bm.z, bl.z), DecayAnchor(b0.w, bm.w, bl.w)};
  auto scale = [](uint2 x, const float (&e)[4]) {  // four bf16 times e, rounded to bf16
    const float2 lo = UnpackBf16(x.x), hi = UnpackBf16(x.y);
    return make_uint2(PackBf16(lo.x * e[0], lo.y * e[1]), PackBf16(hi.x * e[2], hi.y * e[3]));
  };
#pragma unroll kUnroll
  for (int r = tid / kQuads; r < kC; r += kRowStep) {
    const float4 b4 = *reinterpret_cast<const float4*>(bs + r * kBP + d);
    const float b[4] = {b4.x, b4.y, b4.z, b4.w};
    float ek[4], x[4];  // x = a - b; b - a = -x exactly, and the negation folds into ex2
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      x[i] = a[i] - b[i];
      ek[i] = Exp2(x[i]);
    }
    uint2* kp = reinterpret_cast<uint2*>(ks + r * kKP + d);
    *kp = scale(*kp, ek);
    if (q_too) {
      float eq[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) eq[i] = Exp2(-x[i]);
      uint2* qp = reinterpret_cast<uint2*>(qs + r * kKP + d);
      *qp = scale(*qp, eq);
    }
  }
}

// Stores this lane's entries of a 16 x 8 score tile (rows r0 and r0 + 8, columns col and col + 1)
// to the bf16 [C][C] tile (pitch kAP), zero above the diagonal. On the anchored path those
// entries may be huge or infinite: each is replaced, not scaled.
template <int kAP>
__device__ __forceinline__ void StoreCausalScores(__nv_bfloat16* as, int r0, int col,
                                                  const float (&acc)[4]) {
  const int r1 = r0 + 8;
  *reinterpret_cast<uint32_t*>(as + r0 * kAP + col) =
      PackBf16(col <= r0 ? acc[0] : 0.f, col + 1 <= r0 ? acc[1] : 0.f);
  *reinterpret_cast<uint32_t*>(as + r1 * kAP + col) =
      PackBf16(col <= r1 ? acc[2] : 0.f, col + 1 <= r1 ? acc[3] : 0.f);
}

// The anchor of key column d of a chunk's cumulative decays (pitch kBP).
template <int kBP>
__device__ __forceinline__ float AnchorOf(const float* bs, int d) {
  return DecayAnchor(bs[d], bs[(kC / 2 - 1) * kBP + d], bs[(kC - 1) * kBP + d]);
}

// ---- Pass 2: warp-specialised ----
// 12 warps: warps 0-7 (consumers) own the [K, V] state and, per chunk, write St, update the
// state and produce the outputs; warps 8-11 (producer) load the chunks (cp.async), sum the
// gates, scale q and k and compute the scores one chunk ahead. Two stages of q, k, v, scores and
// per-column anchors / last decays, and two gate slots (the gates are loaded one chunk earlier
// than q, k, v, so their sums run while q, k, v are in flight). Named barriers:
//   READY(s): the producer's arrivals (128) + the consumers' wait (256): stage s is prepared;
//   FREE(s): the consumers' arrivals + the producer's wait: stage s's readers are done;
//   producer-only (128), consumers-only (256), and the output pairs' (64 each).
// The producer is the slower role (ncu: the consumers wait on READY, it hardly waits on FREE), so
// its work is kept short in instructions: copies by CopyTile, and its loops unrolled
// kWsUnroll times. Every thread has 168 registers (384 threads): moving registers from the
// producer to the consumers (setmaxnreg 40 / 232 with the loops not unrolled, 104 / 200 with
// them unrolled 4) was slower on the H200 (BENCHMARKS.md, "Session 18").
constexpr int kWsUnroll = 4;
constexpr int kWsThreads = 384;
constexpr int kWsConsumers = 256;
constexpr int kWsProducers = 128;
constexpr int kBarReady0 = 1, kBarFree0 = 3, kBarProducer = 5, kBarConsumers = 6, kBarPair0 = 7;

__device__ __forceinline__ void BarSync(int id, int n) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ void BarArrive(int id, int n) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
// bar.sync over n threads that also returns whether any of them passed p.
__device__ __forceinline__ bool BarOr(int id, int n, bool p) {
  int r;
  asm volatile(
      "{\n .reg .pred pin, pout;\n setp.ne.s32 pin, %1, 0;\n"
      " bar.red.or.pred pout, %2, %3, pin;\n selp.s32 %0, 1, 0, pout;\n}\n"
      : "=r"(r)
      : "r"(static_cast<int>(p)), "r"(id), "r"(n)
      : "memory");
  return r != 0;
}

template <int K, int V>
struct WsLayout {
  using L = Layout<K, V>;  // (row pitches)
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kC * L::kKP * 2;
  static constexpr int kV = kK + kC * L::kKP * 2;
  static constexpr int kA = kV + kC * L::kVP * 2;
  static constexpr int kAnchor = kA + kC * L::kAP * 2;  // fp32 [K]
  static constexpr int kLast = kAnchor + K * 4;          // fp32 [K]: b at the chunk's last token
  static constexpr int kExact = kLast + K * 4;           // int: the chunk takes the exact path
  static constexpr int kStage = kExact + 16;
  static constexpr int kG = 2 * kStage;                  // gate slots, fp32 [kC][kBP]
  static constexpr int kGSlot = kC * L::kBP * 4;
  static constexpr int kSt = kG + 2 * kGSlot;
  static constexpr int kBytes = kSt + V * L::kKP * 2;
  static_assert(kStage % 16 == 0 && kBytes <= 227 * 1024, "layout");
};

// The producer's cumulative sums over a chunk's tokens of one key column's gates, in place and
// in log2 units, by one thread: kGlaStateThreads / K runs of tokens, each summed from zero and
// offset by the earlier runs' totals (added left to right), the order in which pass 1
// (CumsumLog2Rows) sums a 64-column block, so that its states stay bit-identical to pass 2's.
// Writes the column's anchor (DecayAnchor) and last decay; returns whether its decays span more
// than 2 kAnchorSpan (the chunk then takes the exact path).
template <int K, int V>
__device__ __forceinline__ bool WsCumsumColumn(float* b, float* anchor, float* last, int d) {
  using L = Layout<K, V>;
  constexpr int kParts = kGlaStateThreads / K, kRows = kC / kParts;
  float* col = b + d;
  float off = 0.f, first = 0.f;
#pragma unroll
  for (int p = 0; p < kParts; ++p) {
    float run = 0.f;
#pragma unroll 8
    for (int r = 0; r < kRows; ++r) {
      float* x = col + (p * kRows + r) * L::kBP;
      run += *x * kLog2e;
      *x = run + off;
      if (p == 0 && r == 0) first = run;
    }
    off += run;
  }
  const float mid = col[(kC / 2 - 1) * L::kBP], lst = col[(kC - 1) * L::kBP];
  anchor[d] = DecayAnchor(first, mid, lst);
  last[d] = lst;
  return first - lst > 2 * kAnchorSpan;
}

// The segment a pass-2 block walks (both of its roles compute it): the sequence, and the
// chunks [c_begin, c_end).
struct WsBlock {
  SegmentOfBlock sb;
  SeqSpan sq;
  int c_begin, c_end;
};
__device__ __forceinline__ WsBlock WsBlockOf(const KernelArgs& args) {
  const SegmentOfBlock sb = SegmentOf(args, blockIdx.x);
  const SeqSpan sq = SeqOf(args.varlen, sb.bh, args.heads, args.tokens, kC);
  const int c_begin = sb.seg * args.seg_chunks;
  return {sb, sq, c_begin, min(c_begin + args.seg_chunks, static_cast<int>(sq.nchunks))};
}

template <int K, int V, int KF, int VF>
__global__ void __launch_bounds__(kWsThreads, 1) GlaChunkKernel(const KernelArgs args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // its ~224 KB of shared memory need sm_90; built only so that any arch list compiles
#else
  using L = Layout<K, V>;
  using W = WsLayout<K, V>;
  extern __shared__ __align__(128) char smem[];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g8 = lane / 4, t4 = lane % 4;
  constexpr bool kSliced = K != KF || V != VF;
  constexpr bool kSplitK = K != KF;
  const int slice = kSliced ? static_cast<int>(blockIdx.y) : 0;
  const int koff = kSliced ? (slice / (VF / V)) * K : 0;
  const int voff = kSliced ? (slice % (VF / V)) * V : 0;

  // (The warpgroup index through a shuffle: warp-uniform, so that ptxas sees the roles' branches.)
  const int warpgroup = __shfl_sync(0xffffffffu, tid / 128, 0);
  if (warpgroup == kWsConsumers / 128) {
    // ---------------- producer ----------------
    const WsBlock blk = WsBlockOf(args);
    const int64_t H = args.heads;
    const SeqSpan sq = blk.sq;
    const int64_t T = sq.tokens;
    const int c_begin = blk.c_begin, c_end = blk.c_end;
    auto stage_of = [&](int c) { return smem + ((c - c_begin) & 1) * W::kStage; };
    auto gslot_of = [&](int c) {
      return reinterpret_cast<float*>(smem + W::kG + ((c - c_begin) & 1) * W::kGSlot);
    };
    const int ptid = tid - kWsConsumers, pwarp = ptid / 32;
    const char* qg = TokenBytes(args.q, args.qs, sq.row, H, sq.token0, koff);
    const char* kg = TokenBytes(args.k, args.ks, sq.row, H, sq.token0, koff);
    const char* vg = TokenBytes(args.v, args.vs, sq.row, H, sq.token0, voff);
    const char* gg = TokenBytes(args.g, args.gs, sq.row, H, sq.token0, koff);
    const int64_t q_pitch = args.qs.token * 2, k_pitch = args.ks.token * 2;
    const int64_t v_pitch = args.vs.token * 2, g_pitch = args.gs.token * 4;
    // Each load is one commit group, also when there is nothing to load (c >= c_end), so that
    // the waits below count the same groups in every iteration.
    auto load_gates = [&](int c) {
      if (c < c_end) {
        const int64_t t0 = static_cast<int64_t>(c) * kC;
        CopyTile<K, 4, L::kBP, kWsProducers>(reinterpret_cast<char*>(gslot_of(c)),
                                             gg + t0 * g_pitch, g_pitch, T - t0, ptid);
      }
      CpAsyncCommit();
    };
    auto load_qkv = [&](int c) {
      if (c < c_end) {
        char* base = stage_of(c);
        const int64_t t0 = static_cast<int64_t>(c) * kC, rows = T - t0;
        CopyTile<K, 2, L::kKP, kWsProducers>(base + W::kQ, qg + t0 * q_pitch, q_pitch, rows, ptid);
        CopyTile<K, 2, L::kKP, kWsProducers>(base + W::kK, kg + t0 * k_pitch, k_pitch, rows, ptid);
        CopyTile<V, 2, L::kVP, kWsProducers>(base + W::kV, vg + t0 * v_pitch, v_pitch, rows, ptid);
      }
      CpAsyncCommit();
    };
    // Commit order: G(c0), Q(c0), G(c0 + 1), then per iteration c: Q(c + 1), G(c + 2). At the
    // top of iteration c the groups after G(c) are Q(c) and G(c + 1) (wait 2), after Q(c) one.
    load_gates(c_begin);
    load_qkv(c_begin);
    load_gates(c_begin + 1);
    for (int c = c_begin; c < c_end; ++c) {
      const int s = (c - c_begin) & 1;
      char* base = stage_of(c);
      __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(base + W::kQ);
      __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(base + W::kK);
      __nv_bfloat16* as = reinterpret_cast<__nv_bfloat16*>(base + W::kA);
      float* anchor = reinterpret_cast<float*>(base + W::kAnchor);
      float* last = reinterpret_cast<float*>(base + W::kLast);
      float* bs = gslot_of(c);
      CpAsyncWait<2>();
      BarSync(kBarProducer, kWsProducers);  // G(c) landed for every producer thread
      bool wide = false;
      if (ptid < K) wide = WsCumsumColumn<K, V>(bs, anchor, last, ptid);
      const bool exact = BarOr(kBarProducer, kWsProducers, wide);
      if (ptid == 0) *reinterpret_cast<int*>(base + W::kExact) = exact ? 1 : 0;
      CpAsyncWait<1>();
      BarSync(kBarProducer, kWsProducers);  // Q(c) landed
      if (exact) {
        // Scores with per-tile references from the unscaled q and k (as GlaChunkKernel's exact
        // path), then k scaled against the anchors and q to q 2^b, in place.
        for (int idx = pwarp; idx < 20; idx += kWsProducers / 32) {
          const int i = idx < 2 ? 0 : idx < 6 ? 1 : idx < 12 ? 2 : 3;
          const int ct = idx - i * (i + 1);
          const int r0 = 16 * i + g8, r1 = r0 + 8, sc = 8 * ct + g8, ref = 8 * ct + 7;
          float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll kWsUnroll
          for (int kk = 0; kk < K / 16; ++kk) {
            const int d0 = 16 * kk + 2 * t4, d1 = d0 + 8;
            const float2 rf0 = *reinterpret_cast<const float2*>(bs + ref * L::kBP + d0);
            const float2 rf1 = *reinterpret_cast<const float2*>(bs + ref * L::kBP + d1);
            const uint32_t a[4] = {
                ScaledQ<K, V>(qs, bs, r0, d0, rf0), ScaledQ<K, V>(qs, bs, r1, d0, rf0),
                ScaledQ<K, V>(qs, bs, r0, d1, rf1), ScaledQ<K, V>(qs, bs, r1, d1, rf1)};
            Mma(acc, a, ScaledK<K, V>(ks, bs, sc, d0, rf0), ScaledK<K, V>(ks, bs, sc, d1, rf1));
          }
          StoreCausalScores<L::kAP>(as, r0, 8 * ct + 2 * t4, acc);
        }
        BarSync(kBarProducer, kWsProducers);  // unscaled q, k read
        ScaleChunk<K, L::kKP, L::kBP, kWsProducers, kWsUnroll>(qs, ks, bs, ptid, false);
        // q <- q 2^(b - 0), the consumers' A operand (ScaledQ against a zero reference).
        constexpr int kPairs = K / 2;
        const float2 zero = make_float2(0.f, 0.f);
        for (int e = ptid; e < kC * kPairs; e += kWsProducers) {
          const int r = e / kPairs, d = 2 * (e % kPairs);
          const uint32_t x = ScaledQ<K, V>(qs, bs, r, d, zero);
          *reinterpret_cast<uint32_t*>(qs + r * L::kKP + d) = x;
        }
      } else {
        ScaleChunk<K, L::kKP, L::kBP, kWsProducers, kWsUnroll>(qs, ks, bs, ptid, true);
        BarSync(kBarProducer, kWsProducers);  // q, k scaled
        for (int idx = pwarp; idx < 10; idx += kWsProducers / 32) {
          const int i = idx < 1 ? 0 : idx < 3 ? 1 : idx < 6 ? 2 : 3;
          const int j = idx - i * (i + 1) / 2;
          float acc0[4] = {0.f, 0.f, 0.f, 0.f}, acc1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll kWsUnroll
          for (int kk = 0; kk < K / 16; ++kk) {
            uint32_t a[4], b[4];
            frag::LoadA(a, qs, L::kKP, 16 * i, 16 * kk, lane);
            frag::LoadBT2(b, ks, L::kKP, 16 * kk, 16 * j, lane);
            Mma(acc0, a, b[0], b[1]);
            Mma(acc1, a, b[2], b[3]);
          }
          StoreCausalScores<L::kAP>(as, 16 * i + g8, 16 * j + 2 * t4, acc0);
          StoreCausalScores<L::kAP>(as, 16 * i + g8, 16 * j + 8 + 2 * t4, acc1);
        }
      }
      BarArrive(kBarReady0 + s, kWsThreads);  // stage s prepared
      // Stage s ^ 1 takes chunk c + 1 once the consumers are done with chunk c - 1 in it; gate
      // slot s takes chunk c + 2 once every producer thread is done with chunk c's gates.
      if (c > c_begin && c + 1 < c_end) {
        BarSync(kBarFree0 + (s ^ 1), kWsThreads);
      } else {
        BarSync(kBarProducer, kWsProducers);
      }
      load_qkv(c + 1);
      load_gates(c + 2);
    }
    CpAsyncWait<0>();
  } else {
    // ---------------- consumers ----------------
    const WsBlock blk = WsBlockOf(args);
    const SegmentOfBlock sb = blk.sb;
    const int64_t bh = sb.bh;
    const int seg = sb.seg;
    const int64_t H = args.heads;
    const SeqSpan sq = blk.sq;
    const int64_t T = sq.tokens;
    const int nchunks = static_cast<int>(sq.nchunks);
    const int c_begin = blk.c_begin, c_end = blk.c_end;
    auto stage_of = [&](int c) { return smem + ((c - c_begin) & 1) * W::kStage; };
    constexpr int kRB = K / 16, kCS = 8 / kRB, kSN = V / kCS / 8;
    static_assert(kRB * kCS == 8 && kSN % 2 == 0, "unsupported head dims");
    const int rb = warp % kRB, cs = warp / kRB;
    const int d_lo = 16 * rb + g8, d_hi = d_lo + 8;
    const int col0 = cs * (V / kCS) + 2 * t4;
    const int state_lo = (koff + d_lo) * VF + voff + col0;
    float S[kSN][4];
    {
      const float* s0 = args.initial_state != nullptr ? args.initial_state + bh * KF * VF : nullptr;
#pragma unroll
      for (int j = 0; j < kSN; ++j) {
        float2 lo = make_float2(0.f, 0.f), hi = lo;
        if (s0 != nullptr) {
          lo = *reinterpret_cast<const float2*>(s0 + state_lo + 8 * j);
          hi = *reinterpret_cast<const float2*>(s0 + state_lo + 8 * VF + 8 * j);
        }
        S[j][0] = lo.x;
        S[j][1] = lo.y;
        S[j][2] = hi.x;
        S[j][3] = hi.y;
      }
      // The segment's start state: the earlier segments' pieces (pass 1), in order,
      // S <- 2^decay S + piece. (The producer prepares the first chunk meanwhile.)
      constexpr int kKeyBlocks = GlaStateKeyBlocks(K);
      const int kb = d_lo / kGlaStateKeyRows, prow = d_lo % kGlaStateKeyRows;
      const bool packed = args.varlen.cu_seqlens != nullptr;
      const int64_t segs = args.nseg - 1;
      // (One loop over the pieces of segments 0 .. seg - 1: nested loops cost the main loop
      // registers.)
      const int64_t sid0 = packed ? sb.slot - seg : bh * segs;
      auto parts_of = [&](int u) {
        return args.p1_parts == 1 ? 1 : *PartsAt(args, sid0 + u, kb, kKeyBlocks, slice);
      };
      // Pass 2 may run before pass 1 ends (LaunchDims): wait for it, and its pieces, here.
      // Every launch with pass 1 has blocks with seg > 0 (fixed-length: nseg > 1 in every
      // sequence; packed: some sequence has two segments), and they must wait unconditionally:
      // that is what keeps pass 2 from ending before pass 1, for all later work on the stream.
      if (seg > 0) WaitForPrimaryGrid();
      int u = 0, part = 0, parts = seg > 0 ? parts_of(0) : 0;
      while (u < seg) {
        const float* piece = PieceAt<V>(args, sid0 + u, kb, part, kKeyBlocks, slice);
        const float* local = piece + prow * V + col0;
        const float* decay = piece + kGlaStateKeyRows * V + prow;
        const float e_lo = Exp2(decay[0]), e_hi = Exp2(decay[8]);
#pragma unroll
        for (int j = 0; j < kSN; ++j) {
          const float2 lo = *reinterpret_cast<const float2*>(local + 8 * j);
          const float2 hi = *reinterpret_cast<const float2*>(local + 8 * V + 8 * j);
          S[j][0] = e_lo * S[j][0] + lo.x;
          S[j][1] = e_lo * S[j][1] + lo.y;
          S[j][2] = e_hi * S[j][2] + hi.x;
          S[j][3] = e_hi * S[j][3] + hi.y;
        }
        if (++part == parts) {
          part = 0;
          if (++u < seg) parts = parts_of(u);
        }
      }
    }
    __nv_bfloat16* st = reinterpret_cast<__nv_bfloat16*>(smem + W::kSt);
    __nv_bfloat16* const st_lane = st + (cs * (V / kCS) + 8 * (lane >> 4) + (lane & 7)) * L::kKP +
                                   16 * rb + 8 * ((lane >> 3) & 1);
    auto write_state_bf16 = [&](float m_lo, float m_hi) {
#pragma unroll
      for (int jp = 0; jp < kSN / 2; ++jp) {
        const uint32_t r[4] = {PackBf16(S[2 * jp][0] * m_lo, S[2 * jp][1] * m_lo),
                               PackBf16(S[2 * jp][2] * m_hi, S[2 * jp][3] * m_hi),
                               PackBf16(S[2 * jp + 1][0] * m_lo, S[2 * jp + 1][1] * m_lo),
                               PackBf16(S[2 * jp + 1][2] * m_hi, S[2 * jp + 1][3] * m_hi)};
        StMatrixX4Trans(st_lane + 16 * jp * L::kKP, r);
      }
    };
    auto write_state_f32 = [&](float* out) {
#pragma unroll
      for (int j = 0; j < kSN; ++j) {
        *reinterpret_cast<float2*>(out + state_lo + 8 * j) = make_float2(S[j][0], S[j][1]);
        *reinterpret_cast<float2*>(out + state_lo + 8 * VF + 8 * j) =
            make_float2(S[j][2], S[j][3]);
      }
    };
    float* const chunk_states =
        args.chunk_states == nullptr ? nullptr : args.chunk_states + sq.state_slot * KF * VF;

    for (int c = c_begin; c < c_end; ++c) {
      const int s = (c - c_begin) & 1;
      char* base = stage_of(c);
      if (chunk_states != nullptr) {
        write_state_f32(chunk_states + static_cast<int64_t>(c) * KF * VF);
      }
      BarSync(kBarReady0 + s, kWsThreads);  // stage s prepared; every consumer done with c - 1
      __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(base + W::kQ);
      const __nv_bfloat16* ks = reinterpret_cast<const __nv_bfloat16*>(base + W::kK);
      const __nv_bfloat16* vs = reinterpret_cast<const __nv_bfloat16*>(base + W::kV);
      const __nv_bfloat16* as = reinterpret_cast<const __nv_bfloat16*>(base + W::kA);
      const float* anchor = reinterpret_cast<const float*>(base + W::kAnchor);
      const float* last = reinterpret_cast<const float*>(base + W::kLast);
      const bool exact = *reinterpret_cast<const int*>(base + W::kExact) != 0;
      const float a_lo = anchor[d_lo], a_hi = anchor[d_hi];
      const float bc_lo = last[d_lo], bc_hi = last[d_hi];
      // St: the chunk-start state, times 2^a on the anchored path (q there is q 2^(b - a)); on
      // the exact path q is q 2^b and St the state itself.
      if (exact) {
        write_state_bf16(1.f, 1.f);
      } else {
        write_state_bf16(Exp2(a_lo), Exp2(a_hi));
      }
      BarSync(kBarConsumers, kWsConsumers);  // St written
      UpdateChunkState<kSN, L::kKP, L::kVP>(S, ks, vs, 16 * rb, Exp2(bc_lo), Exp2(bc_hi),
                                            Exp2(bc_lo - a_lo), Exp2(bc_hi - a_hi),
                                            cs * (V / kCS), lane);
      const int64_t t0 = static_cast<int64_t>(c) * kC;
      {
        constexpr int kNT = V / 16;
        const int i = warp % 4, vh = warp / 4;
        const int r0 = 16 * i + g8, r1 = r0 + 8;
        const int n_base = vh * (V / 2);
        float acc[kNT][4];
#pragma unroll
        for (int j = 0; j < kNT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < K / 16; ++kk) {
          uint32_t a[4];
          frag::LoadA(a, qs, L::kKP, 16 * i, 16 * kk, lane);
#pragma unroll
          for (int jp = 0; jp < kNT / 2; ++jp) {
            uint32_t b[4];
            frag::LoadBT2(b, st, L::kKP, 16 * kk, n_base + 16 * jp, lane);
            Mma(acc[2 * jp], a, b[0], b[1]);
            Mma(acc[2 * jp + 1], a, b[2], b[3]);
          }
        }
        for (int jj = 0; jj <= i; ++jj) {
          uint32_t a[4];
          frag::LoadA(a, as, L::kAP, 16 * i, 16 * jj, lane);
#pragma unroll
          for (int jp = 0; jp < kNT / 2; ++jp) {
            uint32_t b[4];
            frag::LoadB2(b, vs, L::kVP, 16 * jj, n_base + 16 * jp, lane);
            Mma(acc[2 * jp], a, b[0], b[1]);
            Mma(acc[2 * jp + 1], a, b[2], b[3]);
          }
        }
        if constexpr (kSplitK) {
          float* ow = args.o_accum + (sq.row * args.tokens + sq.token0 + t0) * VF + voff + n_base +
                      2 * t4;
#pragma unroll
          for (int j = 0; j < kNT; ++j) {
            if (t0 + r0 < T) {
              atomicAdd(ow + r0 * VF + 8 * j, acc[j][0] * args.scale);
              atomicAdd(ow + r0 * VF + 8 * j + 1, acc[j][1] * args.scale);
            }
            if (t0 + r1 < T) {
              atomicAdd(ow + r1 * VF + 8 * j, acc[j][2] * args.scale);
              atomicAdd(ow + r1 * VF + 8 * j + 1, acc[j][3] * args.scale);
            }
          }
        } else if constexpr (K >= V) {
          __nv_bfloat16* const ost = qs + 16 * i * L::kKP;
          BarSync(kBarPair0 + i, 64);  // both warps' reads of these q rows are done
#pragma unroll
          for (int j = 0; j < kNT; ++j) {
            const int col = n_base + 8 * j + 2 * t4;
            *reinterpret_cast<uint32_t*>(ost + g8 * L::kKP + col) =
                PackBf16(acc[j][0] * args.scale, acc[j][1] * args.scale);
            *reinterpret_cast<uint32_t*>(ost + (g8 + 8) * L::kKP + col) =
                PackBf16(acc[j][2] * args.scale, acc[j][3] * args.scale);
          }
          BarSync(kBarPair0 + i, 64);  // the pair's 16 rows are staged
          const int64_t o_row = args.os.token;
          __nv_bfloat16* og = args.o + SeqOffset(args.os, sq.row, H) +
                              (sq.token0 + t0 + 16 * i) * o_row + voff;
          constexpr int kRowVecs = V / 8;
#pragma unroll
          for (int n = 0; n < 16 * kRowVecs / 64; ++n) {
            const int idx = vh * 32 + lane + 64 * n, row = idx / kRowVecs, cv = idx % kRowVecs;
            if (t0 + 16 * i + row < T) {
              *reinterpret_cast<uint4*>(og + row * o_row + 8 * cv) =
                  *reinterpret_cast<const uint4*>(ost + row * L::kKP + 8 * cv);
            }
          }
        } else {
          const int64_t o_row = args.os.token;
          __nv_bfloat16* og =
              args.o + SeqOffset(args.os, sq.row, H) + (sq.token0 + t0) * o_row + voff;
#pragma unroll
          for (int j = 0; j < kNT; ++j) {
            const int col = n_base + 8 * j + 2 * t4;
            if (t0 + r0 < T) {
              *reinterpret_cast<uint32_t*>(og + r0 * o_row + col) =
                  PackBf16(acc[j][0] * args.scale, acc[j][1] * args.scale);
            }
            if (t0 + r1 < T) {
              *reinterpret_cast<uint32_t*>(og + r1 * o_row + col) =
                  PackBf16(acc[j][2] * args.scale, acc[j][3] * args.scale);
            }
          }
        }
      }
      // Stage s is free for chunk c + 2 (the producer waits for this only while one follows).
      if (c + 2 < c_end) BarArrive(kBarFree0 + s, kWsThreads);
    }
    if (seg == sb.nseg - 1) write_state_f32(args.final_state + bh * KF * VF);
    if (chunk_states != nullptr && seg == sb.nseg - 1) {
      write_state_f32(chunk_states + static_cast<int64_t>(nchunks) * KF * VF);
    }
  }
#endif
}

// In-place cumulative sum in log2 units of a [kC][kGlaStateKeyRows] gate tile (row pitch kBP),
// in kParts runs of kC / kParts tokens per column: the same operations, in the same order, as
// WsCumsumColumn for a slice of 256 / kParts key columns. Threads tid >= kParts * 64 only wait.
template <int kParts, int kBP>
__device__ __forceinline__ void CumsumLog2Rows(float* b, float* tot, int tid) {
  constexpr int kR = kGlaStateKeyRows, kRows = kC / kParts;
  static_assert(kParts * kR <= kThreads, "too many runs for the block");
  const int d = tid % kR, part = tid / kR;
  const bool active = part < kParts;
  float x[kRows];
  if (active) {
    float run = 0.f;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      run += b[(part * kRows + r) * kBP + d] * kLog2e;
      x[r] = run;
    }
    tot[part * kR + d] = run;
  }
  __syncthreads();
  if (active) {
    float off = 0.f;
    for (int p = 0; p < part; ++p) off += tot[p * kR + d];
#pragma unroll
    for (int r = 0; r < kRows; ++r) b[(part * kRows + r) * kBP + d] = x[r] + off;
  }
  __syncthreads();
}

// Pass 1, state only: states from zero and log2 decays of segments, for the kGlaStateKeyRows key
// rows of one key block of a slice (gla_state_pass.h); blockIdx.y = slice as in GlaChunkKernel.
// Fixed-length, block x takes an equal range of the steps (key block x sequence, segment, chunk)
// and writes a piece wherever a segment (or the range) ends; packed, block x = (segment block of
// SegmentOf) * (K / 64) + key block, one whole segment. The state update is GlaChunkKernel's
// (UpdateChunkState on k scaled by ScaleChunk against the same anchors), per 16 x 8 accumulator
// tile the same mma.sync sequence on the same fragments, and the cumulative decays are summed in
// the same order (CumsumLog2Rows), with a layout of ~90 KB instead of pass 2's ~224 KB.
template <int K, int V, int KF, int VF>
__global__ void __launch_bounds__(kThreads, 2) GlaStatePassKernel(const KernelArgs args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // cp.async and bf16 mma.sync need sm_80; built only so that any arch list compiles
#else
  // Pass 2 may launch once every pass-1 block runs (LaunchDims): its blocks take multiprocessors
  // as pass-1 blocks leave them and prepare their first chunk while the rest finish.
  LaunchDependentGrid();
  using L = GlaStateLayout<V>;
  constexpr int kR = kGlaStateKeyRows;
  constexpr int kKeyBlocks = GlaStateKeyBlocks(K);
  static_assert(kKeyBlocks * kR == K && kThreads == kGlaStateThreads, "unsupported head dims");
  extern __shared__ __align__(128) char smem[];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int t4 = lane % 4;
  constexpr bool kSliced = K != KF || V != VF;
  const int slice = kSliced ? static_cast<int>(blockIdx.y) : 0;
  const int koff = kSliced ? (slice / (VF / V)) * K : 0;
  const int voff = kSliced ? (slice % (VF / V)) * V : 0;
  const int64_t H = args.heads;
  const bool packed = args.varlen.cu_seqlens != nullptr;
  const int64_t L_c = args.seg_chunks, segs = args.nseg - 1;

  // This block's steps [x0, x1); packed, the chunks of one segment from c_base.
  int64_t x0 = 0, x1 = 0, c_base = 0;
  SegmentOfBlock psb{};
  int pkb = 0;
  if (packed) {
    const GlaStateBlock blk = GlaStateBlockOf(blockIdx.x, kKeyBlocks);
    psb = SegmentOf(args, blk.segment_block);
    if (psb.seg == psb.nseg - 1) return;  // the last segment's state is pass 2's
    pkb = blk.key_block;
    const SeqSpan sq = SeqOf(args.varlen, psb.bh, H, args.tokens, kC);
    c_base = psb.seg * L_c;
    x1 = min(c_base + L_c, sq.nchunks) - c_base;
  } else {
    x0 = GlaStepBegin(blockIdx.x, args.p1_steps, args.p1_blocks);
    x1 = GlaStepBegin(blockIdx.x + 1, args.p1_steps, args.p1_blocks);
  }

  // Warp (rb, cs): key rows 16 rb + [0, 16) x value columns cs V/2 + [0, V/2) (gla_state_pass.h).
  constexpr int kSN = V / 16;
  static_assert(kSN % 2 == 0, "unsupported value dim");
  const int cs = warp / 4;
  const GlaStateOwner own = GlaStateOwnerOf(tid, V);
  const int d_lo = own.d_lo, d_hi = own.d_hi;
  float* tot = reinterpret_cast<float*>(smem + L::kTot);
  const int64_t k_pitch = args.ks.token * 2, v_pitch = args.vs.token * 2;
  const int64_t g_pitch = args.gs.token * 4;

  // One piece per iteration: chunks [c_begin, c_end) of key block kb of sequence bh.
  for (int64_t x = x0; x < x1;) {
    int64_t bh = psb.bh, sid = psb.slot, c_begin = c_base, c_end = c_base + x1;
    int kb = pkb, part = 0;
    bool seg_end = false;  // the piece ends its segment (fixed-length: it writes the count)
    if (packed) {
      x = x1;
    } else {
      const int64_t row = x / (segs * L_c), u = x / L_c % segs, cl = x % L_c;
      const int64_t n = min(x1 - x, L_c - cl);
      const GlaStateRow r = GlaStateRowOf(row, args.num_seqs * H);
      bh = r.seq;
      kb = r.key_block;
      sid = bh * segs + u;
      part = static_cast<int>(blockIdx.x - GlaBlockOfStep(x - cl, args.p1_steps, args.p1_blocks));
      c_begin = u * L_c + cl;
      c_end = c_begin + n;
      seg_end = cl + n == L_c;
      x += n;
    }
    const SeqSpan sq = SeqOf(args.varlen, bh, H, args.tokens, kC);
    const int64_t T = sq.tokens;
    const int krow = koff + kR * kb;  // first key column of this piece
    const char* kg = TokenBytes(args.k, args.ks, sq.row, H, sq.token0, krow);
    const char* vg = TokenBytes(args.v, args.vs, sq.row, H, sq.token0, voff);
    const char* gg = TokenBytes(args.g, args.gs, sq.row, H, sq.token0, krow);
    auto load_chunk = [&](int64_t c, int stage) {
      char* base = smem + stage * L::kStage;
      const int64_t t0 = c * kC;
      const int64_t rows = T - t0;
      CopyTile<kR, 2, L::kKP, kThreads>(base + L::kK, kg + t0 * k_pitch, k_pitch, rows, tid);
      CopyTile<V, 2, L::kVP, kThreads>(base + L::kV, vg + t0 * v_pitch, v_pitch, rows, tid);
      CopyTile<kR, 4, L::kBP, kThreads>(base + L::kB, gg + t0 * g_pitch, g_pitch, rows, tid);
      CpAsyncCommit();
    };
    float S[kSN][4];
#pragma unroll
    for (int j = 0; j < kSN; ++j) S[j][0] = S[j][1] = S[j][2] = S[j][3] = 0.f;
    float log_decay_lo = 0.f, log_decay_hi = 0.f;

    load_chunk(c_begin, 0);  // (the previous piece's last barrier passed every read of stage 0)
    for (int64_t c = c_begin; c < c_end; ++c) {
      const int stage = static_cast<int>((c - c_begin) & 1);
      if (c + 1 < c_end) {
        load_chunk(c + 1, stage ^ 1);  // that stage's last readers passed the previous barrier
        CpAsyncWait<1>();
      } else {
        CpAsyncWait<0>();
      }
      __syncthreads();
      char* base = smem + stage * L::kStage;
      __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(base + L::kK);
      const __nv_bfloat16* vs = reinterpret_cast<const __nv_bfloat16*>(base + L::kV);
      float* bs = reinterpret_cast<float*>(base + L::kB);
      CumsumLog2Rows<GlaStateCumsumParts(K), L::kBP>(bs, tot, tid);
      ScaleChunk<kR, L::kKP, L::kBP, kThreads>(nullptr, ks, bs, tid, false);
      __syncthreads();

      // S <- 2^b_C S + 2^(b_C - a) (k 2^(a - b))^T v, as GlaChunkKernel's state update.
      const float bc_lo = bs[(kC - 1) * L::kBP + d_lo], bc_hi = bs[(kC - 1) * L::kBP + d_hi];
      const float a_lo = AnchorOf<L::kBP>(bs, d_lo), a_hi = AnchorOf<L::kBP>(bs, d_hi);
      log_decay_lo += bc_lo;
      log_decay_hi += bc_hi;
      UpdateChunkState<kSN, L::kKP, L::kVP>(S, ks, vs, 16 * (warp % 4), Exp2(bc_lo), Exp2(bc_hi),
                                            Exp2(bc_lo - a_lo), Exp2(bc_hi - a_hi), cs * (V / 2),
                                            lane);
      __syncthreads();  // every read of this stage and of the totals is done
    }

    float* piece = PieceAt<V>(args, sid, kb, part, kKeyBlocks, slice);
    float* out = piece + d_lo * V + own.col0;
#pragma unroll
    for (int j = 0; j < kSN; ++j) {
      *reinterpret_cast<float2*>(out + 8 * j) = make_float2(S[j][0], S[j][1]);
      *reinterpret_cast<float2*>(out + 8 * V + 8 * j) = make_float2(S[j][2], S[j][3]);
    }
    if (cs == 0 && t4 == 0) {
      piece[kR * V + d_lo] = log_decay_lo;
      piece[kR * V + d_hi] = log_decay_hi;
    }
    if (tid == 0 && seg_end) {  // the segment's last piece: how many it has
      *PartsAt(args, sid, kb, kKeyBlocks, slice) = part + 1;
    }
  }
#endif
}

// Pass 1's pieces (KernelArgs::pieces) for segments of `seg_chunks` chunks, `nseg` per sequence
// (fixed-length) or as cu_segments says (packed): none when no sequence has two segments.
struct GlaPieces {
  int64_t sids = 0, steps = 0, blocks = 0;  // (KernelArgs's piece_sids, p1_steps, p1_blocks)
  int parts = 1;
  int64_t piece_floats = 0, counts = 0;  // the workspace: the pieces, then piece_parts's ints
};
GlaPieces GlaPiecesOf(const GlaChunkedParams& p, int64_t nseg, int seg_chunks) {
  GlaPieces r;
  const int key_blocks = GlaStateKeyBlocks(GlaSliceDim(p.key_dim));
  const int64_t slices = GlaSlices(p.key_dim) * GlaSlices(p.value_dim);
  if (p.varlen.cu_seqlens != nullptr) {
    if (p.total_segments <= p.batch) return r;
    r.sids = p.total_segments * p.heads;
  } else {
    if (nseg < 2) return r;
    const int64_t bh = p.batch * p.heads;
    r.sids = bh * (nseg - 1);
    const GlaStatePlan plan =
        GlaStatePlanOf(bh * key_blocks, nseg - 1, seg_chunks,
                       static_cast<int64_t>(p.num_sms) * kGlaStateBlocksPerSm);
    r.steps = bh * key_blocks * (nseg - 1) * seg_chunks;
    r.blocks = plan.blocks;
    r.parts = plan.parts;
  }
  r.counts = slices * r.sids * key_blocks;
  r.piece_floats = r.counts * r.parts * GlaPieceFloats(GlaSliceDim(p.value_dim));
  return r;
}

// KF x VF: the head dims; blocks run slices of K x V = GlaSliceDim of them (gla_slices.cuh).
template <int KF, int VF>
cudaError_t LaunchDims(const GlaChunkedParams& p, cudaStream_t stream) {
  constexpr int K = GlaSliceDim(KF), V = GlaSliceDim(VF);
  constexpr int kSlices = GlaSlices(KF) * GlaSlices(VF);
  const int64_t bh = p.batch * p.heads;
  const bool packed = p.varlen.cu_seqlens != nullptr;
  const int nchunks = static_cast<int>((p.tokens + kC - 1) / kC);
  const int seg_chunks =
      p.segment_chunks > 0 ? p.segment_chunks : GlaSegmentChunks(bh * kSlices, p.tokens, p.num_sms);
  // Fixed-length: segments per sequence. Packed: 2 when any sequence has several (pass 1 runs),
  // else 1; the grids cover every segment of every sequence.
  const int nseg =
      packed ? (p.total_segments > p.batch ? 2 : 1) : (nchunks + seg_chunks - 1) / seg_chunks;
  const int64_t blocks_pass2 = packed ? p.total_segments * p.heads : bh * nseg;
  KernelArgs a{};
  a.q = static_cast<const __nv_bfloat16*>(p.q);
  a.k = static_cast<const __nv_bfloat16*>(p.k);
  a.v = static_cast<const __nv_bfloat16*>(p.v);
  a.g = p.g;
  a.initial_state = p.initial_state;
  a.o = static_cast<__nv_bfloat16*>(p.o);
  a.qs = GlaResolveStrides(p.q_strides, p.heads, p.tokens, KF);
  a.ks = GlaResolveStrides(p.k_strides, p.heads, p.tokens, KF);
  a.vs = GlaResolveStrides(p.v_strides, p.heads, p.tokens, VF);
  a.gs = GlaResolveStrides(p.g_strides, p.heads, p.tokens, KF);
  a.os = GlaResolveStrides(p.o_strides, p.heads, p.tokens, VF);
  if (!GlaStridesAligned(p.q, a.qs, 2) || !GlaStridesAligned(p.k, a.ks, 2) ||
      !GlaStridesAligned(p.v, a.vs, 2) || !GlaStridesAligned(p.g, a.gs, 4) ||
      !GlaStridesAligned(p.o, a.os, 2)) {
    return cudaErrorInvalidValue;
  }
  a.heads = p.heads;
  a.final_state = p.final_state;
  a.chunk_states = p.chunk_states;
  a.tokens = p.tokens;
  a.nseg = nseg;
  a.seg_chunks = seg_chunks;
  a.scale = p.scale;
  a.varlen = p.varlen;
  a.cu_segments = p.cu_segments;
  a.num_seqs = p.batch;
  const GlaPieces pieces = GlaPiecesOf(p, nseg, seg_chunks);
  a.piece_sids = pieces.sids;
  a.p1_steps = pieces.steps;
  a.p1_blocks = pieces.blocks;
  a.p1_parts = pieces.parts;
  const int64_t token_rows = GlaTokenRows(packed, p.batch, p.heads);
  if (nseg > 1 || KF != K) {
    if (p.workspace == nullptr) return cudaErrorInvalidValue;
    a.pieces = static_cast<float*>(p.workspace);
    a.piece_parts = reinterpret_cast<int*>(a.pieces + pieces.piece_floats);
    a.o_accum = a.pieces + pieces.piece_floats + pieces.counts;  // (GlaChunkedWorkspaceBytes)
  }
  if constexpr (KF != K) {  // (before pass 1, which pass 2 then follows directly)
    HYB_CUDA_TRY(cudaMemsetAsync(
        a.o_accum, 0, static_cast<size_t>(token_rows * p.tokens * VF) * sizeof(float), stream));
  }
  if (nseg > 1) {
    using SL = GlaStateLayout<V>;
    constexpr int kKeyBlocks = GlaStateKeyBlocks(K);
    HYB_CUDA_TRY(cudaFuncSetAttribute(GlaStatePassKernel<K, V, KF, VF>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, SL::kBytes));
    // All of the unified L1 / shared memory as shared, so that two blocks fit (the layout's point).
    HYB_CUDA_TRY(cudaFuncSetAttribute(GlaStatePassKernel<K, V, KF, VF>,
                                      cudaFuncAttributePreferredSharedMemoryCarveout,
                                      cudaSharedmemCarveoutMaxShared));
    const int64_t grid1 = packed ? p.total_segments * p.heads * kKeyBlocks : pieces.blocks;
    GlaStatePassKernel<K, V, KF, VF>
        <<<dim3(static_cast<unsigned>(grid1), kSlices), kThreads, SL::kBytes, stream>>>(a);
    HYB_CUDA_TRY(cudaGetLastError());
  }
  using WL = WsLayout<K, V>;
  HYB_CUDA_TRY(cudaFuncSetAttribute(GlaChunkKernel<K, V, KF, VF>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, WL::kBytes));
  // Programmatic dependent launch after pass 1: pass-2 blocks start as pass-1 blocks leave the
  // multiprocessors (every pass-1 block lets it launch as it starts), and only consumers of
  // segments past the first wait for pass 1 (griddepcontrol.wait) before reading its pieces;
  // the launch gap and the first chunk's loads, sums and scores overlap pass 1's end (H200,
  // T = 32K: -6 us, 8K: -8 us; BENCHMARKS.md "Session 21"). Pass 2 cannot end before pass 1
  // does, so the stream's later work still sees both. Without pass 1 it launches as usual.
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(blocks_pass2), kSlices);
  cfg.blockDim = dim3(kWsThreads);
  cfg.dynamicSmemBytes = WL::kBytes;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = nseg > 1 ? 1 : 0;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  HYB_CUDA_TRY(cudaLaunchKernelEx(&cfg, GlaChunkKernel<K, V, KF, VF>, a));
  if constexpr (KF != K) {
    return GlaStoreAccumulated(a.o_accum, a.o, a.os, token_rows, p.heads, p.tokens, VF, stream);
  }
  return cudaSuccess;
}

}  // namespace

GlaStrides GlaResolveStrides(GlaStrides s, int64_t heads, int64_t tokens, int64_t dim) {
  if (s.batch == 0 && s.head == 0 && s.token == 0) {
    s.token = dim;
    s.head = tokens * dim;
    s.batch = heads * tokens * dim;
  }
  return s;
}

bool GlaStridesAligned(const void* ptr, const GlaStrides& s, int elem_bytes) {
  const int64_t vec = 16 / elem_bytes;  // elements per 16-byte vector
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && s.batch % vec == 0 && s.head % vec == 0 &&
         s.token % vec == 0;
}

bool GlaChunkedSupportsDims(int key_dim, int value_dim) {
  auto ok = [](int d) { return d == 64 || d == 128 || d == 256; };
  return ok(key_dim) && ok(value_dim);
}

// Cost of a chunk step of pass 1 (GlaStatePassKernel), in percent of a chunk step of pass 2
// (GlaChunkKernel, one block per multiprocessor), for a wave of pass-1 blocks: kGlaStateBlocksPerSm
// blocks of 64 key rows on every multiprocessor. Such a wave step moves about what a pass-2 step
// does per multiprocessor (2 x 40 KB of k, v and g against ~96 KB of q, k, v, g and o) and does
// about a fifth of its math. Estimated at 35 from the layouts; measured on the H200 (T = 32K, 16
// heads, BENCHMARKS.md "Session 15") at ~46 (3.2 us against 6.9 us) once pass 2 scaled q and k
// once per chunk. Both values pick the same segment lengths at every shape of
// CudaGlaChunkedTest.SegmentChoice, so the constant stays.
constexpr int kGlaStateStepPercent = 35;
// Pass-1 key blocks per (segment, slice) (key dims of 128 and 256; 64 has one, which the model
// does not distinguish).
constexpr int kGlaStateKeyBlocksModel = GlaStateKeyBlocks(128);

int GlaSegmentChunks(int64_t batch_heads, int64_t tokens, int num_sms) {
  const int64_t nchunks = std::max<int64_t>(1, (tokens + kC - 1) / kC);
  if (batch_heads >= num_sms) return static_cast<int>(nchunks);
  // Pass 2's blocks hold one multiprocessor each (shared memory), so its time goes as waves x
  // chunks per segment; pass 1 runs kGlaStateKeyBlocksModel blocks per segment but all but the
  // last of each sequence, kGlaStateBlocksPerSm per multiprocessor, each chunk step costing
  // kGlaStateStepPercent of a pass-2 step. In percent of a pass-2 step: one pass over whole
  // sequences, or pass 1 plus pass 2 over segments of `per` chunks, per >= 4. The fewest segments
  // within 4% of the cheapest count, split evenly (so a segment may have 3 chunks: 6 -> 2 x 3).
  // Whole sequences win while batch x heads is near the multiprocessor count (T = 4K, 8 x 16
  // heads: 64 steps against 75 split in two).
  const auto waves = [](int64_t blocks, int64_t per_wave) {
    return (blocks + per_wave - 1) / per_wave;
  };
  const int64_t pass1_wave = static_cast<int64_t>(num_sms) * kGlaStateBlocksPerSm;
  const auto cost = [&](int64_t per) {
    const int64_t seg = (nchunks + per - 1) / per;
    if (seg < 2) return waves(batch_heads, num_sms) * nchunks * 100;
    return waves(batch_heads * seg, num_sms) * per * 100 +
           waves(batch_heads * (seg - 1) * kGlaStateKeyBlocksModel, pass1_wave) * per *
               kGlaStateStepPercent;
  };
  int64_t least = cost(nchunks);
  for (int64_t per = 4; per < nchunks; ++per) least = std::min(least, cost(per));
  int64_t per = nchunks;
  while (per > 4 && 100 * cost(per) > 104 * least) --per;
  // That many segments, of equal lengths: a shorter last segment would shorten no pass-2 block
  // but the last, while every other one takes the longer length (T = 32K: 8 segments of 64, not
  // 7 of 65 and one of 57: -2 us at T = 32K, -7 us at 8K x 4 on the H200, BENCHMARKS.md
  // "Session 21").
  const int64_t segments = (nchunks + per - 1) / per;
  return static_cast<int>((nchunks + segments - 1) / segments);
}

std::vector<int64_t> VarlenChunks(const std::vector<int64_t>& cu_seqlens) {
  std::vector<int64_t> cu_chunks(cu_seqlens.empty() ? 1 : cu_seqlens.size(), 0);
  for (size_t n = 1; n < cu_seqlens.size(); ++n) {
    cu_chunks[n] = cu_chunks[n - 1] + (cu_seqlens[n] - cu_seqlens[n - 1] + kC - 1) / kC;
  }
  return cu_chunks;
}

int GlaVarlenSegmentChunks(int64_t heads, const std::vector<int64_t>& cu_chunks, int num_sms) {
  int64_t longest = 1;
  for (size_t n = 1; n < cu_chunks.size(); ++n) {
    longest = std::max(longest, cu_chunks[n] - cu_chunks[n - 1]);
  }
  const int64_t total = cu_chunks.back() * heads;
  const int64_t want = 4 * static_cast<int64_t>(num_sms);
  const int64_t per = std::max<int64_t>(4, (total + want - 1) / want);
  return static_cast<int>(std::min(per, longest));
}

std::vector<int64_t> GlaVarlenSegments(const std::vector<int64_t>& cu_chunks, int segment_chunks) {
  std::vector<int64_t> cu_segments(cu_chunks.size(), 0);
  for (size_t n = 1; n < cu_chunks.size(); ++n) {
    const int64_t chunks = cu_chunks[n] - cu_chunks[n - 1];
    cu_segments[n] =
        cu_segments[n - 1] + std::max<int64_t>(1, (chunks + segment_chunks - 1) / segment_chunks);
  }
  return cu_segments;
}

size_t GlaChunkedWorkspaceBytes(const GlaChunkedParams& p) {
  // [pass 1's pieces (GlaPiecesOf)][K = 256: o in fp32, rows x T x V]
  const bool packed = p.varlen.cu_seqlens != nullptr;
  int64_t nseg = 0;
  int seg_chunks = p.segment_chunks;
  if (!packed) {
    const int64_t bh = p.batch * p.heads;
    const int64_t nchunks = (p.tokens + kC - 1) / kC;
    const int64_t slices = GlaSlices(p.key_dim) * GlaSlices(p.value_dim);
    if (seg_chunks <= 0) seg_chunks = GlaSegmentChunks(bh * slices, p.tokens, p.num_sms);
    nseg = (nchunks + seg_chunks - 1) / seg_chunks;
  }
  const GlaPieces pieces = GlaPiecesOf(p, nseg, seg_chunks);
  int64_t floats = pieces.piece_floats + pieces.counts;
  if (GlaSlices(p.key_dim) > 1) {
    floats += GlaTokenRows(packed, p.batch, p.heads) * p.tokens * p.value_dim;
  }
  return static_cast<size_t>(floats) * sizeof(float);
}

cudaError_t LaunchGlaChunked(const GlaChunkedParams& p, cudaStream_t stream) {
  if (!GlaChunkedSupportsDims(p.key_dim, p.value_dim)) return cudaErrorInvalidValue;
  if (p.batch * p.heads == 0) return cudaSuccess;
  if (p.varlen.cu_seqlens != nullptr &&
      (p.varlen.cu_chunks == nullptr || p.cu_segments == nullptr || p.segment_chunks <= 0 ||
       p.total_segments < p.batch)) {
    return cudaErrorInvalidValue;
  }
  // (Packed, the chunk-state layout with no tokens is the same [N, H, 1, K, V].)
  if (p.tokens == 0) {
    // No tokens: the final state (and the one chunk state) is the initial one.
    const size_t bytes = static_cast<size_t>(p.batch * p.heads * p.key_dim * p.value_dim) * 4;
    for (float* out : {p.final_state, p.chunk_states}) {
      if (out == nullptr) continue;
      if (p.initial_state != nullptr) {
        HYB_CUDA_TRY(
            cudaMemcpyAsync(out, p.initial_state, bytes, cudaMemcpyDeviceToDevice, stream));
      } else {
        HYB_CUDA_TRY(cudaMemsetAsync(out, 0, bytes, stream));
      }
    }
    return cudaSuccess;
  }
  return GlaDispatchDims(p.key_dim, p.value_dim, [&](auto kf, auto vf) {
    return LaunchDims<decltype(kf)::value, decltype(vf)::value>(p, stream);
  });
}

}  // namespace hyb::kernels::cuda
