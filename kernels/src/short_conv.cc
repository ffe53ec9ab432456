#include "hyb/kernels/short_conv.h"

#include <torch/torch.h>

#include <algorithm>
#include <vector>

#include "needs_grad.h"

#ifdef HYB_WITH_CUDA
#include "hyb/kernels/cuda_conv.h"
#endif

namespace hyb::kernels {
namespace {

void CheckShapes(const at::Tensor& u, const at::Tensor& w, const at::Tensor* cache) {
  TORCH_CHECK(u.dim() == 3 && w.dim() == 2 && u.size(2) == w.size(0) && w.size(1) >= 1,
              "ShortConv: u ", u.sizes(), " must be [B, T, C] and w ", w.sizes(), " [C, K]");
  if (cache == nullptr || !cache->defined()) return;
  TORCH_CHECK(cache->dim() == 3 && cache->size(0) == u.size(0) && cache->size(1) == u.size(2),
              "ShortConv: cache ", cache->sizes(), " must be [B, C, K-1] for u ", u.sizes());
}

#ifdef HYB_WITH_CUDA
// *cache = the last K-1 inputs of cat(prev or zeros, u) over time, in place when it fits (the
// reference's rule), without gradients. Reads only u's last K-1 steps.
void KeepLastInputs(const at::Tensor& prev, const at::Tensor& u, int64_t k, at::Tensor* cache) {
  at::NoGradGuard no_grad;
  const int64_t b = u.size(0), t = u.size(1), c = u.size(2);
  const int64_t tail = std::min(t, k - 1);
  const at::Tensor before = prev.defined() ? prev : at::zeros({b, c, k - 1}, u.options());
  const at::Tensor recent = u.detach().narrow(1, t - tail, tail).transpose(1, 2);  // [B, C, tail]
  const at::Tensor full = at::cat({before.to(u.scalar_type()), recent}, 2);
  const at::Tensor last = full.narrow(2, full.size(2) - (k - 1), k - 1);
  if (cache->defined() && cache->sizes() == last.sizes()) {
    cache->copy_(last);
  } else {
    *cache = last.clone();
  }
}
#endif

}  // namespace

at::Tensor ShortConvReference(const at::Tensor& u, const at::Tensor& w, at::Tensor* cache,
                              bool silu) {
  CheckShapes(u, w, cache);
  const int64_t b = u.size(0), c = u.size(2), k = w.size(1);
  const at::Tensor ut = u.transpose(1, 2);  // [B, C, T]
  at::Tensor prev =
      (cache != nullptr && cache->defined()) ? *cache : at::zeros({b, c, k - 1}, u.options());
  const at::Tensor full = at::cat({prev, ut}, 2);  // [B, C, K-1+T]
  const std::vector<int64_t> one = {1}, zero = {0};
  const at::Tensor y = at::conv1d(full, w.unsqueeze(1), at::Tensor(), at::IntArrayRef(one),
                                  at::IntArrayRef(zero), at::IntArrayRef(one), c);  // [B, C, T]
  if (cache != nullptr) {
    const at::Tensor last = full.narrow(2, full.size(2) - (k - 1), k - 1);
    // In place when it fits: a captured decoding step must keep writing the same buffer.
    if (cache->defined() && cache->sizes() == last.sizes()) {
      cache->copy_(last);
    } else {
      *cache = last.clone();
    }
  }
  const at::Tensor out = y.transpose(1, 2);
  return silu ? at::silu(out) : out;
}

at::Tensor ShortConv(const at::Tensor& u, const at::Tensor& w, at::Tensor* cache, bool silu) {
  CheckShapes(u, w, cache);
#ifdef HYB_WITH_CUDA
  const at::Tensor kept = cache != nullptr ? *cache : at::Tensor();
  if (cuda::ShortConvSupported(u, w, kept)) {
    if (!NeedsGrad({u, w})) return cuda::ShortConv(u, w, cache, silu);
    // The autograd node reads the previous inputs again in its backward: a copy when the cache
    // is about to be overwritten.
    const at::Tensor prev = kept.defined() ? kept.detach().clone() : at::Tensor();
    at::Tensor y = cuda::ShortConvWithGrad(u, w, prev, silu);
    if (cache != nullptr) KeepLastInputs(prev, u, w.size(1), cache);
    return y;
  }
#endif
  return ShortConvReference(u, w, cache, silu);
}

}  // namespace hyb::kernels
