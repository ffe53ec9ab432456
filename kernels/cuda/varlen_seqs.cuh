// Device-side addressing of one sequence of a linear-attention launch, for fixed-length batches
// ([B, H, T, D], T tokens each) and packed ones (VarlenSeqs: [1, H, T, D], sequence n from
// cu_seqlens[n]). Every kernel of gla_chunked*.cu and gated_delta_chunked*.cu finds its tokens,
// its chunk-start states and its state gradients through SeqOf, so both kinds run the same code.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "linear_attention_launch.h"

namespace hyb::kernels::cuda {

// Where sequence bh = n * heads + h lies.
struct SeqSpan {
  int64_t row;          // its (batch, head) row of the per-token tensors: bh, or h when packed
  int64_t token0;       // its first token inside that row (0 unless packed)
  int64_t tokens;       // its length
  int64_t nchunks;      // ceil(tokens / 64)
  int64_t state_slot;   // its chunk 0 in the chunk-start states, in units of K * V
  int64_t dstate_slot;  // its chunk 0 in the chunk-end state gradients, in units of K * V
};

// `chunk` is the kernels' 64 (both GLA and gated delta). `tokens`: per sequence, or packed total.
__device__ __forceinline__ SeqSpan SeqOf(const VarlenSeqs& vs, int64_t bh, int64_t heads,
                                         int64_t tokens, int chunk) {
  if (vs.cu_seqlens == nullptr) {
    const int64_t nc = (tokens + chunk - 1) / chunk;
    return {bh, 0, tokens, nc, bh * (nc + 1), bh * nc};
  }
  const int64_t n = bh / heads, h = bh % heads;
  const int64_t t0 = vs.cu_seqlens[n], c0 = vs.cu_chunks[n];
  const int64_t nc = vs.cu_chunks[n + 1] - c0;
  return {
      h, t0, vs.cu_seqlens[n + 1] - t0, nc, (c0 + n) * heads + h * (nc + 1), c0 * heads + h * nc};
}

// The sequence n in [0, num_seqs) with offsets[n] <= i < offsets[n + 1] (offsets non-decreasing,
// offsets[0] <= i < offsets[num_seqs]): empty sequences are skipped.
__device__ __forceinline__ int64_t FindSeq(const int64_t* offsets, int64_t num_seqs, int64_t i) {
  int64_t lo = 0, hi = num_seqs;  // offsets[lo] <= i < offsets[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (offsets[mid] <= i) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// (sequence bh, chunk c) of block `x` of a launch with one block per chunk of every sequence and
// head: fixed-length, x = bh * nchunks + c; packed, x = (cu_chunks[n] + c) * heads + h (grid
// total_chunks * heads). `nchunks`: chunks per sequence (fixed-length only).
__device__ __forceinline__ void ChunkOfBlock(const VarlenSeqs& vs, int64_t num_seqs, int64_t heads,
                                             int64_t nchunks, int64_t x, int64_t* bh, int64_t* c) {
  if (vs.cu_seqlens == nullptr) {
    *bh = x / nchunks;
    *c = x % nchunks;
    return;
  }
  const int64_t gc = x / heads, h = x % heads;
  const int64_t n = FindSeq(vs.cu_chunks, num_seqs, gc);
  *bh = n * heads + h;
  *c = gc - vs.cu_chunks[n];
}

}  // namespace hyb::kernels::cuda
