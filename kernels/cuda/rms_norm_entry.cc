// LibTorch boundary of the CUDA RMSNorm kernels: type, shape, device and alignment checks, the
// row layout of strided inputs, output and workspace allocation, current stream, and the
// autograd functions of the vectorised kernels.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cstdint>

#include "cuda_check.h"
#include "device_support.h"
#include "entry_util.h"
#include "hyb/kernels/cuda_norm.h"
#include "hyb/kernels/cuda_ops.h"
#include "rms_norm_launch.h"

namespace hyb::kernels::cuda {
namespace {

ElemType TypeOf(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return ElemType::kF32;
    case at::kBFloat16: return ElemType::kBF16;
    case at::kHalf: return ElemType::kF16;
    default: break;
  }
  TORCH_CHECK(false, "cuda RmsNorm: unsupported dtype ", x.scalar_type());
}

bool IsNormType(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }

bool Aligned16(const at::Tensor& x) { return reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0; }

// x contiguous with a 16-byte aligned data pointer (a copy only when needed).
at::Tensor ContiguousAligned(const at::Tensor& x) {
  at::Tensor c = x.contiguous();
  if (!Aligned16(c)) c = c.clone(at::MemoryFormat::Contiguous);
  return c;
}

int64_t Rows(const at::Tensor& x) { return x.numel() / x.size(-1); }

// x as the kernels read it: in place when its rows can be (see RmsNormGatedSupported), else a
// contiguous copy. Keeps the tensor alive next to its layout.
struct RowInput {
  at::Tensor tensor;
  RmsNormRows rows;
};

RowInput PrepareRows(const at::Tensor& x, int vec) {
  RowInput in;
  if (Aligned16(x) &&
      CollapseRmsNormRows(x.sizes().data(), x.strides().data(), static_cast<int>(x.dim()),
                          &in.rows)) {
    bool strides_ok = true;
    for (const int64_t s : in.rows.strides) strides_ok = strides_ok && s % vec == 0;
    if (strides_ok) {
      in.tensor = x;
      return in;
    }
  }
  in.tensor = ContiguousAligned(x);
  in.rows = RmsNormRows{};
  in.rows.sizes[2] = Rows(x);
  in.rows.strides[2] = x.size(-1);
  return in;
}

// The forward parameters of x, weight and (maybe undefined) gate, without output pointers, next
// to the tensors their pointers point into.
struct Prepared {
  RmsNormGatedParams params;
  RowInput x;
  at::Tensor weight, gate;
  int num_sms = 1;
};

Prepared Prepare(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& gate,
                 double eps) {
  TORCH_CHECK(RmsNormGatedSupported(x, weight, gate), "cuda RmsNormGated: unsupported inputs (x ",
              x.sizes(), " ", x.scalar_type(), ", weight ", weight.sizes(), " ",
              weight.scalar_type(), ")");
  Prepared pr;
  RmsNormGatedParams& p = pr.params;
  p.cols = x.size(-1);
  p.rows = Rows(x);
  p.eps = static_cast<float>(eps);
  p.type = TypeOf(x);
  TORCH_CHECK(PlanRmsNormTile(p.cols, static_cast<int>(x.element_size()), &p.tile),
              "cuda RmsNormGated: no tile for rows of ", p.cols);
  pr.num_sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  p.blocks = RmsNormGridBlocks(p.tile, p.rows, pr.num_sms, kRmsNormForwardThreadsPerSm);
  pr.x = PrepareRows(x, p.tile.vec);
  pr.weight = ContiguousAligned(weight);
  if (gate.defined()) pr.gate = ContiguousAligned(gate);
  p.x = pr.x.tensor.data_ptr();
  p.x_rows = pr.x.rows;
  p.weight = pr.weight.data_ptr();
  p.gate = pr.gate.defined() ? pr.gate.data_ptr() : nullptr;
  return pr;
}

at::Tensor Forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& gate,
                   double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  Prepared pr = Prepare(x, weight, gate, eps);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  pr.params.y = y.data_ptr();
  Check(LaunchRmsNormGated(pr.params, c10::cuda::getCurrentCUDAStream().stream()),
        "cuda RmsNormGated");
  return y;
}

RmsNormGatedGradients Backward(const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& gate, const at::Tensor& d_y, double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  TORCH_CHECK(d_y.defined() && d_y.is_cuda() && d_y.device() == x.device() &&
                  d_y.numel() == x.numel(),
              "cuda RmsNormGated backward: d_y must have x's ", x.numel(), " elements on ",
              x.device());
  Prepared pr = Prepare(x, weight, gate, eps);
  const auto contiguous = x.options().memory_format(at::MemoryFormat::Contiguous);
  RmsNormGatedGradients d;
  d.d_x = at::empty(x.sizes(), contiguous);
  if (gate.defined()) d.d_gate = at::empty(gate.sizes(), contiguous);
  d.d_weight = at::empty({x.size(-1)}, weight.options());
  if (pr.params.rows == 0) {
    d.d_weight.zero_();
    return d;
  }
  pr.params.blocks = RmsNormGridBlocks(pr.params.tile, pr.params.rows, pr.num_sms,
                                       kRmsNormBackwardThreadsPerSm);
  const at::Tensor dy = ContiguousAligned(d_y.to(x.scalar_type()));
  const at::Tensor partial = at::empty({pr.params.blocks, pr.params.cols},
                                       x.options().dtype(at::kFloat));
  RmsNormGatedBackwardParams bp;
  bp.forward = pr.params;
  bp.d_y = dy.data_ptr();
  bp.d_x = d.d_x.data_ptr();
  bp.d_gate = d.d_gate.defined() ? d.d_gate.data_ptr() : nullptr;
  bp.d_weight_partial = partial.data_ptr<float>();
  bp.d_weight = d.d_weight.data_ptr();
  Check(LaunchRmsNormGatedBackward(bp, c10::cuda::getCurrentCUDAStream().stream()),
        "cuda RmsNormGated backward");
  return d;
}

