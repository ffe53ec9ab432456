// Linear-attention operators: the one dispatch point for the mixers' recurrences. Every
// operator exists in a recurrent form (token by token: the definition, and the decoding step)
// and a chunked form (parallel within chunks: the training path). The CPU/LibTorch reference
// implementations below are composed of differentiable ATen ops, so autograd provides their
// backward; CUDA kernels plug in behind these functions without touching callers.
//
// With HYB_CUDA, calls go to a CUDA kernel when the tensors are on a GPU and the kernel supports
// them (kernels/cuda_ops.h lists what): GlaChunked and GatedDeltaChunked for bf16 q/k/v with K, V
// in {64, 128, 256} (output bf16, final state fp32; with a CUDA backward when
// gradients are needed), the same for their packed variable-length forms (GlaChunkedVarlen,
// GatedDeltaChunkedVarlen), and, when no gradient is needed, GlaStep / GatedDeltaStep for fp32
// or bf16 q/k/v with an fp32 state. Everything else runs the *Reference functions, which stay
// the oracle.
//
// Shapes: B batch, H heads, T tokens, K key dim, V value dim. States are [B, H, K, V] and the
// output at step t is o_t = scale * S_t^T q_t. All math runs in the inputs' dtype; callers pass
// fp32 (or fp64 in tests).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace hyb::kernels {

struct LinearAttentionOutput {
  at::Tensor output;       // [B, H, T, V]
  at::Tensor final_state;  // [B, H, K, V]
};

// Gated linear attention (GLA, arXiv 2312.06635), decay per key dimension:
//   S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,   o_t = scale * S_t^T q_t
// q, k, g: [B, H, T, K] (g = log decay <= 0); v: [B, H, T, V]; initial_state [B, H, K, V] or
// undefined (zeros).
LinearAttentionOutput GlaRecurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& g, double scale,
                                   const at::Tensor& initial_state);
LinearAttentionOutput GlaChunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& g, double scale, const at::Tensor& initial_state,
                                 int64_t chunk_size);
LinearAttentionOutput GlaChunkedReference(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const at::Tensor& g, double scale,
                                          const at::Tensor& initial_state, int64_t chunk_size);

// Gradients of a loss L through GlaChunked, given d_output = dL/do and d_final_state = dL/dS_T
// (undefined: zeros). d_initial_state is returned also when initial_state is undefined.
struct GlaChunkedGradients {
  at::Tensor dq, dk, dv, dg;   // like q, k, v, g
  at::Tensor d_initial_state;  // [B, H, K, V]
};
// The chunked backward written out with ATen ops (the CUDA kernel's formulas, in the inputs'
// dtype; no autograd): states at every chunk start, state gradients at every chunk end in
// reverse, then per chunk, with b the cumulative log decay inside the chunk, S0 / dS the state /
// its gradient at the chunk start / end and A, dA the scaled causal scores q k and do v:
//   dq_t = scale e^b_t (S0 do_t) + sum_{s<=t} dA[t, s] e^(b_t - b_s) k_s
//   dk_s = sum_{t>=s} dA[t, s] e^(b_t - b_s) q_t + e^(b_C - b_s) (dS v_s)
//   dv_s = sum_{t>=s} A[t, s] do_t + dS^T (e^(b_C - b_s) k_s)
//   dg_t = sum_{u>=t in the chunk} (q_u dq_u - k_u dk_u) + rowsum(S_end * dS)
GlaChunkedGradients GlaChunkedBackwardReference(const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v, const at::Tensor& g,
                                                double scale, const at::Tensor& initial_state,
                                                const at::Tensor& d_output,
                                                const at::Tensor& d_final_state,
                                                int64_t chunk_size);

