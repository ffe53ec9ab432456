// GPU speed of the fused short convolution (kernels/cuda/short_conv.cu, through
// kernels::ShortConv) beside the ATen path the mixers ran before it (kernels::ShortConvReference:
// transpose, cat, grouped conv1d, silu), forward and forward + backward, at the distillation's
// shape: B * T = 16384 tokens in sequences of 2048, C = 2048 and 4096 channels, K = 4, bf16, silu,
// u a column slice of a [B, T, 3C] projection as in the mixers. Also a decoding step (T = 1, the
// cache updated in place) at batch 1 and 32. GB/s counts the bytes that must move: u and y in the
// forward; u, y, d_out and d_u in forward + backward.
//
//   short_conv_bench [--tokens 16384] [--seq 2048] [--kernel 4] [--hbm-tbps 4.8]
#include <torch/torch.h>

#include <iomanip>
#include <iostream>
#include <string>
#include <vector>

#include "cuda_timing.h"
#include "hyb/kernels/short_conv.h"
#ifdef HYB_WITH_CUDA
#include "hyb/kernels/cuda_conv.h"
#endif

namespace {

using hyb::bench::TimeMs;

using ConvFn = at::Tensor (*)(const at::Tensor&, const at::Tensor&, at::Tensor*, bool);

void Row(const std::string& what, const std::string& impl, double ms, double bytes, double base_ms,
         double hbm_tbps) {
  std::cout << "| " << what << " | " << impl << " | " << std::fixed << std::setprecision(3) << ms
            << " | " << std::setprecision(0) << bytes / (ms * 1e-3) / 1e9 << " | "
            << std::setprecision(3) << bytes / (hbm_tbps * 1e12) * 1e3 << " | "
            << std::setprecision(2) << base_ms / ms << "x |\n";
}

}  // namespace

int main(int argc, char** argv) {
  int64_t tokens = 16384, seq = 2048, kernel = 4;
  double hbm_tbps = 4.8;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--tokens") {
      tokens = std::stoll(v);
    } else if (k == "--seq") {
      seq = std::stoll(v);
    } else if (k == "--kernel") {
      kernel = std::stoll(v);
    } else if (k == "--hbm-tbps") {
      hbm_tbps = std::stod(v);
    } else {
      std::cerr << "unknown flag " << k << "\n";
      return 2;
    }
  }
  if (!torch::cuda::is_available()) {
    std::cerr << "short_conv_bench: no CUDA device\n";
    return 1;
  }
#ifndef HYB_WITH_CUDA
  std::cerr << "short_conv_bench: built without HYB_CUDA (no fused kernels to measure)\n";
  return 1;
#else
  const int64_t b = tokens / seq, t = seq;
  const auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  torch::manual_seed(0);
  std::cout << "B " << b << ", T " << t << ", K " << kernel << ", bf16, silu\n"
            << "| shape | impl | ms | GB/s | HBM bound ms | speed-up |\n"
            << "|---|---|---|---|---|---|\n";
  const ConvFn fused = &hyb::kernels::ShortConv, aten = &hyb::kernels::ShortConvReference;
  std::vector<std::string> diffs;
  for (const int64_t c : {2048, 4096}) {
    const at::Tensor proj = at::randn({b, t, 3 * c}, bf16);
    const at::Tensor u = proj.narrow(2, c, c);
    const at::Tensor w = 0.5 * at::randn({c, kernel}, bf16);
    const at::Tensor d_out = at::randn({b, t, c}, bf16);
    if (!hyb::kernels::cuda::ShortConvSupported(u, w, at::Tensor())) {
      std::cerr << "short_conv_bench: the fused kernels do not take C = " << c << "\n";
      return 1;
    }
    const double n = static_cast<double>(b * t * c) * 2;  // bytes of one [B, T, C] bf16 tensor
    auto forward = [&](ConvFn fn) {
      const at::NoGradGuard no_grad;
      return TimeMs([&] { fn(u, w, nullptr, true); }, 20);
    };
    auto forward_backward = [&](ConvFn fn) {
      const at::Tensor ug = u.detach().requires_grad_(true);
      const at::Tensor wg = w.detach().requires_grad_(true);
      return TimeMs(
          [&] {
            const at::Tensor y = fn(ug, wg, nullptr, true);
            torch::autograd::grad({y}, {ug, wg}, {d_out});
          },
          10);
    };
    const std::string shape = "[" + std::to_string(b * t) + ", " + std::to_string(c) + "]";
    const double aten_f = forward(aten), fused_f = forward(fused);
    Row(shape + " forward", "ATen", aten_f, 2 * n, aten_f, hbm_tbps);
    Row(shape + " forward", "fused", fused_f, 2 * n, aten_f, hbm_tbps);
    const double aten_fb = forward_backward(aten), fused_fb = forward_backward(fused);
    Row(shape + " forward + backward", "ATen", aten_fb, 5 * n, aten_fb, hbm_tbps);
    Row(shape + " forward + backward", "fused", fused_fb, 5 * n, aten_fb, hbm_tbps);
    {
      const at::NoGradGuard no_grad;
      const double diff =
          (fused(u, w, nullptr, true) - aten(u, w, nullptr, true)).abs().max().item<double>();
      diffs.push_back(shape + " forward: largest difference fused - ATen " + std::to_string(diff));
    }
  }
  // Decoding steps: one token per sequence, the cache [B, C, K-1] updated in place.
  for (const int64_t batch : {1, 32}) {
    const int64_t c = 4096;
    const at::NoGradGuard no_grad;
    const at::Tensor u = at::randn({batch, 1, 3 * c}, bf16).narrow(2, c, c);
    const at::Tensor w = 0.5 * at::randn({c, kernel}, bf16);
    at::Tensor cache = at::randn({batch, c, kernel - 1}, bf16);
    const double n = static_cast<double>(batch * c) * 2 * (2 + 2 * (kernel - 1));
    const std::string shape = "step B " + std::to_string(batch) + ", C " + std::to_string(c);
    const double aten_s = TimeMs([&] { aten(u, w, &cache, true); }, 200);
    const double fused_s = TimeMs([&] { fused(u, w, &cache, true); }, 200);
    Row(shape, "ATen", aten_s, n, aten_s, hbm_tbps);
    Row(shape, "fused", fused_s, n, aten_s, hbm_tbps);
  }
  for (const std::string& d : diffs) std::cout << d << "\n";
  return 0;
#endif
}
