// Torch-free launchers of the linear-attention kernels (gla_chunked.cu, gla_chunked_bwd.cu,
// gated_delta_chunked.cu, gated_delta_chunked_bwd.cu, linear_attention_step.cu).
// Every tensor is a raw, contiguous device pointer (except the GLA kernels' per-token tensors,
// which take strides: GlaStrides); shapes follow kernels/linear_attention.h:
// B batch, H heads, T tokens, K key dim, V value dim, states [B, H, K, V] in fp32.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace hyb::kernels::cuda {

// Tokens per chunk of the chunked GLA kernel (fixed: the result does not depend on it).
inline constexpr int kGlaChunk = 64;

// Packed sequences of different lengths in one launch (cumulative offsets, "cu_seqlens"). The
// per-token tensors are [1, H, T, D] (gated delta's g and beta [1, H, T]) with T the packed
// total, and sequence n holds tokens [cu_seqlens[n], cu_seqlens[n + 1]). With cu_seqlens set, a
// params struct below reads `batch` as the number of sequences N and `tokens` as T: states are
// [N, H, K, V], each sequence starts from its own, and nothing crosses a boundary. Chunk-start
// states are stored per sequence, [H, N_n + 1, K, V] from element (cu_chunks[n] + n) * H * K * V
// (N_n = cu_chunks[n + 1] - cu_chunks[n] chunks), and the backward's chunk-end state gradients
// [H, N_n, K, V] from element cu_chunks[n] * H * K * V. Blocks map to (sequence, chunk or
// segment, head) through these offsets, so one launch serves any mix of lengths.
struct VarlenSeqs {
  const int64_t* cu_seqlens = nullptr;  // [N + 1] device, or null: a fixed-length batch
  const int64_t* cu_chunks = nullptr;   // [N + 1] device: ceil(length / 64) summed (VarlenChunks)
  int64_t total_chunks = 0;             // cu_chunks[N]
};

// Chunk offsets of the sequences of host offsets `cu_seqlens` (ceil(length / 64) summed; the
// same for the GLA and the gated-delta kernels, whose chunks are both 64 tokens).
std::vector<int64_t> VarlenChunks(const std::vector<int64_t>& cu_seqlens);

// Element strides of a GLA per-token tensor [B, H, T, D] whose last dim is contiguous. All zero
// (the default) means contiguous [B, H, T, D]. The kernels move 16-byte vectors: the base
// pointer and every stride times the element size must be multiples of 16 bytes
// (GlaStridesAligned); a [B, H, T, D] view of a [B, T, H, D] buffer qualifies.
struct GlaStrides {
  int64_t batch = 0, head = 0, token = 0;
};

// `s` with zeros resolved to the contiguous strides of [B, H, T, `dim`].
GlaStrides GlaResolveStrides(GlaStrides s, int64_t heads, int64_t tokens, int64_t dim);

// True when the kernels can read or write a tensor at `ptr` with (resolved) strides `s` and
// elements of `elem_bytes`.
bool GlaStridesAligned(const void* ptr, const GlaStrides& s, int elem_bytes);

