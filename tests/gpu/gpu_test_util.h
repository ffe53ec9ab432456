// What the CUDA kernel tests (tests/gpu/*_cuda_test.cc) share: the skip without a device, the
// relative error they bound results by, and the allocator poisoning that exposes unwritten
// outputs.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <limits>

// Skips the test (with the reason) on a machine without a CUDA device.
#define HYB_REQUIRE_CUDA_KERNELS() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device present"

namespace hyb {

// ||got - want|| / ||want|| in fp64.
inline double RelErr(const at::Tensor& got, const at::Tensor& want) {
  const at::Tensor w = want.to(at::kDouble);
  return ((got.to(at::kDouble) - w).norm() / (w.norm() + 1e-30)).item<double>();
}

// Fills the caching allocator's free blocks (at least `bytes`) with NaN, so that an output
// element a kernel does not write (or a partial result it should skip) shows up as NaN instead
// of a stale value. CUDA builds only.
inline void PoisonAllocator(int64_t bytes) {
  at::full({bytes / 4 + 1024}, std::numeric_limits<float>::quiet_NaN(),
           at::TensorOptions().device(at::kCUDA).dtype(at::kFloat));
}

}  // namespace hyb
