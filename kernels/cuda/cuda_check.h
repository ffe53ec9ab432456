// CUDA error checks that record the failing statement, file and line (torch-free: launchers
// return the cudaError_t; the LibTorch entry points turn it into an exception with the site).
#pragma once

#include <cuda_runtime.h>

namespace hyb::kernels::cuda {

// Where the last failure seen by HYB_CUDA_TRY on this thread happened.
struct CudaErrorSite {
  const char* statement = "";
  const char* file = "";
  int line = 0;
};

inline CudaErrorSite& LastCudaErrorSite() {
  thread_local CudaErrorSite site;
  return site;
}

}  // namespace hyb::kernels::cuda

// Evaluates `stmt` (a cudaError_t expression); on failure records the site and returns the error
// from the enclosing function (which must return cudaError_t).
#define HYB_CUDA_TRY(stmt)                                                     \
  do {                                                                         \
    const cudaError_t hyb_cuda_err_ = (stmt);                                  \
    if (hyb_cuda_err_ != cudaSuccess) {                                        \
      ::hyb::kernels::cuda::LastCudaErrorSite() = {#stmt, __FILE__, __LINE__}; \
      return hyb_cuda_err_;                                                    \
    }                                                                          \
  } while (0)
