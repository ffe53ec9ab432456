// Device helpers shared by the chunk-parallel Gated DeltaNet kernels (gated_delta_fast.cu,
// gated_delta_fast_bwd.cu): bf16 mma.sync m16n8k16 with fp32 accumulators, its fragment loaders
// through ldmatrix, and cp.async tile copies. Fragment conventions (PTX ISA, m16n8k16 .bf16):
// lane = threadIdx.x % 32, g = lane / 4, t = lane % 4; A fragment a[0..3] = A[g][2t..2t+1],
// A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..]; B fragment b0, b1 = B[2t..2t+1][g], B[2t+8..][g];
// accumulators c[0..1] = C[g][2t..2t+1], c[2..3] = C[g+8][2t..2t+1].
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "gated_delta_fast_launch.h"
#include "mma_bf16.cuh"

namespace hyb::kernels::cuda::gdn {

constexpr int kC = 64;  // tokens per chunk
constexpr float kLog2e = 1.4426950408889634f;

// The tensor-core primitives (mma_bf16.cuh), named here as the kernels call them (gdn::Mma).
using cuda::Exp2;
using cuda::LdMatrixX4;
using cuda::LdMatrixX4Trans;
using cuda::Mma;
using cuda::PackBf16;
using cuda::UnpackBf16;

__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

// The ldmatrix fragment loaders (mma_bf16.cuh), as the kernels call them (gdn::LoadA).
using frag::LoadA;
using frag::LoadAT;
using frag::LoadB2;
using frag::LoadBT2;

// Accumulators of two adjacent n8 tiles (columns 16 kk..16 kk + 15) as the A fragment of a
// k16 step: the output of one product feeds the next without shared memory.
__device__ __forceinline__ void AccToA(uint32_t (&a)[4], const float (&lo)[4],
                                       const float (&hi)[4]) {
  a[0] = PackBf16(lo[0], lo[1]);
  a[1] = PackBf16(lo[2], lo[3]);
  a[2] = PackBf16(hi[0], hi[1]);
  a[3] = PackBf16(hi[2], hi[3]);
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

// Copies rows [0, rows_valid) of a [kRows][kCols] bf16 tile (global rows `src_pitch` elements
// apart) into shared memory with row pitch kPitch elements; rows past rows_valid are zero-filled.
// kThreads threads, thread index tid.
template <int kRows, int kCols, int kPitch, int kThreads>
__device__ __forceinline__ void CopyTile(__nv_bfloat16* dst, const __nv_bfloat16* src,
                                         int64_t src_pitch, int rows_valid, int tid) {
  constexpr int kVecPerRow = kCols / 8;
  constexpr int kTotal = kRows * kVecPerRow;
  static_assert(kTotal % kThreads == 0, "tile does not split evenly over the block");
#pragma unroll
  for (int n = 0; n < kTotal / kThreads; ++n) {
    const int i = tid + n * kThreads;
    const int row = i / kVecPerRow, cv = i % kVecPerRow;
    const bool ok = row < rows_valid;
    const __nv_bfloat16* s = src + (static_cast<int64_t>(row) * src_pitch + cv * 8);
    CpAsync16(dst + row * kPitch + cv * 8, ok ? s : src, ok);
  }
}

// Packed sequences (GatedDeltaFastVarlen): the tokens of global chunk `chunk` of head `head`,
// which a per-chunk block (grid (total_chunks, H)) reads and writes. `*tok`: its first token's
// index in the [H, T] token rows (T = `tokens`, the packed total); `*rows`: its real tokens
// (1..64: the sequence's last chunk may be short). Its padded intermediates are at row
// (head * total_chunks + chunk) * 64 and chunk state head * total_chunks + chunk, the fixed-length
// formulas with (chunk, bh) = (blockIdx.x, blockIdx.y) (blockIdx.x / slices for a kernel that
// splits a chunk's value columns over blocks).
__device__ __forceinline__ void PackedChunk(const GatedDeltaFastVarlen& vs, int64_t tokens,
                                            int64_t chunk, int64_t head, int64_t* tok,
                                            int* rows) {
  const int64_t n = vs.chunk_seq[chunk];
  const int64_t t0 = vs.cu_seqlens[n] + (chunk - vs.cu_chunks[n]) * kC;
  const int64_t left = vs.cu_seqlens[n + 1] - t0;  // >= 1: chunks hold at least one token
  *tok = head * tokens + t0;
  *rows = left < kC ? static_cast<int>(left) : kC;
}

// The sequence of a recurrence block (block row `bh`: batch * H + head, or n * H + head when
// packed) as the recurrences walk it: its first token's index in the token rows (`tok0`), its
// length, its chunks, and the index of its first chunk among the per-chunk intermediates
// (`chunk0`: padded rows from 64 chunk0, chunk states from chunk0).
struct SeqChunks {
  int64_t tok0, tokens, chunk0;
  int nchunks;
};
__device__ __forceinline__ SeqChunks PackedSeq(const GatedDeltaFastVarlen& vs, int64_t tokens,
                                               int64_t bh) {
  const int64_t n = bh / vs.heads, head = bh % vs.heads;
  const int64_t t0 = vs.cu_seqlens[n], c0 = vs.cu_chunks[n];
  return {head * tokens + t0, vs.cu_seqlens[n + 1] - t0, head * vs.total_chunks + c0,
          static_cast<int>(vs.cu_chunks[n + 1] - c0)};
}

}  // namespace hyb::kernels::cuda::gdn