// Chunked GLA forward: o_t = scale * S_t^T q_t with S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T.
// bf16 q/k/v/o, fp32 g (log decay, natural log) and states; fp32 accumulation throughout
// except that the inter-chunk product q S reads the chunk-start state rounded to bf16.
struct GlaChunkedParams {
  const void* q = nullptr;               // [B, H, T, K] bf16 (strides q_strides)
  const void* k = nullptr;               // [B, H, T, K] bf16 (k_strides)
  const void* v = nullptr;               // [B, H, T, V] bf16 (v_strides)
  const float* g = nullptr;              // [B, H, T, K] fp32, <= 0 (g_strides)
  const float* initial_state = nullptr;  // [B, H, K, V] or null (zeros)
  void* o = nullptr;                     // [B, H, T, V] bf16 (o_strides)
  GlaStrides q_strides, k_strides, v_strides, g_strides, o_strides;  // default: contiguous
  float* final_state = nullptr;          // [B, H, K, V] (always written)
  // [B, H, N + 1, K, V] or null, N = ceil(T / kGlaChunk): when set, the state at the start of
  // every chunk (index N: the final state), in fp32, which the backward reads.
  float* chunk_states = nullptr;
  // Scratch of GlaChunkedWorkspaceBytes(*this) bytes (may be null when that is 0).
  void* workspace = nullptr;
  int64_t batch = 0, heads = 0, tokens = 0;
  int key_dim = 0, value_dim = 0;  // (64 | 128 | 256) x (64 | 128 | 256)
  float scale = 1.f;
  // Chunks per segment; 0 picks one from the device's multiprocessor count (GlaSegmentChunks).
  // Packed sequences need it set (GlaVarlenSegmentChunks) together with cu_segments.
  int segment_chunks = 0;
  int num_sms = 132;  // multiprocessors of the device, for the choice above
  VarlenSeqs varlen;  // packed sequences, or none
  // Packed sequences only: [N + 1] device segment offsets (GlaVarlenSegments), one segment at
  // least per sequence (also for an empty one, whose block writes its final state).
  const int64_t* cu_segments = nullptr;
  int64_t total_segments = 0;  // cu_segments[N]
};

// True when the kernel handles this key/value head size: each 64, 128 or 256 (dims of 256 run as
// slices of 128, gla_slices.cuh).
bool GlaChunkedSupportsDims(int key_dim, int value_dim);

// Chunks per segment. Long sequences are cut into segments that run in parallel: a first pass
// computes each segment's own state contribution, a second pass joins the earlier segments' ones
// into its start state and produces the outputs. With enough (batch x heads) to fill the device
// every sequence is one segment; otherwise the count that a model of both passes' waves finds
// cheapest, a first-pass chunk step costing a fraction of a second-pass one (kGlaStateStepPercent
// in gla_chunked.cu).
int GlaSegmentChunks(int64_t batch_heads, int64_t tokens, int num_sms);

// Chunks per segment for packed sequences with chunk offsets `cu_chunks` (VarlenChunks) and
// `heads` heads: about four blocks per multiprocessor over all sequences, at least 4 chunks per
// segment, so a long sequence among short ones is cut while a batch that fills the device is not.
int GlaVarlenSegmentChunks(int64_t heads, const std::vector<int64_t>& cu_chunks, int num_sms);
// Segment offsets: max(1, ceil(chunks / segment_chunks)) per sequence, summed.
std::vector<int64_t> GlaVarlenSegments(const std::vector<int64_t>& cu_chunks, int segment_chunks);

// Scratch bytes the launch needs for these params (0 for one segment per sequence).
size_t GlaChunkedWorkspaceBytes(const GlaChunkedParams& params);

// Enqueues the forward on `stream`; returns the first launch error (cudaSuccess on success).
// cudaErrorInvalidValue for unsupported dims, misaligned strides or a missing workspace.
cudaError_t LaunchGlaChunked(const GlaChunkedParams& params, cudaStream_t stream);

