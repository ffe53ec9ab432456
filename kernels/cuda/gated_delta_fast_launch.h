// Torch-free launchers of the chunk-parallel Gated DeltaNet kernels (gated_delta_fast.cu,
// gated_delta_fast_bwd.cu). Every tensor is a raw, contiguous device pointer; B*H (batch x
// heads) sequences of T tokens, K key dim, V value dim, chunks of kGatedDeltaFastChunk tokens,
// N = ceil(T / 64) chunks, Tp = 64 N (per-chunk intermediates are stored padded to whole chunks).
// Packed sequences (GatedDeltaFastVarlen) use the same launches and layouts with B = 1: see there.
//
// The forward in three launches (the same split as fla's chunk_gated_delta_rule):
//  1. per chunk, all chunks in parallel: b = cumulative log2 decay, A = strictly-lower
//     beta_t e^(b_t - b_s) (k_t . k_s), Tinv = (I + A)^-1, w = Tinv diag(beta e^b) k and
//     u = Tinv diag(beta) v;
//  2. the state recurrence, sequential over chunks, parallel over (sequence, slice of value
//     columns): v_new = u - w S, S <- e^(b_C) S + k^T diag(e^(b_C - b)) v_new, keeping S at every
//     chunk start (bf16);
//  3. per chunk, all chunks in parallel: o = scale (diag(e^b) q S + (M * q k^T) v_new).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace hyb::kernels::cuda {

inline constexpr int kGatedDeltaFastChunk = 64;

// Packed sequences of different lengths (cu_seqlens) in one launch per kernel. The per-token
// tensors are [1, H, T, .] (g, beta [1, H, T]) with T the packed total, sequence n holding tokens
// [cu_seqlens[n], cu_seqlens[n + 1]); `batch_heads` is N * H and the states [N, H, K, V]. Every
// sequence is cut into its own ceil(length / 64) chunks (none crosses a boundary; a sequence of
// length 0 has none: its final state is its initial state, its initial state's gradient the
// final state's), numbered globally in sequence order: sequence n's chunk c is chunk
// cu_chunks[n] + c of total_chunks. The per-chunk intermediates are those of a fixed-length
// batch of one sequence whose chunks are all the global chunks (N = total_chunks), per head:
// [H, Tp, .] with Tp = 64 total_chunks, chunk states [H, total_chunks, K, V]. The per-chunk
// launches take a grid of (total_chunks, H) blocks (the forward's output kernel at V = 256:
// (4 total_chunks, H), four value slices per chunk) and find a block's sequence in chunk_seq; the
// recurrences take one block per (slice, sequence n * H + h).
struct GatedDeltaFastVarlen {
  const int64_t* cu_seqlens = nullptr;  // [N + 1] device, or null: a fixed-length batch
  const int64_t* cu_chunks = nullptr;   // [N + 1] device: ceil(length / 64) summed
  const int64_t* chunk_seq = nullptr;   // [total_chunks] device: the sequence of every chunk
  int64_t heads = 0;                    // H
  int64_t total_chunks = 0;             // cu_chunks[N]
};

// The host tables of packed sequences with host offsets `cu_seqlens` (N + 1 of them, checked by
// the caller): cu_chunks (N + 1 entries) and chunk_seq (cu_chunks[N] entries), in that order.
struct GatedDeltaFastVarlenTables {
  std::vector<int64_t> cu_chunks, chunk_seq;
};
GatedDeltaFastVarlenTables GatedDeltaFastVarlenTablesOf(const std::vector<int64_t>& cu_seqlens);

// True when `vs` (cu_seqlens set) describes packed sequences the launchers can take with
// `batch_heads` = N * H (tables set, at least one chunk, H dividing batch_heads).
bool GatedDeltaFastVarlenValid(const GatedDeltaFastVarlen& vs, int64_t batch_heads);

// Per-chunk intermediates of the forward, which the backward reads again. Device pointers.
struct GatedDeltaFastWorkspace {
  void* w = nullptr;             // [BH, Tp, K] bf16
  void* u = nullptr;             // [BH, Tp, V] bf16
  void* v_new = nullptr;         // [BH, Tp, V] bf16
  float* b = nullptr;            // [BH, Tp] fp32: cumulative log2 decay inside each chunk
  void* chunk_states = nullptr;  // [BH, N, K, V] bf16: the state at every chunk start
  void* tinv = nullptr;          // [BH, Tp, 64] bf16: each chunk's Tinv (row t at row t);
                                 // null: not stored (forward only; the backward needs it)
};

