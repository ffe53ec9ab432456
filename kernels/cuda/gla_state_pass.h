// Index arithmetic and shared-memory layout of the chunked GLA forward's state-only first pass
// (GlaStatePassKernel in gla_chunked.cu), in plain C++ that both the kernel and the host check
// (gla_state_pass_host_check.cc) compile, so the block -> (segment, key block) mapping and the
// register ownership of the state are tested without a GPU.
//
// Pass 1 computes each segment's own state contribution (from zero) and its log2 decay. GLA's
// decay is diagonal in the key dim, so the state's key rows evolve independently given the gates:
// rows [r, r + 64) of a segment's state need only k[:, r:r+64], g[:, r:r+64] and all of v. A pass-1
// block therefore takes kGlaStateKeyRows key rows of one (segment, slice): 2 blocks per 128-dim
// slice, 1 per 64-dim one. Its shared memory holds only two stages of k, v and g (no q, no
// chunk-start state, no score tile): ~90 KB, so 2 blocks of 8 warps run on a multiprocessor where
// the full forward layout (~224 KB) allows 1.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define HYB_GLA_HD __host__ __device__ __forceinline__
#else
#define HYB_GLA_HD inline
#endif

namespace hyb::kernels::cuda {

inline constexpr int kGlaStateKeyRows = 64;   // key rows of the state per pass-1 block
inline constexpr int kGlaStateThreads = 256;  // 8 warps: 4 blocks of 16 key rows x 2 value halves
inline constexpr int kGlaStateChunk = 64;     // tokens per chunk (kGlaChunk)

// Pass-1 blocks per (segment, slice) for a slice of K = 64 or 128 key columns.
constexpr int GlaStateKeyBlocks(int slice_key_dim) { return slice_key_dim / kGlaStateKeyRows; }

// Shared-memory layout (bytes) of a pass-1 block for a slice of V value columns. Rows are padded
// by 16 bytes, as in the forward's layout, so that fragment loads fall in distinct banks.
template <int V>
struct GlaStateLayout {
  static constexpr int kR = kGlaStateKeyRows;
  static constexpr int kKP = kR + 8;  // k row pitch (bf16)
  static constexpr int kVP = V + 8;   // v row pitch (bf16)
  static constexpr int kBP = kR + 8;  // gates / cumulative decay row pitch (fp32)
  static constexpr int kK = 0;
  static constexpr int kV = kK + kGlaStateChunk * kKP * 2;
  static constexpr int kB = kV + kGlaStateChunk * kVP * 2;
  static constexpr int kStage = kB + kGlaStateChunk * kBP * 4;
  static constexpr int kTot = 2 * kStage;  // cumsum partial totals, fp32, [4][kR]
  static constexpr int kBytes = kTot + 4 * kR * 4;
};

// Blocks of `bytes` dynamic shared memory that fit on an sm_90 multiprocessor (228 KB, 1 KB
// reserved per block).
constexpr int GlaBlocksPerSm(int bytes) { return (228 * 1024) / (bytes + 1024); }

static_assert(GlaBlocksPerSm(GlaStateLayout<128>::kBytes) >= 2, "pass 1 should fit twice");

// Pass-1 block x of a launch with `key_blocks` blocks per (segment, slice): the forward's segment
// block (what SegmentOf reads) and the key block inside the slice.
struct GlaStateBlock {
  int64_t segment_block;
  int key_block;
};
HYB_GLA_HD GlaStateBlock GlaStateBlockOf(int64_t x, int key_blocks) {
  return {x / key_blocks, static_cast<int>(x % key_blocks)};
}

// Fixed-length sequences: pass 1's steps (one chunk of one key block of one sequence) in the
// order (key block x sequence, segment, chunk), W of them per slice, go to G blocks in equal
// ranges, so that every multiprocessor gets the same share however few (segment, key block)
// items there are. Block b takes steps [GlaStepBegin(b), GlaStepBegin(b + 1)); a segment cut by
// range ends has a piece (state from zero, decay) per range it meets, in order.
// Key blocks outermost: with G even (2 per multiprocessor) and 2 key blocks, block b and block
// b + G / 2 take the same chunks of key blocks 0 and 1, side by side in the one wave, so the
// second read of each v tile (both key blocks need all of v) mostly hits L2 (H200, T = 32K:
// pass 1 reads 490 MB from DRAM instead of 598, the forward takes 7 us less; BENCHMARKS.md,
// "Session 21").
struct GlaStateRow {
  int64_t seq;  // batch x head
  int key_block;
};
// Row `row` = x / (segments x chunks) of the step order, over `seqs` (batch x heads) sequences.
HYB_GLA_HD GlaStateRow GlaStateRowOf(int64_t row, int64_t seqs) {
  return {row % seqs, static_cast<int>(row / seqs)};
}
HYB_GLA_HD int64_t GlaStepBegin(int64_t b, int64_t steps, int64_t blocks) {
  return b * steps / blocks;
}
// The block whose range holds step x: the largest b with GlaStepBegin(b) <= x.
HYB_GLA_HD int64_t GlaBlockOfStep(int64_t x, int64_t steps, int64_t blocks) {
  return ((x + 1) * blocks - 1) / steps;
}

// Pass 1's grid (per slice) and the most pieces a segment has, for `rows` (sequence, key block)
// rows of `segs` segments of `seg_chunks` chunks each and at most `max_blocks` blocks.
struct GlaStatePlan {
  int64_t blocks;
  int parts;
};
inline GlaStatePlan GlaStatePlanOf(int64_t rows, int64_t segs, int64_t seg_chunks,
                                   int64_t max_blocks) {
  const int64_t items = rows * segs, steps = items * seg_chunks;
  const int64_t blocks = steps < max_blocks ? steps : max_blocks;
  int parts = 1;
  for (int64_t i = 0; i < items && blocks > 0; ++i) {
    const int64_t first = GlaBlockOfStep(i * seg_chunks, steps, blocks);
    const int64_t last = GlaBlockOfStep(i * seg_chunks + seg_chunks - 1, steps, blocks);
    if (last - first + 1 > parts) parts = static_cast<int>(last - first + 1);
  }
  return {blocks, parts};
}

// Floats of one piece: the [64, V] fp32 state of its key block, then its [64] log2 decays.
constexpr int64_t GlaPieceFloats(int value_dim) {
  return static_cast<int64_t>(kGlaStateKeyRows) * (value_dim + 1);
}

// The state entries a thread of a pass-1 block owns, as mma.sync m16n8k16 accumulator fragments:
// warp w holds key rows 16 (w % 4) + [0, 16) of the block's 64 and value columns (w / 4) V/2 +
// [0, V/2); lane (g8 = lane / 4, t4 = lane % 4) holds rows d_lo = 16 (w % 4) + g8 and d_hi =
// d_lo + 8, columns col0 + 8 j + {0, 1} for j < V / 16 of the slice's V (a piece's layout).
struct GlaStateOwner {
  int d_lo, d_hi;  // key rows inside the block's 64
  int col0;        // first value column inside the slice
};
HYB_GLA_HD GlaStateOwner GlaStateOwnerOf(int tid, int V) {
  const int warp = tid / 32, lane = tid % 32;
  const int d_lo = 16 * (warp % 4) + lane / 4;
  return {d_lo, d_lo + 8, (warp / 4) * (V / 2) + 2 * (lane % 4)};
}

// The cumulative-decay sum splits the chunk's 64 tokens into kParts runs per key column, as the
// forward's producer warps do for a slice of K key columns (256 / K runs, WsCumsumColumn), so
// that pass 1's decays are bit-identical to the ones the forward kernel computed: thread
// tid < kParts * 64 sums run tid / 64 of column tid % 64.
constexpr int GlaStateCumsumParts(int slice_key_dim) { return kGlaStateThreads / slice_key_dim; }

}  // namespace hyb::kernels::cuda
