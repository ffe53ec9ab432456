// LibTorch boundary of the CUDA short convolution kernels: type, shape, device and alignment
// checks, u's strides, the decoding cache, output and workspace allocation, current stream, and
// the autograd function.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>

#include "cuda_check.h"
#include "device_support.h"
#include "entry_util.h"
#include "hyb/kernels/cuda_conv.h"
#include "short_conv_launch.h"

namespace hyb::kernels::cuda {
namespace {

ShortConvType TypeOf(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return ShortConvType::kF32;
    case at::kBFloat16: return ShortConvType::kBF16;
    case at::kHalf: return ShortConvType::kF16;
    default: break;
  }
  TORCH_CHECK(false, "cuda ShortConv: unsupported dtype ", x.scalar_type());
}

bool IsConvType(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

int64_t VecBytes(const at::Tensor& x) {
  return kShortConvVec * static_cast<int64_t>(x.element_size());
}

bool AlignedVec(const at::Tensor& x) {
  return reinterpret_cast<uintptr_t>(x.data_ptr()) % static_cast<uintptr_t>(VecBytes(x)) == 0;
}

// x contiguous with a data pointer on a whole vector (a copy only when needed).
at::Tensor ContiguousAligned(const at::Tensor& x) {
  at::Tensor c = x.contiguous();
  if (!AlignedVec(c)) c = c.clone(at::MemoryFormat::Contiguous);
  return c;
}

// u as the kernels read it: in place when its rows can be (see ShortConvSupported), else a
// contiguous copy.
at::Tensor ReadableInput(const at::Tensor& u) {
  const bool in_place = (u.size(2) == 1 || u.stride(2) == 1) && AlignedVec(u) &&
                        StrideOf(u, 0) % kShortConvVec == 0 &&
                        StrideOf(u, 1) % kShortConvVec == 0;
  return in_place ? u : ContiguousAligned(u);
}

// The forward parameters of u, w and prev (undefined or empty: zeros), without output pointers,
// next to the tensors their pointers point into.
struct Prepared {
  ShortConvParams params;
  at::Tensor u, w, prev;
};

Prepared Prepare(const at::Tensor& u, const at::Tensor& w, const at::Tensor& prev, bool silu,
                 int blocks_per_sm) {
  const at::Tensor prev_or_none = prev.defined() && prev.numel() > 0 ? prev : at::Tensor();
  TORCH_CHECK(ShortConvSupported(u, w, prev_or_none), "cuda ShortConv: unsupported inputs (u ",
              u.sizes(), " ", u.scalar_type(), ", w ", w.sizes(), " ", w.scalar_type(),
              prev_or_none.defined() ? ", previous inputs " : "",
              prev_or_none.defined() ? prev_or_none.sizes() : at::IntArrayRef{}, ")");
  Prepared pr;
  pr.u = ReadableInput(u);
  pr.w = w.contiguous();
  pr.prev = prev_or_none;
  ShortConvParams& p = pr.params;
  p.batch = u.size(0);
  p.time = u.size(1);
  p.channels = u.size(2);
  p.kernel = static_cast<int>(w.size(1));
  p.silu = silu;
  p.type = TypeOf(u);
  p.u = pr.u.data_ptr();
  p.u_stride_b = StrideOf(pr.u, 0);
  p.u_stride_t = StrideOf(pr.u, 1);
  p.w = pr.w.data_ptr();
  p.prev = pr.prev.defined() ? pr.prev.data_ptr() : nullptr;
  const int num_sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  p.grid = PlanShortConvGrid(p.batch, p.time, p.channels, num_sms, blocks_per_sm);
  return pr;
}

// Runs the prepared forward: the output [B, T, C] in u's dtype; with `cache` (see ShortConv),
// the last K-1 inputs go to *cache (in place when defined: then pr's previous inputs are it).
at::Tensor Forward(Prepared pr, const at::Tensor& u, at::Tensor* cache) {
  ShortConvParams& p = pr.params;
  at::Tensor y = at::empty({p.batch, p.time, p.channels},
                           u.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor new_cache;
  if (cache != nullptr && !cache->defined()) {
    new_cache = at::empty({p.batch, p.channels, p.kernel - 1}, y.options());
  }
  if (p.batch * p.time == 0) {
    // Nothing to convolve: a kept cache stays as it is, a new one holds the zero inputs.
    if (new_cache.defined()) *cache = new_cache.zero_();
    return y;
  }
  p.y = y.data_ptr();
  if (cache != nullptr) {
    p.cache_out = new_cache.defined() ? new_cache.data_ptr() : cache->data_ptr();
  }
  Check(LaunchShortConv(p, c10::cuda::getCurrentCUDAStream().stream()), "cuda ShortConv");
  if (new_cache.defined()) *cache = new_cache;
  return y;
}

ShortConvGradients Backward(const at::Tensor& u, const at::Tensor& w, const at::Tensor& prev,
                            const at::Tensor& d_out, bool silu) {
  const c10::cuda::CUDAGuard guard(u.device());
  TORCH_CHECK(d_out.defined() && d_out.is_cuda() && d_out.device() == u.device() &&
                  d_out.numel() == u.numel(),
              "cuda ShortConv backward: d_out must have u's ", u.numel(), " elements on ",
              u.device());
  Prepared pr = Prepare(u, w, prev, silu, kShortConvBackwardBlocksPerSm);
  const ShortConvParams& p = pr.params;
  ShortConvGradients d;
  d.d_u = at::empty({p.batch, p.time, p.channels},
                    u.options().memory_format(at::MemoryFormat::Contiguous));
  d.d_w = at::empty({p.channels, p.kernel},
                    w.options().memory_format(at::MemoryFormat::Contiguous));
  if (p.batch * p.time == 0) {
    d.d_w.zero_();
    return d;
  }
  const at::Tensor dy = ContiguousAligned(d_out.to(u.scalar_type()));
  const at::Tensor partial =
      at::empty({p.grid.blocks_y, p.channels * p.kernel}, u.options().dtype(at::kFloat));
  ShortConvBackwardParams bp;
  bp.forward = p;
  bp.d_out = dy.data_ptr();
  bp.d_u = d.d_u.data_ptr();
  bp.d_w_partial = partial.data_ptr<float>();
  bp.d_w = d.d_w.data_ptr();
  Check(LaunchShortConvBackward(bp, c10::cuda::getCurrentCUDAStream().stream()),
        "cuda ShortConv backward");
  return d;
}

// The autograd node. LibTorch 2.x's Function::apply rejects undefined tensor inputs, so "no
// previous inputs" is an empty prev.
class ShortConvFunction : public torch::autograd::Function<ShortConvFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& u, const at::Tensor& w,
                                                const at::Tensor& prev, bool silu) {
    ctx->save_for_backward({u, w, prev});
    ctx->saved_data["silu"] = silu;
    const c10::cuda::CUDAGuard guard(u.device());
    return {Forward(Prepare(u, w, prev, silu, kShortConvForwardBlocksPerSm), u, nullptr)};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const ShortConvGradients d = Backward(saved[0], saved[1], saved[2], grad_outputs[0],
                                          ctx->saved_data["silu"].toBool());
    return {d.d_u, d.d_w, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

bool ShortConvSupported(const at::Tensor& u, const at::Tensor& w, const at::Tensor& cache) {
  if (!u.defined() || !w.defined() || !u.is_cuda() || u.dim() != 3 || w.dim() != 2) return false;
  if (!KernelsRunOnDevice(u.device().index(), 0)) return false;
  const auto t = u.scalar_type();
  if (!IsConvType(t) || !w.is_cuda() || w.device() != u.device() || w.scalar_type() != t) {
    return false;
  }
  const int64_t c = u.size(2), k = w.size(1);
  if (c <= 0 || c % kShortConvVec != 0 || w.size(0) != c || k < kShortConvMinK ||
      k > kShortConvMaxK) {
    return false;
  }
  if (!cache.defined()) return true;
  return cache.is_cuda() && cache.device() == u.device() && cache.scalar_type() == t &&
         cache.dim() == 3 && cache.size(0) == u.size(0) && cache.size(1) == c &&
         cache.size(2) == k - 1 && cache.is_contiguous();
}

at::Tensor ShortConv(const at::Tensor& u, const at::Tensor& w, at::Tensor* cache, bool silu) {
  at::NoGradGuard no_grad;
  const c10::cuda::CUDAGuard guard(u.device());
  const at::Tensor prev = cache != nullptr ? *cache : at::Tensor();
  return Forward(Prepare(u, w, prev, silu, kShortConvForwardBlocksPerSm), u, cache);
}

at::Tensor ShortConvWithGrad(const at::Tensor& u, const at::Tensor& w, const at::Tensor& prev,
                             bool silu) {
  TORCH_CHECK(ShortConvSupported(u, w, prev), "cuda ShortConvWithGrad: unsupported inputs");
  const at::Tensor prev_or_empty = prev.defined() ? prev.detach() : at::empty({0}, u.options());
  return ShortConvFunction::apply(u, w, prev_or_empty, silu)[0];
}

ShortConvGradients ShortConvBackward(const at::Tensor& u, const at::Tensor& w,
                                     const at::Tensor& prev, const at::Tensor& d_out, bool silu) {
  at::NoGradGuard no_grad;
  return Backward(u, w, prev, d_out, silu);
}

}  // namespace hyb::kernels::cuda