struct GatedDeltaFastParams {
  const void* q = nullptr;               // [BH, T, K] bf16
  const void* k = nullptr;               // [BH, T, K] bf16 (L2-normalised by the caller)
  const void* v = nullptr;               // [BH, T, V] bf16
  const float* g = nullptr;              // [BH, T] log decay (natural log, <= 0)
  const float* beta = nullptr;           // [BH, T]
  const float* initial_state = nullptr;  // [BH, K, V] or null (zeros)
  void* o = nullptr;                     // [BH, T, V] bf16
  float* final_state = nullptr;          // [BH, K, V] (always written)
  GatedDeltaFastWorkspace ws;
  int64_t batch_heads = 0, tokens = 0;
  int key_dim = 0, value_dim = 0;  // K = V in {64, 128, 256} (the backward: 64, 128)
  float scale = 1.f;
  int num_sms = 132;
  int slice_columns = 0;  // value columns per recurrence block (16, 32, 64); 0: chosen below
  GatedDeltaFastVarlen varlen;  // packed sequences, or none
};

// True when the backward kernels handle this key/value head size (K = V in {64, 128}).
bool GatedDeltaFastSupportsDims(int key_dim, int value_dim);
// True when the forward kernels do (K = V in {64, 128, 256}).
bool GatedDeltaFastForwardSupportsDims(int key_dim, int value_dim);

// Value columns per block of the backward's state recurrence for `batch_heads` sequences (16, 32
// or 64): the widest slice that still gives every multiprocessor a block.
int GatedDeltaFastSliceColumns(int64_t batch_heads, int value_dim, int num_sms);

// The same for the forward's recurrence: the widest slice that gives three quarters of the
// multiprocessors a block (its blocks all load the chunk's whole w and k, so fewer, wider ones
// move less through L2).
int GatedDeltaFastForwardSliceColumns(int64_t batch_heads, int value_dim, int num_sms);

// Enqueues the forward on `stream`; returns the first launch error (cudaSuccess on success),
// cudaErrorInvalidValue for unsupported dims. T must be > 0 (the caller handles T = 0; packed:
// T = 0 means every sequence is empty).
cudaError_t LaunchGatedDeltaFast(const GatedDeltaFastParams& params, cudaStream_t stream);

// The backward: gradients of a loss L given dL/do and dL/dS_T, from the forward's workspace
// (GatedDeltaFastParams::ws as LaunchGatedDeltaFast left it, for the same inputs).
//  1. per chunk, all chunks in parallel: dv_local = scale (M * q k^T)^T do (bf16);
//  2. the state gradient, in reverse over chunks, parallel over (sequence, slice of value
//     columns): dW = dv_local + diag(e^(b_C - b)) k dS, dS <- e^(b_C) dS + scale (diag(e^b) q)^T
//     do - w^T dW, keeping dS at every chunk end (bf16) and dW (fp32);
//  3. per chunk, all chunks in parallel: every token's gradients.
struct GatedDeltaFastBackwardParams {
  const void* q = nullptr;               // [BH, T, K] bf16
  const void* k = nullptr;               // [BH, T, K] bf16
  const void* v = nullptr;               // [BH, T, V] bf16
  const float* g = nullptr;              // [BH, T]
  const float* beta = nullptr;           // [BH, T]
  const void* d_output = nullptr;        // [BH, T, V] bf16
  const float* d_final_state = nullptr;  // [BH, K, V] or null (zeros)
  GatedDeltaFastWorkspace ws;            // from the forward
  void* dv_local = nullptr;              // scratch [BH, Tp, V] bf16
  float* d_w = nullptr;                  // scratch [BH, Tp, V] fp32: dL/d v_new
  void* d_chunk_states = nullptr;        // scratch [BH, N, K, V] bf16: dL/dS at every chunk end
  float* dq = nullptr;                   // [BH, T, K]
  float* dk = nullptr;                   // [BH, T, K]
  float* dv = nullptr;                   // [BH, T, V]
  float* dg = nullptr;                   // [BH, T]
  float* dbeta = nullptr;                // [BH, T]
  float* d_initial_state = nullptr;      // [BH, K, V] (always written)
  int64_t batch_heads = 0, tokens = 0;
  int key_dim = 0, value_dim = 0;
  float scale = 1.f;
  int num_sms = 132;
  int slice_columns = 0;  // as GatedDeltaFastParams::slice_columns
  GatedDeltaFastVarlen varlen;  // packed sequences (as the forward's), or none
};

cudaError_t LaunchGatedDeltaFastBackward(const GatedDeltaFastBackwardParams& params,
                                         cudaStream_t stream);

}  // namespace hyb::kernels::cuda
