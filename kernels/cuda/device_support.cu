// KernelsRunOnDevice (device_support.h): a probe kernel, compiled for the same architectures as
// every kernel of this library, stands for all of them. The runtime has an image of it for a
// device exactly when it has one of each kernel.
#include "device_support.h"

#include <cuda_runtime.h>

#include <atomic>

#include "linear_attention_launch.h"

namespace hyb::kernels::cuda {
namespace {

static_assert(kChunkedKernelSmem == kGatedDeltaMaxBlockSmem,
              "the chunked kernels' shared memory bound is sm_90's opt-in maximum");

// The decision itself: H100 / H200 (227 KB), an sm_80 build on an A100 (163 KB), no image.
static_assert(KernelsFit(true, 232448, kChunkedKernelSmem));
static_assert(!KernelsFit(true, 166912, kChunkedKernelSmem) && KernelsFit(true, 166912, 0));
static_assert(!KernelsFit(false, 232448, 0));

__global__ void ProbeKernel() {}

constexpr int kMaxDevices = 64;

// A device's facts packed as (opt-in shared memory per block << 2) | (has_image << 1) | 1;
// 0: not queried yet.
std::atomic<long long> g_facts[kMaxDevices];

// Queries device `device` (a valid index): its packed facts, or 0 when CUDA could not say (then
// nothing is kept, and the next call asks again). Only the probe's "no image" errors count as an
// answer; any other failure (a sticky error of an earlier kernel, memory for loading the module)
// is not taken for one. The current device is restored, and errors of failed calls are cleared.
// (Switching devices happens only for a device that is not the current one, which the ops'
// device guards make rare.)
long long Query(int device) {
  int current = 0;
  if (cudaGetDevice(&current) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  if (current != device && cudaSetDevice(device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  long long facts = 0;
  cudaFuncAttributes attr;
  const cudaError_t image = cudaFuncGetAttributes(&attr, ProbeKernel);
  int optin = 0;
  const cudaError_t smem =
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  const bool no_image =
      image == cudaErrorNoKernelImageForDevice || image == cudaErrorInvalidDeviceFunction;
  if ((image == cudaSuccess || no_image) && smem == cudaSuccess) {
    facts = (static_cast<long long>(optin) << 2) | (image == cudaSuccess ? 2 : 0) | 1;
  }
  if (image != cudaSuccess || smem != cudaSuccess) cudaGetLastError();
  if (current != device && cudaSetDevice(current) != cudaSuccess) cudaGetLastError();
  return facts;
}

}  // namespace

bool KernelsRunOnDevice(int device, int smem_bytes) {
  if (device < 0 || device >= kMaxDevices) return false;
  long long facts = g_facts[device].load(std::memory_order_acquire);
  if (facts == 0) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
      cudaGetLastError();
      count = 0;
    }
    // (Not a device: kept as "no image". Two threads may both query; they store the same facts.)
    facts = device < count ? Query(device) : 1;
    if (facts == 0) return false;
    g_facts[device].store(facts, std::memory_order_release);
  }
  return KernelsFit((facts & 2) != 0, static_cast<int>(facts >> 2), smem_bytes);
}

}  // namespace hyb::kernels::cuda
