// Entry points of the CUDA softmax-attention kernels (defined only when built with HYB_CUDA=ON;
// callers guard with HYB_WITH_CUDA). Each checks types and shapes and runs on the current stream.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace hyb::kernels::cuda {

// True when the split-KV decoding kernel (kernels/cuda/attention_decode.cu) handles these
// tensors: q [B, H, 1, D], k and v [B, Hkv, Cap, D] (Cap >= 1, any strides with unit stride
// along D and the others, and the data pointers, multiples of 16 bytes: e.g. a narrow() along
// Cap of a contiguous buffer), all fp32, bf16 or fp16 on one CUDA device, H % Hkv == 0,
// D in {8, 16, 32, 64, 128, 256}, B <= 65535. Forward only (no autograd).
bool AttentionDecodeSupported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// Single-query attention over the keys [max(0, e - window + 1), e] of the buffers, where e is
// the int64 in `key_end` (one element on the keys' device, read by the kernel: a captured CUDA
// graph replays the same launch while e advances; values past Cap - 1 are cut to Cap - 1).
// window 0: no sliding window. Query head h reads key/value head h / (H / Hkv). Returns
// [B, H, 1, D] in q's dtype (zeros where no key is visible, e < 0). The launch geometry depends
// on the shapes and Cap only. Throws c10::Error on unsupported inputs.
at::Tensor AttentionDecodeAt(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& key_end, int64_t sliding_window, double scale);

// The same with every key visible up to the last one (e = Cap - 1, a length known on the host).
at::Tensor AttentionDecode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           int64_t sliding_window, double scale);

}  // namespace hyb::kernels::cuda
