#include "hyb/kernels/norm.h"

#include <torch/torch.h>

#include "needs_grad.h"

#ifdef HYB_WITH_CUDA
#include "hyb/kernels/cuda_norm.h"
#include "hyb/kernels/cuda_ops.h"
#endif

namespace hyb::kernels {
namespace {

void CheckShapes(const at::Tensor& x, const at::Tensor& weight, const char* op) {
  TORCH_CHECK(x.dim() >= 1 && weight.dim() == 1 && x.size(-1) == weight.size(0), op,
              ": last dim of x ", x.sizes(), " does not match weight ", weight.sizes());
}

}  // namespace

at::Tensor RmsNormReference(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Tensor x32 = x.to(at::kFloat);
  const at::Tensor inv = at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * (x32 * inv).to(x.scalar_type());
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  CheckShapes(x, weight, "RmsNorm");
#ifdef HYB_WITH_CUDA
  if (!NeedsGrad({x, weight})) {
    if (cuda::RmsNormSupported(x, weight)) return cuda::RmsNorm(x, weight, eps);
  } else if (cuda::RmsNormGatedSupported(x, weight, at::Tensor())) {
    return cuda::RmsNormWithGrad(x, weight, eps);
  }
#endif
  return RmsNormReference(x, weight, eps);
}

at::Tensor RmsNormGatedReference(const at::Tensor& x, const at::Tensor& weight,
                                 const at::Tensor& gate, double eps) {
  return RmsNormReference(x, weight, eps) * at::silu(gate.reshape(x.sizes()));
}

at::Tensor RmsNormGated(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& gate,
                        double eps) {
  CheckShapes(x, weight, "RmsNormGated");
  TORCH_CHECK(gate.defined() && gate.numel() == x.numel(), "RmsNormGated: gate ",
              gate.defined() ? gate.sizes() : at::IntArrayRef{}, " does not have the ",
              x.numel(), " elements of x ", x.sizes());
#ifdef HYB_WITH_CUDA
  if (cuda::RmsNormGatedSupported(x, weight, gate)) {
    return NeedsGrad({x, weight, gate}) ? cuda::RmsNormGatedWithGrad(x, weight, gate, eps)
                                        : cuda::RmsNormGated(x, weight, gate, eps);
  }
#endif
  return RmsNormGatedReference(x, weight, gate, eps);
}

}  // namespace hyb::kernels
