// Torch-free launcher of the fused RMSNorm kernel (see rms_norm.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hyb::kernels::cuda {

enum class ElemType { kF32, kBF16, kF16 };

struct RmsNormParams {
  const void* x = nullptr;       // [rows, cols], row-major, contiguous
  const void* weight = nullptr;  // [cols]
  void* y = nullptr;             // [rows, cols]
  int64_t rows = 0;
  int64_t cols = 0;
  float eps = 1e-6f;
  ElemType type = ElemType::kF32;  // of x, weight and y alike
};

// Enqueues the kernel on `stream`; returns the launch error (cudaSuccess on success).
cudaError_t LaunchRmsNorm(const RmsNormParams& params, cudaStream_t stream);

// Threads per block used for a row of `cols` elements (host-testable tile math).
int RmsNormBlockSize(int64_t cols);

}  // namespace hyb::kernels::cuda