// Autograd nodes. LibTorch 2.x's Function::apply rejects undefined tensor inputs, so the plain
// norm has its own node rather than an undefined gate.
class RmsNormGatedFunction : public torch::autograd::Function<RmsNormGatedFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& x, const at::Tensor& weight,
                                                const at::Tensor& gate, double eps) {
    ctx->save_for_backward({x, weight, gate});
    ctx->saved_data["eps"] = eps;
    return {Forward(x, weight, gate, eps)};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const RmsNormGatedGradients d = Backward(saved[0], saved[1], saved[2], grad_outputs[0],
                                             ctx->saved_data["eps"].toDouble());
    return {d.d_x, d.d_weight, d.d_gate, at::Tensor()};
  }
};

class RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& x, const at::Tensor& weight,
                                                double eps) {
    ctx->save_for_backward({x, weight});
    ctx->saved_data["eps"] = eps;
    return {Forward(x, weight, at::Tensor(), eps)};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const RmsNormGatedGradients d = Backward(saved[0], saved[1], at::Tensor(), grad_outputs[0],
                                             ctx->saved_data["eps"].toDouble());
    return {d.d_x, d.d_weight, at::Tensor()};
  }
};

}  // namespace

bool RmsNormSupported(const at::Tensor& x, const at::Tensor& weight) {
  const auto t = x.scalar_type();
  return x.is_cuda() && weight.is_cuda() && x.get_device() == weight.get_device() &&
         t == weight.scalar_type() && IsNormType(t) && weight.dim() == 1 &&
         x.size(-1) == weight.size(0) && KernelsRunOnDevice(x.device().index(), 0);
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(RmsNormSupported(x, weight), "cuda RmsNorm: unsupported inputs");
  // Rows the vectorised kernel takes go there (no copy of a strided x); the others, of any
  // length, to the one-block-per-row kernel.
  if (RmsNormGatedSupported(x, weight, at::Tensor())) return Forward(x, weight, at::Tensor(), eps);
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
  p.type = TypeOf(x);
  const cudaError_t err = LaunchRmsNorm(p, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "cuda RmsNorm launch failed: ", cudaGetErrorString(err));
  return y;
}

bool RmsNormGatedSupported(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& gate) {
  if (!x.defined() || !weight.defined() || !x.is_cuda() || x.dim() < 1) return false;
  if (!KernelsRunOnDevice(x.device().index(), 0)) return false;
  const auto t = x.scalar_type();
  if (!IsNormType(t) || !weight.is_cuda() || weight.device() != x.device() ||
      weight.scalar_type() != t || weight.dim() != 1 || weight.size(0) != x.size(-1)) {
    return false;
  }
  if (gate.defined() && (!gate.is_cuda() || gate.device() != x.device() ||
                         gate.scalar_type() != t || gate.numel() != x.numel())) {
    return false;
  }
  RmsNormTile tile;
  return PlanRmsNormTile(x.size(-1), static_cast<int>(x.element_size()), &tile);
}

at::Tensor RmsNormGated(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& gate,
                        double eps) {
  return Forward(x, weight, gate.defined() ? gate.reshape(x.sizes()) : gate, eps);
}

at::Tensor RmsNormGatedWithGrad(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& gate, double eps) {
  if (!gate.defined()) return RmsNormWithGrad(x, weight, eps);
  TORCH_CHECK(RmsNormGatedSupported(x, weight, gate), "cuda RmsNormGatedWithGrad: unsupported");
  // The reshape is autograd's: the gate's gradient comes back in the gate's own sizes.
  return RmsNormGatedFunction::apply(x, weight, gate.reshape(x.sizes()), eps)[0];
}

at::Tensor RmsNormWithGrad(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(RmsNormGatedSupported(x, weight, at::Tensor()), "cuda RmsNormWithGrad: unsupported");
  return RmsNormFunction::apply(x, weight, eps)[0];
}

RmsNormGatedGradients RmsNormGatedBackward(const at::Tensor& x, const at::Tensor& weight,
                                           const at::Tensor& gate, const at::Tensor& d_y,
                                           double eps) {
  at::NoGradGuard no_grad;
  RmsNormGatedGradients d =
      Backward(x, weight, gate.defined() ? gate.reshape(x.sizes()) : gate, d_y, eps);
  if (d.d_gate.defined()) d.d_gate = d.d_gate.view(gate.sizes());
  return d;
}

}  // namespace hyb::kernels::cuda
