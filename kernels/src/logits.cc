#include "hyb/kernels/logits.h"

#include <torch/torch.h>

#include <limits>

#include "needs_grad.h"

namespace hyb::kernels {
namespace {

void CheckRows(const at::Tensor& logits, const char* what) {
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) >= 1, what, ": expected logits [N, V] with V >= 1, got [",
              logits.sizes(), "]");
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), what, ": logits of type ",
              logits.scalar_type(), " are not floating point");
}

// Targets on the CPU are checked here, without any device sync; a message names the first one
// outside [0, V).
void CheckTargetsOnHost(const at::Tensor& targets, int64_t vocab) {
  if (!targets.device().is_cpu() || targets.numel() == 0) return;
  const at::Tensor bad = (targets < 0).logical_or_(targets >= vocab).nonzero();
  if (bad.numel() == 0) return;
  const int64_t row = bad[0][0].item<int64_t>();
  TORCH_CHECK(false, "TokenLogProbs: target ", targets[row].item<int64_t>(), " of row ", row,
              " is outside the vocabulary [0, ", vocab, ")");
}

}  // namespace

at::Tensor TokenLogProbsReference(const at::Tensor& logits, const at::Tensor& targets) {
  CheckRows(logits, "TokenLogProbs");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0), "TokenLogProbs: targets [",
              targets.sizes(), "] do not match logits [", logits.sizes(), "]");
  const int64_t vocab = logits.size(1);
  CheckTargetsOnHost(targets, vocab);
  const at::ScalarType math = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor x = logits.to(math);  // [N, V]
  at::Tensor index = targets.to(logits.device(), at::kLong);
  if (targets.device().is_cpu()) {
    return x.gather(1, index.unsqueeze(1)).squeeze(1) - x.logsumexp(1);
  }
  // Device targets were not checked: gather a valid index and answer NaN for the others (a
  // gather past the row would be a device-side assert).
  const at::Tensor valid = (index >= 0).logical_and_(index < vocab);
  index = index.clamp(0, vocab - 1);
  const at::Tensor logp = x.gather(1, index.unsqueeze(1)).squeeze(1) - x.logsumexp(1);
  return logp.masked_fill(valid.logical_not(), std::numeric_limits<double>::quiet_NaN());
}

at::Tensor RowKlReference(const at::Tensor& teacher, const at::Tensor& logits) {
  CheckRows(logits, "RowKl");
  CheckRows(teacher, "RowKl");
  TORCH_CHECK(teacher.sizes() == logits.sizes(), "RowKl: teacher [", teacher.sizes(),
              "] and logits [", logits.sizes(), "] differ in shape");
  const at::ScalarType math =
      logits.scalar_type() == at::kDouble || teacher.scalar_type() == at::kDouble ? at::kDouble
                                                                                 : at::kFloat;
  const at::Tensor q = at::log_softmax(logits.to(math), 1);                    // [N, V]
  const at::Tensor p = at::log_softmax(teacher.to(logits.device(), math), 1);  // [N, V]
  // 0 * (-inf - q) is NaN; a token the teacher rules out contributes 0 (0 log 0 = 0).
  return (p.exp() * (p - q)).masked_fill_(p == -std::numeric_limits<double>::infinity(), 0).sum(1);
}

at::Tensor TokenLogProbs(const at::Tensor& logits, const at::Tensor& targets) {
#ifdef HYB_WITH_CUDA
  if (logits.is_cuda() && !NeedsGrad({logits, targets}) && logits.dim() == 2 &&
      targets.dim() == 1 && targets.size(0) == logits.size(0) && logits.size(1) >= 1) {
    // Host targets are checked here (no sync), then copied; device ones give NaN rows.
    CheckTargetsOnHost(targets, logits.size(1));
    const at::Tensor t = targets.to(logits.device(), at::kLong);
    if (cuda::TokenLogProbsSupported(logits, t)) return cuda::TokenLogProbs(logits, t);
  }
#endif
  return TokenLogProbsReference(logits, targets);
}

at::Tensor RowKl(const at::Tensor& teacher, const at::Tensor& logits) {
#ifdef HYB_WITH_CUDA
  if (logits.is_cuda() && !NeedsGrad({teacher, logits})) {
    const at::Tensor t = teacher.to(logits.device());
    if (cuda::RowKlSupported(t, logits)) return cuda::RowKl(t, logits);
  }
#endif
  return RowKlReference(teacher, logits);
}

}  // namespace hyb::kernels