// Gated delta rule (Gated DeltaNet, arXiv 2412.06464), scalar decay and write strength per head:
//   S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = scale * S_t^T q_t
// q, k: [B, H, T, K] (k expected L2-normalised); v: [B, H, T, V]; g (log decay <= 0) and beta
// (in [0, 1]): [B, H, T].
LinearAttentionOutput GatedDeltaRecurrent(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const at::Tensor& g,
                                          const at::Tensor& beta, double scale,
                                          const at::Tensor& initial_state);
LinearAttentionOutput GatedDeltaChunked(const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v, const at::Tensor& g,
                                        const at::Tensor& beta, double scale,
                                        const at::Tensor& initial_state, int64_t chunk_size);
LinearAttentionOutput GatedDeltaChunkedReference(const at::Tensor& q, const at::Tensor& k,
                                                 const at::Tensor& v, const at::Tensor& g,
                                                 const at::Tensor& beta, double scale,
                                                 const at::Tensor& initial_state,
                                                 int64_t chunk_size);

// Gradients of a loss L through GatedDeltaChunked, given d_output = dL/do and d_final_state =
// dL/dS_T (undefined: zeros). d_initial_state is returned also when initial_state is undefined.
struct GatedDeltaChunkedGradients {
  at::Tensor dq, dk, dv;       // like q, k, v
  at::Tensor dg, dbeta;        // [B, H, T]
  at::Tensor d_initial_state;  // [B, H, K, V]
};
// The chunked backward written out with ATen ops (the CUDA kernel's formulas, in the inputs'
// dtype; no autograd). Per chunk, with b_t the cumulative log decay inside it, gamma_t = e^b_t,
// M[t, s] = e^(b_t - b_s) (s <= t), e_s = e^(b_C - b_s), S0 / dS the state / its gradient at the
// chunk start / end, the forward is (UT / WY form)
//   Lm[t, s] = M[t, s] (k_t . k_s) (s < t),  L = diag(beta) Lm,  Tinv = (I + L)^-1,
//   W = Tinv diag(beta) (V - diag(gamma) K S0),  A = M * (Q K^T) (s <= t),
//   O = scale (diag(gamma) Q S0 + A W),  S_end = e^b_C S0 + (diag(e) K)^T W,
// and the backward
//   dW = scale A^T dO + diag(e) K dS,   dR = Tinv^T dW   (a back substitution),
//   dS0 = e^b_C dS + scale (diag(gamma) Q)^T dO - (diag(beta gamma) K)^T dR   (reverse scan),
//   dA = scale dO W^T (s <= t),  dL = -dR W^T (s < t),  E = diag(gamma) dR S0^T,
//   dq = scale diag(gamma) dO S0^T + (dA * M) K,
//   dk = diag(e) W dS^T - diag(beta) E + (dA * M)^T Q + (D + D^T) K,  D = diag(beta) (dL * M),
//   dv = diag(beta) dR,   dbeta_t = v_t . dR_t - k_t . E_t + sum_s dL[t, s] Lm[t, s],
//   db_t = q_t . dq0_t - beta_t k_t . E_t - k_t . dk0_t + sum_s Z[t, s] - sum_u Z[u, t]
//          (+ sum_s k_s . dk0_s + e^b_C sum(S0 * dS) at t = C - 1),
// with dq0 / dk0 the first terms of dq / dk and Z = dL * L + dA * A (s < t); dg is the reverse
// cumulative sum of db inside the chunk.
GatedDeltaChunkedGradients GatedDeltaChunkedBackwardReference(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
    const at::Tensor& beta, double scale, const at::Tensor& initial_state,
    const at::Tensor& d_output, const at::Tensor& d_final_state, int64_t chunk_size);

