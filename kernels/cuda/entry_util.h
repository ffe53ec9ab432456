// Host helpers shared by the LibTorch entry points of the CUDA kernels (*_entry.cc): device and
// dtype predicates, the launchers' cudaError_t turned into an exception naming the failing
// statement (cuda_check.h), and the device's multiprocessor count for grid sizing.
#pragma once

#include <ATen/ATen.h>

#include "cuda_check.h"

namespace hyb::kernels::cuda {

inline bool OnDevice(const at::Tensor& x, const at::Device& device) {
  return x.defined() && x.is_cuda() && x.device() == device;
}

inline bool IsFloating(const at::Tensor& x) {
  const auto t = x.scalar_type();
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble;
}

// Throws, naming `op` and the statement HYB_CUDA_TRY recorded, unless `err` is cudaSuccess.
inline void Check(cudaError_t err, const char* op) {
  if (err == cudaSuccess) return;
  const CudaErrorSite& site = LastCudaErrorSite();
  TORCH_CHECK(false, op, ": ", cudaGetErrorString(err), " at ", site.file, ":", site.line, " (",
              site.statement, ")");
}

// Multiprocessors of `device` (132, an H100/H200's, when CUDA cannot say).
inline int NumSms(const at::Device& device) {
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device.index()) != cudaSuccess) {
    return 132;
  }
  return n;
}

}  // namespace hyb::kernels::cuda
