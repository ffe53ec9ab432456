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

// An optional initial state as an autograd function's input: LibTorch 2.x records every tensor
// input's device, which an undefined tensor lacks, so "no initial state" travels as an empty
// fp32 tensor on q's device (StateInput), and the function's forward turns it back into an
// undefined one (StateOrNone).
inline at::Tensor StateInput(const at::Tensor& initial_state, const at::Tensor& q) {
  return initial_state.defined() ? initial_state : at::empty({0}, q.options().dtype(at::kFloat));
}
inline at::Tensor StateOrNone(const at::Tensor& s0) {
  return s0.numel() == 0 ? at::Tensor() : s0;
}

// A dim's stride as the kernels step it: 0 for a dim of size 1 (its stride is never stepped).
inline int64_t StrideOf(const at::Tensor& x, int64_t dim) {
  return x.size(dim) == 1 ? 0 : x.stride(dim);
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
