// Torch-free launcher of the split-KV single-query attention kernel (attention_decode.cu), and
// the split planning and key-range math it shares with the host (tests/worker/attention_test.cc
// checks that math on the CPU: define HYB_ATTENTION_DECODE_PLAN_ONLY before including this
// header to get only that part, without the CUDA runtime).
//
// Shapes: B batch, H query heads, Hkv key/value heads (H % Hkv == 0), Cap key slots, D head dim.
// Query head h reads key/value head h / (H / Hkv).
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define HYB_ATTENTION_DECODE_HD __host__ __device__
#else
#define HYB_ATTENTION_DECODE_HD
#endif

namespace hyb::kernels::cuda {

// Threads per block of the split kernel.
inline constexpr int kAttentionDecodeThreads = 256;
// Keys per split: at least this many, and a multiple of kAttentionDecodeSplitAlign.
inline constexpr int64_t kAttentionDecodeMinSplit = 128;
inline constexpr int64_t kAttentionDecodeSplitAlign = 64;
// Splits per (batch, key/value head) at most (the combine kernel keeps one weight per split in
// shared memory).
inline constexpr int64_t kAttentionDecodeMaxSplits = 1024;
// Query heads one block serves at most (the others of a larger group go to more blocks).
inline constexpr int kAttentionDecodeMaxBlockHeads = 8;

// True for the head sizes the kernel handles: 8 dims per thread, D / 8 threads per key, a power
// of two up to a warp.
HYB_ATTENTION_DECODE_HD inline bool AttentionDecodeSupportsDim(int64_t head_dim) {
  return head_dim == 8 || head_dim == 16 || head_dim == 32 || head_dim == 64 ||
         head_dim == 128 || head_dim == 256;
}

// Launch geometry. It depends on the shapes and the capacity only, never on the visible range
// (a captured CUDA graph replays one launch while the position on the device advances).
struct AttentionDecodePlan {
  // A key/value head's group of H / Hkv query heads is cut into `head_chunks` chunks of
  // `chunk_heads` (the last may hold fewer); one block serves one chunk, which its code holds in
  // registers as `block_heads` (1, 2, 4 or 8 >= chunk_heads) rows.
  int64_t head_chunks = 1;
  int64_t chunk_heads = 1;
  int block_heads = 1;
  // The key slots 0..Cap-1 are cut into `num_splits` splits of `split_size` keys (the last may
  // be shorter); one block per (split, head chunk, batch row).
  int64_t split_size = 0;
  int64_t num_splits = 0;
};

// Enough splits that B * Hkv * head_chunks * num_splits blocks fill `num_sms` multiprocessors
// about four times over (two waves of two resident blocks), without splits shorter than
// kAttentionDecodeMinSplit. group = H / Hkv >= 1, capacity >= 1.
inline AttentionDecodePlan PlanAttentionDecode(int64_t batch, int64_t kv_heads, int64_t group,
                                               int64_t capacity, int num_sms) {
  AttentionDecodePlan plan;
  plan.head_chunks = (group + kAttentionDecodeMaxBlockHeads - 1) / kAttentionDecodeMaxBlockHeads;
  plan.chunk_heads = (group + plan.head_chunks - 1) / plan.head_chunks;
  plan.block_heads = plan.chunk_heads <= 1 ? 1 : plan.chunk_heads <= 2 ? 2
                     : plan.chunk_heads <= 4 ? 4 : 8;
  const int64_t rows = batch * kv_heads * plan.head_chunks;
  const int64_t target_blocks = 4 * static_cast<int64_t>(num_sms > 0 ? num_sms : 1);
  int64_t want = rows > 0 ? (target_blocks + rows - 1) / rows : 1;
  want = want < 1 ? 1 : want > kAttentionDecodeMaxSplits ? kAttentionDecodeMaxSplits : want;
  int64_t size = (capacity + want - 1) / want;
  if (size < kAttentionDecodeMinSplit) size = kAttentionDecodeMinSplit;
  size = (size + kAttentionDecodeSplitAlign - 1) / kAttentionDecodeSplitAlign *
         kAttentionDecodeSplitAlign;
  plan.split_size = size;
  plan.num_splits = capacity > 0 ? (capacity + size - 1) / size : 1;
  return plan;
}

// A half-open range of key positions [begin, end) (empty when end <= begin).
struct KeyRange {
  int64_t begin = 0;
  int64_t end = 0;
};

// The keys a query at the last visible key `last` sees in a buffer of `capacity` slots:
// [max(0, last - window + 1), last] (window 0: no sliding window), cut to the buffer. Empty when
// last < 0.
HYB_ATTENTION_DECODE_HD inline KeyRange VisibleKeys(int64_t last, int64_t window,
                                                    int64_t capacity) {
  if (last > capacity - 1) last = capacity - 1;
  KeyRange r;
  r.end = last + 1 > 0 ? last + 1 : 0;
  r.begin = window > 0 && last - window + 1 > 0 ? last - window + 1 : 0;
  if (r.end < r.begin) r.end = r.begin;
  return r;
}

// The visible keys that split `split` (of `split_size` keys) holds.
HYB_ATTENTION_DECODE_HD inline KeyRange SplitKeys(KeyRange visible, int64_t split,
                                                  int64_t split_size) {
  KeyRange r;
  const int64_t first = split * split_size, past = first + split_size;
  r.begin = first > visible.begin ? first : visible.begin;
  r.end = past < visible.end ? past : visible.end;
  if (r.end < r.begin) r.end = r.begin;
  return r;
}

// Element type of q, k, v and the output.
enum class AttentionDecodeType { kFloat32, kBFloat16, kFloat16 };

// Scratch floats per (batch, query head, split): D partial numerators, the running maximum and
// the sum of exponentials.
inline size_t AttentionDecodeWorkspaceBytes(int64_t batch, int64_t heads, int64_t head_dim,
                                            const AttentionDecodePlan& plan) {
  return static_cast<size_t>(batch * heads * plan.num_splits * (head_dim + 2)) * sizeof(float);
}

}  // namespace hyb::kernels::cuda

