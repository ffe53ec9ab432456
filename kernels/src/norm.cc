#include "hyb/kernels/norm.h"

#include <torch/torch.h>

#include "hyb/kernels/cuda_ops.h"

namespace hyb::kernels {

at::Tensor RmsNormReference(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Tensor x32 = x.to(at::kFloat);
  const at::Tensor inv = at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * (x32 * inv).to(x.scalar_type());
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.size(-1) == weight.size(0), "RmsNorm: last dim ", x.size(-1),
              " does not match weight size ", weight.size(0));
#ifdef HYB_WITH_CUDA
  // The fused kernel has no backward: use it only when no gradient is needed.
  const bool needs_grad = at::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad());
  if (!needs_grad && cuda::RmsNormSupported(x, weight)) return cuda::RmsNorm(x, weight, eps);
#endif
  return RmsNormReference(x, weight, eps);
}

}  // namespace hyb::kernels
