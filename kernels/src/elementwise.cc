// Dispatch of the fused elementwise pieces (elementwise.h): the CUDA kernels without autograd,
// else the LibTorch composition.
#include "hyb/kernels/elementwise.h"

#include <ATen/ATen.h>

#ifdef HYB_WITH_CUDA
#include "hyb/kernels/cuda_elementwise.h"
#endif
#include "needs_grad.h"

namespace hyb::kernels {

at::Tensor RotaryReference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const at::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  const at::Tensor rotated = at::cat({-x2, x1}, -1);
  return x * cos + rotated * sin;
}

at::Tensor Rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
#ifdef HYB_WITH_CUDA
  if (!NeedsGrad({x, cos, sin}) && cuda::RotarySupported(x, cos, sin)) {
    return cuda::Rotary(x, cos, sin);
  }
#endif
  return RotaryReference(x, cos, sin);
}

at::Tensor SiluMulReference(const at::Tensor& gate, const at::Tensor& up) {
  return at::silu(gate) * up;
}

at::Tensor SiluMul(const at::Tensor& gate, const at::Tensor& up) {
#ifdef HYB_WITH_CUDA
  if (!NeedsGrad({gate, up}) && cuda::SiluMulSupported(gate, up)) return cuda::SiluMul(gate, up);
#endif
  return SiluMulReference(gate, up);
}

}  // namespace hyb::kernels
