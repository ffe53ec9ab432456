// Softmax attention with causal, offset and sliding-window masking, as one function so the
// model runtime never branches on the LibTorch version: LibTorch 2.x uses the fused
// scaled_dot_product_attention, 1.13 an equivalent math path.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace hyb::kernels {

struct AttentionOptions {
  // Absolute position of query 0; keys are at positions 0..Tk-1. With a KV cache of n tokens
  // and Tq new ones, q_offset = n and Tk = n + Tq.
  int64_t q_offset = 0;
  // 0: plain causal. W > 0: query at position p sees keys at positions p-W+1 .. p
  // (transformers' `kv_idx > q_idx - sliding_window`).
  int64_t sliding_window = 0;
  // Multiplier of q.k; the usual value is head_dim^-0.5.
  double scale = 1.0;
  // Use the math path even when the fused one exists (tests and parity checks).
  bool force_math = false;
  // Single-query decoding over a fixed-size key buffer (what a captured CUDA graph replays):
  // bool [Tk] on the keys' device, true where the key is visible. When defined, Tq must be 1,
  // q_offset and sliding_window are ignored (the mask says everything) and Tk may exceed the
  // query's position + 1.
  at::Tensor key_mask;
  // The positioned alternative to key_mask: int64, one element on the keys' device, the last
  // visible key (inclusive). Tq must be 1 and q_offset is ignored; the query sees the keys
  // key_end - sliding_window + 1 .. key_end (sliding_window 0: 0 .. key_end) of a buffer whose Tk
  // may exceed key_end + 1. On CUDA the split-KV kernel reads it on the device (a captured graph
  // replays the same launch while it advances); elsewhere a key mask is built from it. At most
  // one of key_mask and key_end is defined.
  at::Tensor key_end;
};

// q: [B, Hq, Tq, D]; k, v: [B, Hkv, Tk, D] with Hq % Hkv == 0 (query head h reads key/value
// head h / (Hq / Hkv)). Returns [B, Hq, Tq, D] in q's dtype. Softmax is computed in fp32.
// A single query (Tq = 1) reads the shared key/value heads in place (the query heads of a group
// become that group's rows) instead of repeating them Hq / Hkv times; on CUDA (HYB_WITH_CUDA, no
// force_math, no gradient needed, no key_mask, inputs kernels::cuda::AttentionDecodeSupported)
// it runs the split-KV decoding kernel, which reads only the visible keys.
// Throws c10::Error on inconsistent shapes (the caller's task boundary converts it).
at::Tensor SoftmaxAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const AttentionOptions& options);

// The boolean mask used above, [Tq, Tk], true where attention is allowed (on `device`).
at::Tensor AttentionMask(int64_t tq, int64_t tk, const AttentionOptions& options,
                         const at::Device& device);

// True when this build dispatches to the fused kernel.
bool HasFusedAttention();

}  // namespace hyb::kernels
