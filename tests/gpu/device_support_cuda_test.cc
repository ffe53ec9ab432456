// KernelsRunOnDevice (kernels/cuda/device_support.h): the devices that the ops' *Supported checks
// let through to the CUDA kernels, the others taking the ATen paths. (The decision from a
// device's facts is checked at compile time in device_support.cu.)
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "gpu_test_util.h"

#ifdef HYB_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <cuda_runtime.h>

#include "device_support.h"
#include "hyb/kernels/cuda_ops.h"
#include "rms_norm_launch.h"
#endif

namespace hyb {
namespace {

TEST(CudaDeviceSupportTest, TheDeviceRunsTheKernelsExactlyWhenOneLaunches) {
  HYB_REQUIRE_CUDA_KERNELS();
#ifndef HYB_WITH_CUDA
  GTEST_SKIP() << "built without HYB_CUDA";
#else
  using kernels::cuda::kChunkedKernelSmem;
  using kernels::cuda::KernelsRunOnDevice;
  int optin = 0, count = 0;
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0),
            cudaSuccess);
  ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess);
  // A kernel of this build through its launcher (not its op, which asks the gate first): it
  // launches exactly when the build has an image for the device.
  const auto f32 = at::TensorOptions().device(at::kCUDA, 0).dtype(at::kFloat);
  const at::Tensor x = at::randn({4, 64}, f32), w = at::ones({64}, f32);
  const at::Tensor y = at::empty_like(x);
  kernels::cuda::RmsNormParams p;
  p.x = x.data_ptr();
  p.weight = w.data_ptr();
  p.y = y.data_ptr();
  p.rows = 4;
  p.cols = 64;
  const cudaError_t launched =
      kernels::cuda::LaunchRmsNorm(p, at::cuda::getCurrentCUDAStream(0).stream());
  (void)cudaGetLastError();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const bool runs = launched == cudaSuccess;
  EXPECT_EQ(KernelsRunOnDevice(0, 0), runs) << cudaGetErrorString(launched);
  EXPECT_EQ(KernelsRunOnDevice(0, kChunkedKernelSmem), runs && optin >= kChunkedKernelSmem);
  EXPECT_FALSE(KernelsRunOnDevice(0, optin + 1));  // more than the device's opt-in maximum
  EXPECT_FALSE(KernelsRunOnDevice(count, 0));      // not devices
  EXPECT_FALSE(KernelsRunOnDevice(-1, 0));
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // no query left an error behind
  if (count > 1) {  // a query of another device leaves the current one where it was
    (void)KernelsRunOnDevice(count - 1, 0);
    int current = -1;
    ASSERT_EQ(cudaGetDevice(&current), cudaSuccess);
    EXPECT_EQ(current, 0);
  }
  // The ops' checks ask it: GLA's takes these inputs exactly when its kernels can run here.
  const auto bf16 = at::TensorOptions().device(at::kCUDA, 0).dtype(at::kBFloat16);
  const at::Tensor q = at::randn({1, 2, 64, 64}, bf16);
  EXPECT_EQ(kernels::cuda::GlaChunkedSupported(q, q, q, q.to(at::kFloat), at::Tensor()),
            KernelsRunOnDevice(0, kChunkedKernelSmem));
#endif
}

}  // namespace
}  // namespace hyb
