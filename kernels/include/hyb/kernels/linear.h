// y = x W^T + b, the projection every layer is made of.
#pragma once

#include <ATen/ATen.h>

namespace hyb::kernels {

// For a single row on the CPU (decoding one token of one sequence) this is a matrix-vector
// product: OpenBLAS's gemm packs W into its panel layout on every call, which for one row costs
// more than the product itself (perf showed the packing on top of a decode step's profile).
inline at::Tensor Linear(const at::Tensor& x, const at::Tensor& w,
                         const at::Tensor& b = at::Tensor()) {
  if (x.device().is_cpu() && x.dim() >= 1 && x.numel() == x.size(-1) && w.dim() == 2) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = w.size(0);
    at::Tensor y = at::mv(w, x.reshape({-1}));
    if (b.defined()) y = y + b;
    return y.view(shape);
  }
  return at::linear(x, w, b);
}

}  // namespace hyb::kernels