// Chunked GLA backward (gla_chunked_bwd.cu): the gradients of a loss L with respect to q, k, v,
// g and the initial state, given dL/do and dL/dS_T. Reads the chunk-start states the forward
// wrote (GlaChunkedParams::chunk_states). Two launches: the state gradient at every chunk end
// (a reverse scan), then all chunks in parallel. Matrix products on tensor cores (bf16 operands,
// fp32 accumulation); gates, decays, states and their gradients in fp32 (gla_chunked_bwd.cu
// lists what is rounded to bf16).
struct GlaChunkedBackwardParams {
  const void* q = nullptr;               // [B, H, T, K] bf16 (q_strides)
  const void* k = nullptr;               // [B, H, T, K] bf16 (k_strides)
  const void* v = nullptr;               // [B, H, T, V] bf16 (v_strides)
  const float* g = nullptr;              // [B, H, T, K] fp32 (g_strides)
  const void* d_output = nullptr;        // [B, H, T, V] bf16 (d_output_strides)
  const float* d_final_state = nullptr;  // [B, H, K, V] or null (zeros)
  const float* chunk_states = nullptr;   // [B, H, N + 1, K, V] from the forward
  void* dq = nullptr;                    // [B, H, T, K] (dq_strides), bf16 or fp32: grads_bf16
  void* dk = nullptr;                    // [B, H, T, K] (dk_strides), same type
  void* dv = nullptr;                    // [B, H, T, V] (dv_strides), same type
  float* dg = nullptr;                   // [B, H, T, K] fp32 (dg_strides)
  float* d_initial_state = nullptr;      // [B, H, K, V] (always written)
  GlaStrides q_strides, k_strides, v_strides, g_strides, d_output_strides;  // default: contiguous
  GlaStrides dq_strides, dk_strides, dv_strides, dg_strides;
  bool grads_bf16 = false;  // element type of dq, dk and dv: bf16 (true) or fp32
  // Scratch of GlaChunkedBackwardWorkspaceBytes(*this) bytes: dL/dS at every chunk end.
  void* workspace = nullptr;
  int64_t batch = 0, heads = 0, tokens = 0;
  int key_dim = 0, value_dim = 0;  // (64 | 128 | 256) x (64 | 128 | 256)
  float scale = 1.f;
  int num_sms = 132;  // multiprocessors of the device: the reverse scan's column split
  VarlenSeqs varlen;  // packed sequences, or none
};

// Scratch bytes the backward needs (4 B*H*N*K*V; packed: 4 H*total_chunks*K*V).
size_t GlaChunkedBackwardWorkspaceBytes(const GlaChunkedBackwardParams& params);

// Enqueues the backward on `stream`; returns the first launch error. cudaErrorInvalidValue for
// unsupported dims, misaligned strides, or a missing workspace or chunk states.
cudaError_t LaunchGlaChunkedBackward(const GlaChunkedBackwardParams& params, cudaStream_t stream);

// Tokens per chunk of the chunked Gated DeltaNet kernel (fixed: the result does not depend on it).
inline constexpr int kGatedDeltaChunk = 64;
// Value columns per block when the kernel splits the state's columns over several blocks.
inline constexpr int kGatedDeltaSliceColumns = 32;
// The head-dim pair (K, V) as a type, for ForGatedDeltaDims.
template <int K, int V>
struct GatedDeltaDims {
  static constexpr int kKey = K, kValue = V;
};
// Calls f(GatedDeltaDims<K, V>{}) for the supported pair (key_dim, value_dim) (K, V in {64, 128,
// 256}: GatedDeltaChunkedSupportsDims) and returns its result; the caller checks support first
// (an unsupported pair runs the 256 x 256 instance).
template <typename F>
auto ForGatedDeltaDims(int key_dim, int value_dim, F&& f) {
  if (key_dim == 64 && value_dim == 64) return f(GatedDeltaDims<64, 64>{});
  if (key_dim == 64 && value_dim == 128) return f(GatedDeltaDims<64, 128>{});
  if (key_dim == 128 && value_dim == 64) return f(GatedDeltaDims<128, 64>{});
  if (key_dim == 128 && value_dim == 128) return f(GatedDeltaDims<128, 128>{});
  if (key_dim == 64 && value_dim == 256) return f(GatedDeltaDims<64, 256>{});
  if (key_dim == 128 && value_dim == 256) return f(GatedDeltaDims<128, 256>{});
  if (key_dim == 256 && value_dim == 64) return f(GatedDeltaDims<256, 64>{});
  if (key_dim == 256 && value_dim == 128) return f(GatedDeltaDims<256, 128>{});
  return f(GatedDeltaDims<256, 256>{});
}
// Shared memory one block may use on sm_90 (227 KB).
inline constexpr int kGatedDeltaMaxBlockSmem = 232448;
// The widest slice of value columns whose block layout `Layout<K, columns>` fits in
// kGatedDeltaMaxBlockSmem: V (every pair with K, V <= 128), else 128 or 64 (below V), else
// kGatedDeltaSliceColumns.
template <template <int, int> class Layout, int K, int V>
constexpr int GatedDeltaWidestSlice() {
  if (Layout<K, V>::kBytes <= kGatedDeltaMaxBlockSmem) return V;
  if (V > 128 && Layout<K, 128>::kBytes <= kGatedDeltaMaxBlockSmem) return 128;
  if (V > 64 && Layout<K, 64>::kBytes <= kGatedDeltaMaxBlockSmem) return 64;
  return kGatedDeltaSliceColumns;
}
// Most (batch, head) pairs one launch takes (the grid is at most 8 blocks per pair: V = 256 in
// slices of 32).
inline constexpr int64_t kGatedDeltaMaxBatchHeads = 0x7fffffff / 8;

