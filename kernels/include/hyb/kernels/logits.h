// Per-row scores of a language model's logits for the validation metrics: the log-probability
// of a target token, and the KL divergence from a teacher's distribution. On a GPU the fused
// kernels (kernels/cuda/logits_score.cu) read each [V] row once in its own dtype; elsewhere, and
// as their oracle, a composition of ATen ops.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace hyb::kernels {

// logits: [N, V] (V >= 1, any float dtype, any row stride); targets: [N] integer token ids.
// Returns [N]: log p(targets[i]) = logits[i, targets[i]] - logsumexp(logits[i, :]), computed and
// returned in fp64 for fp64 logits and in fp32 otherwise, on the logits' device.
// Targets outside [0, V): throws c10::Error when the targets are on the CPU (checked on the host,
// no device sync); when they are on a GPU the kernel cannot report them without a sync, so the
// row's result is NaN instead. A row whose logits are all -inf gives NaN (as logsumexp does).
// Dispatches to the fused CUDA kernel (HYB_CUDA builds) for CUDA fp32/bf16/fp16 logits with unit
// column stride when no gradient is needed, else runs TokenLogProbsReference.
at::Tensor TokenLogProbs(const at::Tensor& logits, const at::Tensor& targets);

// teacher, logits: [N, V] on one device (teacher is moved to the logits' device otherwise).
// Returns [N]: KL(softmax(teacher[i]) || softmax(logits[i])) =
// sum_j p_j (log p_j - log q_j), computed and returned in fp64 when either input is fp64 and in
// fp32 otherwise. A term with p_j = 0 because teacher[i, j] = -inf counts 0 (0 log 0 = 0); a row
// whose teacher or student logits are all -inf gives NaN. Dispatches to the fused CUDA kernel for
// CUDA fp32/bf16/fp16 inputs (the two dtypes may differ) with unit column stride when no gradient
// is needed, else runs RowKlReference.
at::Tensor RowKl(const at::Tensor& teacher, const at::Tensor& logits);

// The ATen-ops implementations, always built and the oracles of the kernels: the formulas
// hyb::worker's scoring used before these functions existed, so that switching to them leaves
// CPU results bit-identical for finite logits. x = logits.to(math);
// x.gather(1, targets) - x.logsumexp(1) and (p.exp() * (p - q)).sum(1) with p, q the log_softmax
// of teacher and logits in `math` (terms with p = -inf, NaN there before, now 0).
at::Tensor TokenLogProbsReference(const at::Tensor& logits, const at::Tensor& targets);
at::Tensor RowKlReference(const at::Tensor& teacher, const at::Tensor& logits);

namespace cuda {

// Entry points of the fused kernels (defined only when built with HYB_CUDA=ON; callers guard with
// HYB_WITH_CUDA). They check types and shapes, throw c10::Error on unsupported inputs, and run on
// the current stream without synchronising. Forward only (no autograd).

// True for logits [N, V] on a CUDA device, fp32/bf16/fp16, V >= 1, unit column stride (any row
// stride), and targets [N] int64 on the same device.
bool TokenLogProbsSupported(const at::Tensor& logits, const at::Tensor& targets);
// [N] fp32; NaN for a target outside [0, V).
at::Tensor TokenLogProbs(const at::Tensor& logits, const at::Tensor& targets);

// True for teacher and logits [N, V] on one CUDA device, each fp32/bf16/fp16 (not necessarily
// the same), V >= 1, unit column stride (any row strides).
bool RowKlSupported(const at::Tensor& teacher, const at::Tensor& logits);
// [N] fp32.
at::Tensor RowKl(const at::Tensor& teacher, const at::Tensor& logits);

// Threads per block the kernels use for rows of `cols` elements (host-testable launch math).
int LogitsScoreBlockSize(int64_t cols);

}  // namespace cuda
}  // namespace hyb::kernels
