// LibTorch boundary of the fused logits-scoring kernels: which inputs they take, dtype, shape and
// device checks, output allocation, current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "device_support.h"
#include "hyb/kernels/logits.h"
#include "logits_score_launch.h"

namespace hyb::kernels::cuda {
namespace {

bool ToType(at::ScalarType t, LogitsType* out) {
  switch (t) {
    case at::kFloat:
      *out = LogitsType::kF32;
      return true;
    case at::kBFloat16:
      *out = LogitsType::kBF16;
      return true;
    case at::kHalf:
      *out = LogitsType::kF16;
      return true;
    default:
      return false;
  }
}

// [N, V] on a CUDA device, a supported dtype, V >= 1, unit column stride.
bool RowsSupported(const at::Tensor& x) {
  LogitsType type;
  return x.defined() && x.is_cuda() && x.dim() == 2 && x.size(1) >= 1 &&
         (x.stride(1) == 1 || x.size(1) == 1) && ToType(x.scalar_type(), &type) &&
         KernelsRunOnDevice(x.device().index(), 0);
}

}  // namespace

bool TokenLogProbsSupported(const at::Tensor& logits, const at::Tensor& targets) {
  return RowsSupported(logits) && targets.defined() && targets.dim() == 1 &&
         targets.size(0) == logits.size(0) && targets.scalar_type() == at::kLong &&
         targets.device() == logits.device();
}

at::Tensor TokenLogProbs(const at::Tensor& logits, const at::Tensor& targets) {
  TORCH_CHECK(TokenLogProbsSupported(logits, targets),
              "cuda TokenLogProbs: unsupported inputs logits [", logits.sizes(), "] ",
              logits.scalar_type(), " on ", logits.device(), ", targets [", targets.sizes(), "] ",
              targets.scalar_type(), " on ", targets.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor t = targets.contiguous();
  at::Tensor out = at::empty({logits.size(0)}, logits.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  TokenLogProbsParams p;
  p.logits = logits.data_ptr();
  p.row_stride = logits.stride(0);
  ToType(logits.scalar_type(), &p.type);
  p.targets = t.data_ptr<int64_t>();
  p.out = out.data_ptr<float>();
  p.rows = logits.size(0);
  p.cols = logits.size(1);
  const cudaError_t err = LaunchTokenLogProbs(p, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "cuda TokenLogProbs launch failed: ", cudaGetErrorString(err));
  return out;
}

bool RowKlSupported(const at::Tensor& teacher, const at::Tensor& logits) {
  return RowsSupported(teacher) && RowsSupported(logits) && teacher.sizes() == logits.sizes() &&
         teacher.device() == logits.device();
}

at::Tensor RowKl(const at::Tensor& teacher, const at::Tensor& logits) {
  TORCH_CHECK(RowKlSupported(teacher, logits), "cuda RowKl: unsupported inputs teacher [",
              teacher.sizes(), "] ", teacher.scalar_type(), " on ", teacher.device(), ", logits [",
              logits.sizes(), "] ", logits.scalar_type(), " on ", logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor out = at::empty({logits.size(0)}, logits.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  RowKlParams p;
  p.teacher = teacher.data_ptr();
  p.teacher_row_stride = teacher.stride(0);
  ToType(teacher.scalar_type(), &p.teacher_type);
  p.logits = logits.data_ptr();
  p.logits_row_stride = logits.stride(0);
  ToType(logits.scalar_type(), &p.logits_type);
  p.out = out.data_ptr<float>();
  p.rows = logits.size(0);
  p.cols = logits.size(1);
  const cudaError_t err = LaunchRowKl(p, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "cuda RowKl launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace hyb::kernels::cuda
