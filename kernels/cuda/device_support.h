// Whether this build's CUDA kernels can run on a device. The ops' *Supported checks (the
// *_entry.cc files) ask it, so that tensors on a device the kernels cannot run on take the ATen
// paths instead of failing at launch:
//  - the kernels exist only for the architectures of CMAKE_CUDA_ARCHITECTURES (90a by default:
//    H100 / H200), so an A100 or a newer architecture has no image of them;
//  - the chunked linear-attention kernels (GLA and Gated DeltaNet, forward and backward) are
//    sized for sm_90's 227 KB of shared memory per block, which an sm_80 build on an A100
//    (163 KB) lacks even with an image.
// Torch-free, as the launchers.
#pragma once

namespace hyb::kernels::cuda {

// Shared memory per block that the chunked linear-attention kernels may request: sm_90's opt-in
// maximum (kGatedDeltaMaxBlockSmem, checked equal in device_support.cu). The other kernels ask
// for 0: their shared memory is static and within every architecture's 48 KB.
inline constexpr int kChunkedKernelSmem = 232448;

// The decision from a device's facts: an image of the kernels for its architecture, and at least
// `smem_bytes` of opt-in shared memory per block (`optin_smem`).
constexpr bool KernelsFit(bool has_image, int optin_smem, int smem_bytes) {
  return has_image && optin_smem >= smem_bytes;
}

// KernelsFit for CUDA device `device`, whose facts are queried once (thread-safe) and kept.
// False for an index that is not a device, and, without keeping anything, when CUDA cannot say
// (a query fails for another reason than a missing image); a failed query leaves no error behind
// for the next cudaGetLastError() unless the error is sticky. The query (cudaFuncGetAttributes,
// which may load the module) is best not made first inside a stream capture: the decoder's capture
// of a step follows a warm-up step that has made it.
bool KernelsRunOnDevice(int device, int smem_bytes);

}  // namespace hyb::kernels::cuda
