// LibTorch boundary of the split-KV decoding attention kernel: which inputs it takes, shape,
// dtype, device and alignment checks, split planning, workspace and output allocation, current
// stream.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

#include "attention_decode_launch.h"
#include "cuda_check.h"
#include "device_support.h"
#include "hyb/kernels/cuda_attention.h"

namespace hyb::kernels::cuda {
namespace {

bool Aligned16(const at::Tensor& x) {
  if (reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 != 0) return false;
  if (x.stride(3) != 1 && x.size(3) > 1) return false;
  const int64_t elem = static_cast<int64_t>(x.element_size());
  for (int d = 0; d < 3; ++d) {
    if (x.size(d) > 1 && (x.stride(d) * elem) % 16 != 0) return false;
  }
  return true;
}

bool ToType(at::ScalarType t, AttentionDecodeType* out) {
  switch (t) {
    case at::kFloat:
      *out = AttentionDecodeType::kFloat32;
      return true;
    case at::kBFloat16:
      *out = AttentionDecodeType::kBFloat16;
      return true;
    case at::kHalf:
      *out = AttentionDecodeType::kFloat16;
      return true;
    default:
      return false;
  }
}

at::Tensor Run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& key_end, int64_t sliding_window, double scale) {
  TORCH_CHECK(AttentionDecodeSupported(q, k, v), "cuda AttentionDecode: unsupported inputs q [",
              q.sizes(), "] ", q.scalar_type(), ", k [", k.sizes(), "] ", k.scalar_type(), ", v [",
              v.sizes(), "] ", v.scalar_type());
  TORCH_CHECK(sliding_window >= 0, "cuda AttentionDecode: negative sliding window");
  if (key_end.defined()) {
    TORCH_CHECK(key_end.numel() == 1 && key_end.scalar_type() == at::kLong && key_end.is_cuda() &&
                    key_end.device() == q.device(),
                "cuda AttentionDecode: key_end must be one int64 on ", q.device());
  }
  const c10::cuda::CUDAGuard guard(q.device());
  // A [B, H, 1, D] query is small: a copy when it is not contiguous or not 16-byte aligned.
  at::Tensor qc = q.contiguous();
  if (reinterpret_cast<uintptr_t>(qc.data_ptr()) % 16 != 0) qc = qc.clone();
  const int64_t b = q.size(0), h = q.size(1), d = q.size(3);
  const int64_t hkv = k.size(1), cap = k.size(2);
  at::Tensor o = at::empty({b, h, 1, d}, q.options());
  if (o.numel() == 0) return o;

  AttentionDecodeParams p;
  p.q = qc.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.k_batch_stride = k.stride(0);
  p.k_head_stride = k.stride(1);
  p.k_token_stride = k.stride(2);
  p.v_batch_stride = v.stride(0);
  p.v_head_stride = v.stride(1);
  p.v_token_stride = v.stride(2);
  at::Tensor end;
  if (key_end.defined()) {
    end = key_end.reshape({1});
    p.key_end = end.data_ptr<int64_t>();
  } else {
    p.last_key = cap - 1;
  }
  p.window = sliding_window;
  p.o = o.data_ptr();
  p.batch = b;
  p.heads = h;
  p.kv_heads = hkv;
  p.capacity = cap;
  p.head_dim = static_cast<int>(d);
  p.scale = static_cast<float>(scale);
  ToType(q.scalar_type(), &p.type);
  // Cached by ATen (no device query while a graph is being captured).
  const int num_sms = at::cuda::getDeviceProperties(q.device().index())->multiProcessorCount;
  p.plan = PlanAttentionDecode(b, hkv, h / hkv, cap, num_sms);
  const size_t bytes = AttentionDecodeWorkspaceBytes(b, h, d, p.plan);
  at::Tensor workspace =
      at::empty({static_cast<int64_t>(bytes / sizeof(float))}, q.options().dtype(at::kFloat));
  p.workspace = workspace.data_ptr();
  const cudaError_t err = LaunchAttentionDecode(p, c10::cuda::getCurrentCUDAStream().stream());
  if (err != cudaSuccess) {
    const CudaErrorSite& site = LastCudaErrorSite();
    TORCH_CHECK(false, "cuda AttentionDecode: ", cudaGetErrorString(err), " at ", site.file, ":",
                site.line, " (", site.statement, ")");
  }
  return o;
}

}  // namespace

bool AttentionDecodeSupported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (!q.defined() || !k.defined() || !v.defined() || !q.is_cuda()) return false;
  if (!KernelsRunOnDevice(q.device().index(), 0)) return false;
  if (!k.is_cuda() || !v.is_cuda() || k.device() != q.device() || v.device() != q.device()) {
    return false;
  }
  AttentionDecodeType type;
  if (!ToType(q.scalar_type(), &type) || k.scalar_type() != q.scalar_type() ||
      v.scalar_type() != q.scalar_type()) {
    return false;
  }
  if (q.dim() != 4 || k.dim() != 4 || v.sizes() != k.sizes()) return false;
  if (q.size(2) != 1 || q.size(0) != k.size(0) || q.size(3) != k.size(3)) return false;
  if (k.size(1) < 1 || q.size(1) % k.size(1) != 0 || k.size(2) < 1) return false;
  if (!AttentionDecodeSupportsDim(q.size(3)) || q.size(0) > 65535) return false;
  const int64_t chunks = (q.size(1) / k.size(1) + kAttentionDecodeMaxBlockHeads - 1) /
                         kAttentionDecodeMaxBlockHeads;
  if (k.size(1) * chunks > 65535) return false;
  if (k.numel() > 0 && (!Aligned16(k) || !Aligned16(v))) return false;
  return true;
}

at::Tensor AttentionDecodeAt(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& key_end, int64_t sliding_window, double scale) {
  TORCH_CHECK(key_end.defined(), "cuda AttentionDecodeAt: key_end is undefined");
  return Run(q, k, v, key_end, sliding_window, scale);
}

at::Tensor AttentionDecode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           int64_t sliding_window, double scale) {
  return Run(q, k, v, at::Tensor(), sliding_window, scale);
}

}  // namespace hyb::kernels::cuda
