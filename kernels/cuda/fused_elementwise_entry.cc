// LibTorch boundary of the fused elementwise kernels: dtype, device, shape and stride checks,
// output allocation in the input's layout, current stream.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

#include "device_support.h"
#include "entry_util.h"
#include "fused_elementwise_launch.h"
#include "hyb/kernels/cuda_elementwise.h"

namespace hyb::kernels::cuda {
namespace {

bool Bf16On(const at::Tensor& t, const at::Device& device) {
  return OnDevice(t, device) && t.scalar_type() == at::kBFloat16;
}

bool Aligned4(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 4 == 0; }

}  // namespace

bool RotarySupported(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  if (!x.defined() || !x.is_cuda() || x.dim() != 4) return false;
  if (!KernelsRunOnDevice(x.device().index(), 0)) return false;
  const at::Device device = x.device();
  if (!Bf16On(x, device) || !Bf16On(cos, device) || !Bf16On(sin, device)) return false;
  const int64_t t = x.size(2), d = x.size(3);
  if (d % 4 != 0 || (x.stride(3) != 1 && d > 1)) return false;
  for (int64_t i = 0; i < 3; ++i) {
    if (StrideOf(x, i) % 2 != 0) return false;
  }
  for (const at::Tensor* c : {&cos, &sin}) {
    if (c->dim() != 2 || c->size(0) != t || c->size(1) != d || !c->is_contiguous() ||
        !Aligned4(*c)) {
      return false;
    }
  }
  return Aligned4(x);
}

at::Tensor Rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(RotarySupported(x, cos, sin), "cuda Rotary: unsupported inputs");
  const c10::cuda::CUDAGuard guard(x.device());
  // x's layout, as x * cos has (a [B, H, T, D] view of a [B, T, H, D] projection keeps it):
  // empty_like keeps x's strides when x is dense, else gives a contiguous tensor; the kernel
  // writes through out's own strides either way.
  const at::Tensor out = at::empty_like(x);
  RotaryParams p{x.data_ptr(),     cos.data_ptr(),  sin.data_ptr(), out.data_ptr(),
                 x.size(0),        x.size(1),       x.size(2),      x.size(3),
                 StrideOf(x, 0),   StrideOf(x, 1),  StrideOf(x, 2), StrideOf(out, 0),
                 StrideOf(out, 1), StrideOf(out, 2)};
  Check(LaunchRotaryBf16(p, at::cuda::getCurrentCUDAStream().stream()), "cuda Rotary");
  return out;
}

bool SiluMulSupported(const at::Tensor& gate, const at::Tensor& up) {
  if (!gate.defined() || !gate.is_cuda()) return false;
  if (!KernelsRunOnDevice(gate.device().index(), 0)) return false;
  return Bf16On(gate, gate.device()) && Bf16On(up, gate.device()) && gate.sizes() == up.sizes() &&
         gate.is_contiguous() && up.is_contiguous();
}

at::Tensor SiluMul(const at::Tensor& gate, const at::Tensor& up) {
  TORCH_CHECK(SiluMulSupported(gate, up), "cuda SiluMul: unsupported inputs");
  const c10::cuda::CUDAGuard guard(gate.device());
  at::Tensor out = at::empty(gate.sizes(), gate.options());
  Check(LaunchSiluMulBf16(gate.data_ptr(), up.data_ptr(), out.data_ptr(), gate.numel(),
                          at::cuda::getCurrentCUDAStream().stream()),
        "cuda SiluMul");
  return out;
}

}  // namespace hyb::kernels::cuda