// Packed variable-length batches ("cu_seqlens"). N sequences are concatenated along time into
// one row of B = 1: q, k, v, g (and beta) are [1, H, T, .] with T = cu_seqlens.back(), and
// sequence n holds tokens [cu_seqlens[n], cu_seqlens[n + 1]) (empty sequences allowed). Each
// sequence starts from its own state, initial_state [N, H, K, V] or undefined (zeros), and
// ends in its own final_state [N, H, K, V]; nothing crosses a boundary, so the result equals
// N separate calls. The offsets are a host vector: the CUDA path sizes its grids from them
// without waiting for the device (a device tensor would cost a synchronisation per call).
// With HYB_CUDA the supported inputs (cuda_ops.h: GlaChunkedVarlenSupported,
// GatedDeltaChunkedVarlenSupported) run in one launch per kernel, with a CUDA backward under
// autograd; everything else runs the *VarlenReference functions (per sequence, the oracle).
// Bad offsets throw c10::Error naming the function, cu_seqlens and the entry at fault.
LinearAttentionOutput GlaChunkedVarlen(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& g, double scale,
                                       const at::Tensor& initial_state,
                                       const std::vector<int64_t>& cu_seqlens, int64_t chunk_size);
LinearAttentionOutput GlaChunkedVarlenReference(const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v, const at::Tensor& g,
                                                double scale, const at::Tensor& initial_state,
                                                const std::vector<int64_t>& cu_seqlens,
                                                int64_t chunk_size);
// GlaChunkedBackwardReference per sequence: d_output [1, H, T, V], d_final_state [N, H, K, V]
// or undefined; gradients packed like the inputs, d_initial_state [N, H, K, V].
GlaChunkedGradients GlaChunkedVarlenBackwardReference(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
    double scale, const at::Tensor& initial_state, const at::Tensor& d_output,
    const at::Tensor& d_final_state, const std::vector<int64_t>& cu_seqlens, int64_t chunk_size);
LinearAttentionOutput GatedDeltaChunkedVarlen(const at::Tensor& q, const at::Tensor& k,
                                              const at::Tensor& v, const at::Tensor& g,
                                              const at::Tensor& beta, double scale,
                                              const at::Tensor& initial_state,
                                              const std::vector<int64_t>& cu_seqlens,
                                              int64_t chunk_size);
LinearAttentionOutput GatedDeltaChunkedVarlenReference(const at::Tensor& q, const at::Tensor& k,
                                                       const at::Tensor& v, const at::Tensor& g,
                                                       const at::Tensor& beta, double scale,
                                                       const at::Tensor& initial_state,
                                                       const std::vector<int64_t>& cu_seqlens,
                                                       int64_t chunk_size);
GatedDeltaChunkedGradients GatedDeltaChunkedVarlenBackwardReference(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
    const at::Tensor& beta, double scale, const at::Tensor& initial_state,
    const at::Tensor& d_output, const at::Tensor& d_final_state,
    const std::vector<int64_t>& cu_seqlens, int64_t chunk_size);
// Checks packed-sequence offsets for `total_tokens` packed tokens: at least two entries, the
// first 0, none decreasing, the last `total_tokens`. Throws c10::Error naming `op`, cu_seqlens
// and the entry at fault.
void CheckCuSeqlens(const std::vector<int64_t>& cu_seqlens, int64_t total_tokens, const char* op);

// One decoding step of each recurrence: q, k, g: [B, H, K]; v: [B, H, V]; beta, g (delta):
// [B, H]; state [B, H, K, V] (not modified). Returns o [B, H, V] and the new state.
LinearAttentionOutput GlaStep(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& g, double scale, const at::Tensor& state);
LinearAttentionOutput GatedDeltaStep(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& g, const at::Tensor& beta, double scale,
                                     const at::Tensor& state);
// The ATen compositions behind the three functions above (always these, whatever the device).
LinearAttentionOutput GlaStepReference(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& g, double scale,
                                       const at::Tensor& state);
LinearAttentionOutput GatedDeltaStepReference(const at::Tensor& q, const at::Tensor& k,
                                              const at::Tensor& v, const at::Tensor& g,
                                              const at::Tensor& beta, double scale,
                                              const at::Tensor& state);

}  // namespace hyb::kernels
