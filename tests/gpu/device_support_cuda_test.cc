// KernelsRunOnDevice (kernels/cuda/device_support.h): the devices that the ops' *Supported checks
// let through to the CUDA kernels, the others taking the ATen paths.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "gpu_test_util.h"

#ifdef HYB_WITH_CUDA
#include <cuda_runtime.h>

#include "device_support.h"
#include "hyb/kernels/cuda_ops.h"
#endif

namespace hyb {
namespace {

TEST(CudaDeviceSupportTest, KernelsNeedTheirImageAndTheirSharedMemory) {
#ifndef HYB_WITH_CUDA
  GTEST_SKIP() << "built without HYB_CUDA";
#else
  using kernels::cuda::kChunkedKernelSmem;
  using kernels::cuda::KernelsFit;
  EXPECT_TRUE(KernelsFit(true, 232448, kChunkedKernelSmem));   // H100 / H200: 227 KB
  EXPECT_FALSE(KernelsFit(true, 166912, kChunkedKernelSmem));  // A100 (163 KB), an sm_80 build
  EXPECT_TRUE(KernelsFit(true, 166912, 0));                    // ... whose other kernels run
  EXPECT_FALSE(KernelsFit(false, 232448, 0));                  // no image for the architecture
#endif
}

TEST(CudaDeviceSupportTest, TheDeviceRunsTheKernelsAndNoOtherIndexDoes) {
  HYB_REQUIRE_CUDA_KERNELS();
#ifndef HYB_WITH_CUDA
  GTEST_SKIP() << "built without HYB_CUDA";
#else
  using kernels::cuda::KernelsRunOnDevice;
  int optin = 0, major = 0, count = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
  ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess);
  if (major != 9) GTEST_SKIP() << "the project's builds target sm_90a; device 0 is sm_" << major;
  EXPECT_TRUE(KernelsRunOnDevice(0, 0));
  EXPECT_TRUE(KernelsRunOnDevice(0, kernels::cuda::kChunkedKernelSmem));
  EXPECT_FALSE(KernelsRunOnDevice(0, optin + 1));  // more than the device's opt-in maximum
  EXPECT_FALSE(KernelsRunOnDevice(count, 0));
  EXPECT_FALSE(KernelsRunOnDevice(-1, 0));
  // The queries leave no error behind and the current device where it was.
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  if (count > 1) {
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
    (void)KernelsRunOnDevice(count - 1, 0);
    int current = -1;
    ASSERT_EQ(cudaGetDevice(&current), cudaSuccess);
    EXPECT_EQ(current, 0);
  }
  // The ops' checks ask it: GLA's takes its inputs on this device.
  const auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const at::Tensor q = at::randn({1, 2, 64, 64}, bf16);
  EXPECT_TRUE(kernels::cuda::GlaChunkedSupported(q, q, q, q.to(at::kFloat), at::Tensor()));
#endif
}

}  // namespace
}  // namespace hyb