// Chunked Gated DeltaNet forward (gated_delta_chunked.cu): o_t = scale * S_t^T q_t with
// S_t = a_t S_{t-1} + k_t (beta_t (v_t - a_t S_{t-1}^T k_t))^T, a_t = exp(g_t). bf16 q/k/v/o,
// fp32 g (log decay per head and token, <= 0), beta and states; fp32 SIMT arithmetic. Blocks walk
// the chunks of one (batch, head) in order, each with a slice of the state's value columns (all V
// where they fit shared memory, else fewer: 128 for K = 128 with V = 256, 32 for K = 256).
struct GatedDeltaChunkedParams {
  const void* q = nullptr;               // [B, H, T, K] bf16 (k L2-normalised by the caller)
  const void* k = nullptr;               // [B, H, T, K] bf16
  const void* v = nullptr;               // [B, H, T, V] bf16
  const float* g = nullptr;              // [B, H, T] fp32, <= 0
  const float* beta = nullptr;           // [B, H, T] fp32
  const float* initial_state = nullptr;  // [B, H, K, V] or null (zeros)
  void* o = nullptr;                     // [B, H, T, V] bf16
  float* final_state = nullptr;          // [B, H, K, V] (always written)
  // [B, H, N + 1, K, V] or null, N = ceil(T / kGatedDeltaChunk): when set, the state at the
  // start of every chunk (index N: the final state), in fp32, which the backward reads.
  float* chunk_states = nullptr;
  int64_t batch = 0, heads = 0, tokens = 0;
  int key_dim = 0, value_dim = 0;  // (64 | 128 | 256) x (64 | 128 | 256)
  float scale = 1.f;
  int num_sms = 132;  // multiprocessors of the device, for GatedDeltaColumnSlices
  VarlenSeqs varlen;  // packed sequences, or none
};

// True when the kernels (forward and backward) handle this key/value head size: K, V in
// {64, 128, 256}, all nine pairs.
bool GatedDeltaChunkedSupportsDims(int key_dim, int value_dim);

// Blocks per (batch, head): the state's value columns are independent, so with fewer pairs than
// multiprocessors each block takes kGatedDeltaSliceColumns of them (recomputing the chunk's
// C x C matrices); otherwise one block takes all (1), or, where all do not fit one block's shared
// memory (K = 256, or K = 128 with V = 256), the widest slice that does: the launchers split
// those further on their own.
int GatedDeltaColumnSlices(int64_t batch_heads, int value_dim, int num_sms);

// Enqueues the forward on `stream`; returns the first launch error (cudaSuccess on success).
// cudaErrorInvalidValue for unsupported dims.
cudaError_t LaunchGatedDeltaChunked(const GatedDeltaChunkedParams& params, cudaStream_t stream);

