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

__global__ void ProbeKernel() {}

constexpr int kMaxDevices = 64;

// A device's facts packed as (opt-in shared memory per block << 2) | (has_image << 1) | 1;
// 0: not queried yet.
std::atomic<long long> g_facts[kMaxDevices];

// Queries device `device` (a valid index). The current device is restored; an error of a failed
// query is cleared (queries do not leave sticky errors).
long long Query(int device) {
  constexpr long long kNone = 1;  // queried: no image, no shared memory
  int current = 0;
  if (cudaGetDevice(&current) != cudaSuccess) {
    cudaGetLastError();
    return kNone;
  }
  if (current != device && cudaSetDevice(device) != cudaSuccess) {
    cudaGetLastError();
    return kNone;
  }
  cudaFuncAttributes attr;
  const bool has_image = cudaFuncGetAttributes(&attr, ProbeKernel) == cudaSuccess;
  int optin = 0;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
      cudaSuccess) {
    optin = 0;
  }
  if (!has_image || optin == 0) cudaGetLastError();
  if (current != device) cudaSetDevice(current);
  return (static_cast<long long>(optin) << 2) | (has_image ? 2 : 0) | 1;
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
    // (Two threads may both query; they store the same facts.)
    facts = device < count ? Query(device) : 1;
    g_facts[device].store(facts, std::memory_order_release);
  }
  return KernelsFit((facts & 2) != 0, static_cast<int>(facts >> 2), smem_bytes);
}

}  // namespace hyb::kernels::cuda
