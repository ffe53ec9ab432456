// LibTorch boundary of the CUDA RMSNorm: type and shape checks, stream, output allocation.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "hyb/kernels/cuda_ops.h"
#include "rms_norm_launch.h"

namespace hyb::kernels::cuda {

bool RmsNormSupported(const at::Tensor& x, const at::Tensor& weight) {
  const auto t = x.scalar_type();
  return x.is_cuda() && weight.is_cuda() && x.get_device() == weight.get_device() &&
         t == weight.scalar_type() && (t == at::kFloat || t == at::kBFloat16 || t == at::kHalf) &&
         weight.dim() == 1 && x.size(-1) == weight.size(0);
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(RmsNormSupported(x, weight), "cuda RmsNorm: unsupported inputs");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  at::Tensor y = at::empty_like(xc);
  RmsNormParams p;
  p.x = xc.data_ptr();
  p.weight = wc.data_ptr();
  p.y = y.data_ptr();
  p.cols = x.size(-1);
  p.rows = x.numel() / std::max<int64_t>(p.cols, 1);
  p.eps = static_cast<float>(eps);
  p.type = x.scalar_type() == at::kFloat      ? ElemType::kF32
           : x.scalar_type() == at::kBFloat16 ? ElemType::kBF16
                                              : ElemType::kF16;
  const cudaError_t err = LaunchRmsNorm(p, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "cuda RmsNorm launch failed: ", cudaGetErrorString(err));
  return y;
}

}  // namespace hyb::kernels::cuda