// Chunked Gated DeltaNet backward (gated_delta_chunked_bwd.cu): the gradients of a loss L with
// respect to q, k, v, g, beta and the initial state, given dL/do and dL/dS_T. Reads the
// chunk-start states the forward wrote (GatedDeltaChunkedParams::chunk_states). Two launches:
// the state gradient at every chunk end (a reverse scan over the chunks, one block per sequence
// and slice of value columns, as the forward), then all chunks in parallel (with K or V = 256,
// each chunk's block walks the value columns in slices). fp32 SIMT arithmetic.
struct GatedDeltaChunkedBackwardParams {
  const void* q = nullptr;               // [B, H, T, K] bf16
  const void* k = nullptr;               // [B, H, T, K] bf16
  const void* v = nullptr;               // [B, H, T, V] bf16
  const float* g = nullptr;              // [B, H, T] fp32, <= 0
  const float* beta = nullptr;           // [B, H, T] fp32
  const void* d_output = nullptr;        // [B, H, T, V] bf16
  const float* d_final_state = nullptr;  // [B, H, K, V] or null (zeros)
  const float* chunk_states = nullptr;   // [B, H, N + 1, K, V] from the forward
  float* dq = nullptr;                   // [B, H, T, K]
  float* dk = nullptr;                   // [B, H, T, K]
  float* dv = nullptr;                   // [B, H, T, V]
  float* dg = nullptr;                   // [B, H, T]
  float* dbeta = nullptr;                // [B, H, T]
  float* d_initial_state = nullptr;      // [B, H, K, V] (always written)
  // Scratch of GatedDeltaChunkedBackwardWorkspaceBytes(*this) bytes: dL/dS at every chunk end.
  void* workspace = nullptr;
  int64_t batch = 0, heads = 0, tokens = 0;
  int key_dim = 0, value_dim = 0;  // (64 | 128 | 256) x (64 | 128 | 256)
  float scale = 1.f;
  int num_sms = 132;  // multiprocessors of the device, for GatedDeltaColumnSlices
  VarlenSeqs varlen;  // packed sequences, or none
};

// Scratch bytes the backward needs (4 B*H*N*K*V; packed: 4 H*total_chunks*K*V).
size_t GatedDeltaChunkedBackwardWorkspaceBytes(const GatedDeltaChunkedBackwardParams& params);

// Enqueues the backward on `stream`; returns the first launch error. cudaErrorInvalidValue for
// unsupported dims, a missing workspace or chunk states, or more than 2^31 - 1 chunks in all.
cudaError_t LaunchGatedDeltaChunkedBackward(const GatedDeltaChunkedBackwardParams& params,
                                            cudaStream_t stream);

// One decoding step for B*H independent heads. Elements of q/k/v/g/o are `float` or bf16
// (`bf16` below); states fp32. `state` and `new_state` may be the same buffer (in place).
struct LinearStepParams {
  const void* q = nullptr;       // [B, H, K]
  const void* k = nullptr;       // [B, H, K]
  const void* v = nullptr;       // [B, H, V]
  const void* g = nullptr;       // GLA: [B, H, K]; gated delta: [B, H] (log decay)
  const void* beta = nullptr;    // gated delta only: [B, H]
  const float* state = nullptr;  // [B, H, K, V]
  void* o = nullptr;             // [B, H, V]
  float* new_state = nullptr;    // [B, H, K, V]
  int64_t batch_heads = 0;
  int key_dim = 0, value_dim = 0;  // K <= 256, V a multiple of 4 up to 4096; B*H <= 65535
  float scale = 1.f;
  bool bf16 = false;  // element type of q, k, v, g, beta and o
};

// True when the step kernels handle this key/value head size.
bool LinearStepSupportsDims(int key_dim, int value_dim);

// S = diag(exp(g)) S + k v^T; o = scale * S^T q.
cudaError_t LaunchGlaStep(const LinearStepParams& params, cudaStream_t stream);
// S = exp(g) (I - beta k k^T) S + beta k v^T; o = scale * S^T q.
cudaError_t LaunchGatedDeltaStep(const LinearStepParams& params, cudaStream_t stream);

}  // namespace hyb::kernels::cuda
