// Whether a call must record an autograd graph: the dispatch points send such calls to the
// autograd-aware path (a CUDA autograd function or the LibTorch reference) and the others to the
// forward-only CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>

namespace hyb::kernels {

inline bool NeedsGrad(std::initializer_list<at::Tensor> xs) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor& x : xs) {
    if (x.defined() && x.requires_grad()) return true;
  }
  return false;
}

}  // namespace hyb::kernels
