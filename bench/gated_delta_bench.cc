// GPU time of the chunked Gated DeltaNet CUDA kernels: the chunk-parallel ones
// (cuda::GatedDeltaChunkedFast*, gated_delta_fast*.cu) beside the sequential fp32 ones
// (cuda::GatedDeltaChunked*, gated_delta_chunked*.cu), at 32K tokens per batch: B = 32768 / T,
// 16 heads, K = V = 128, T in {1K, 2K, 4K, 8K, 32K}. bf16 q/k/v [B, H, T, D] (keys
// L2-normalised), fp32 log decays g = logsigmoid(x) / 4 and betas sigmoid(x) [B, H, T], no
// initial state, random output gradient. Prints one markdown table: ms for the forward alone
// (no autograd) and for forward + backward through each autograd function.
//
//   gated_delta_bench
#include <torch/torch.h>

#include <cmath>
#include <iomanip>
#include <iostream>
#include <vector>

#include "cuda_timing.h"
#include "hyb/kernels/cuda_gated_delta.h"
#include "hyb/kernels/cuda_ops.h"

namespace {

constexpr int64_t kHeads = 16, kDim = 128, kTokensPerBatch = 32768;

using hyb::bench::TimeMs;

}  // namespace

int main() {
  if (!torch::cuda::is_available()) {
    std::cerr << "gated_delta_bench: no CUDA device\n";
    return 1;
  }
  namespace cuda = hyb::kernels::cuda;
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  std::cout << "| T | B | sequential fwd ms | chunk-parallel fwd ms | speedup | sequential fwd+bwd ms "
               "| chunk-parallel fwd+bwd ms | speedup |\n"
            << "|---|---|---|---|---|---|---|---|\n";
  for (const int64_t t : {1024, 2048, 4096, 8192, 32768}) {
    const int64_t b = kTokensPerBatch / t;
    torch::manual_seed(0);
    const at::Tensor q = at::randn({b, kHeads, t, kDim}, f32).to(at::kBFloat16).requires_grad_(true);
    const at::Tensor kn = at::randn({b, kHeads, t, kDim}, f32);
    const at::Tensor k = (kn / kn.norm(2, -1, true)).to(at::kBFloat16).requires_grad_(true);
    const at::Tensor v = at::randn({b, kHeads, t, kDim}, f32).to(at::kBFloat16).requires_grad_(true);
    const at::Tensor g = (at::log_sigmoid(at::randn({b, kHeads, t}, f32)) / 4).requires_grad_(true);
    const at::Tensor beta = at::sigmoid(at::randn({b, kHeads, t}, f32)).requires_grad_(true);
    const at::Tensor d_o = at::randn({b, kHeads, t, kDim}, f32).to(at::kBFloat16);
    const double scale = 1.0 / std::sqrt(static_cast<double>(kDim));

    auto forward_ms = [&](bool fast, int reps) {
      return TimeMs(
          [&] {
            at::NoGradGuard no_grad;
            if (fast) {
              cuda::GatedDeltaChunkedFast(q, k, v, g, beta, scale, {});
            } else {
              cuda::GatedDeltaChunked(q, k, v, g, beta, scale, {});
            }
          },
          reps);
    };
    auto forward_backward_ms = [&](bool fast, int reps) {
      return TimeMs(
          [&] {
            const auto r = fast ? cuda::GatedDeltaChunkedFastWithGrad(q, k, v, g, beta, scale, {})
                                : cuda::GatedDeltaChunkedWithGrad(q, k, v, g, beta, scale, {});
            torch::autograd::grad({r.output}, {q, k, v, g, beta}, {d_o});
          },
          reps);
    };
    const double old_f = forward_ms(false, 3), new_f = forward_ms(true, 20);
    const double old_fb = forward_backward_ms(false, 3), new_fb = forward_backward_ms(true, 10);
    std::cout << std::fixed << std::setprecision(2) << "| " << t << " | " << b << " | " << old_f
              << " | " << new_f << " | " << std::setprecision(1) << old_f / new_f << "x | "
              << std::setprecision(2) << old_fb << " | " << new_fb << " | "
              << std::setprecision(1) << old_fb / new_fb << "x |\n";
  }
  return 0;
}