#if !defined(HYB_ATTENTION_DECODE_PLAN_ONLY)
#include <cuda_runtime.h>

namespace hyb::kernels::cuda {

// o[b, h] = softmax_j(scale * q[b, h] . k[b, g, j]) v[b, g, j] over the visible keys j, with
// g = h / (H / Hkv). Two launches: every (split, head chunk, batch row) block writes its split's
// partial numerator, maximum and sum (a split without visible keys writes maximum -inf and exits),
// then one block per (batch row, query head) combines them. fp32 arithmetic throughout; the
// output is zero where no key is visible.
struct AttentionDecodeParams {
  const void* q = nullptr;  // [B, H, D], contiguous
  // [B, Hkv, Cap, D] with unit stride along D; the other strides (in elements), the base
  // pointers and the strides in bytes are multiples of 16 bytes.
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t k_batch_stride = 0, k_head_stride = 0, k_token_stride = 0;
  int64_t v_batch_stride = 0, v_head_stride = 0, v_token_stride = 0;
  // The last visible key (inclusive): read from device memory when `key_end` is set (one int64),
  // else `last_key`. Positions past Cap - 1 are cut to Cap - 1.
  const int64_t* key_end = nullptr;
  int64_t last_key = -1;
  int64_t window = 0;  // > 0: only the keys last - window + 1 .. last are visible
  void* o = nullptr;   // [B, H, D], contiguous
  // AttentionDecodeWorkspaceBytes(B, H, D, plan) bytes, 4-byte aligned.
  void* workspace = nullptr;
  int64_t batch = 0, heads = 0, kv_heads = 0, capacity = 0;
  int head_dim = 0;  // AttentionDecodeSupportsDim
  float scale = 1.f;
  AttentionDecodeType type = AttentionDecodeType::kBFloat16;
  AttentionDecodePlan plan;  // PlanAttentionDecode(B, Hkv, H / Hkv, Cap, multiprocessors)
};

// Enqueues both launches on `stream`; returns the first launch error. cudaErrorInvalidValue for
// an unsupported head size, a plan that does not match the shapes, or a grid past CUDA's limits.
cudaError_t LaunchAttentionDecode(const AttentionDecodeParams& params, cudaStream_t stream);

}  // namespace hyb::kernels::cuda
#endif  // !HYB_ATTENTION_DECODE_PLAN_ONLY
