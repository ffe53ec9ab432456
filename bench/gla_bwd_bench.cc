// GPU time of the chunked GLA kernels, forward and backward, at the distillation's shapes: bf16
// q/k/v and fp32 gates as [B, H, T, D] views of [B, T, H, D] buffers (what the linear mixer
// passes; the kernels read them in place), no initial state, random output gradient.
// B x 16 heads x T with B*H in {256 (T = 2048), 64 (T = 8192), 16 (T = 32768)}, K = V in {64, 128}.
// Prints ms for the forward alone (no autograd), forward + backward through autograd, and the
// backward alone (autograd::grad on a kept graph), with TFLOP/s of the matrix products each does
// (per chunk of C tokens and head: forward C^2 (K + V) + 4 C K V, backward
// C^2 (3 K + 2 V) + 8 C K V, causal halves counted once).
//
//   gla_bwd_bench [--json FILE]
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <string>
#include <vector>

#include "hyb/common/json_util.h"
#include "hyb/kernels/cuda_ops.h"
#include "hyb/kernels/linear_attention.h"
#include "cuda_timing.h"

namespace {

constexpr int64_t kHeads = 16, kChunk = 64;

using hyb::bench::TimeMs;

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--json") {
      json_path = v;
    } else {
      std::cerr << "unknown flag " << k << "\n";
      return 2;
    }
  }
  if (!torch::cuda::is_available()) {
    std::cerr << "gla_bwd_bench: no CUDA device\n";
    return 1;
  }
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  hyb::Json rows = hyb::Json::array();
  std::cout << "| B*H | T | K=V | fwd ms | fwd TFLOP/s | fwd+bwd ms | bwd ms | bwd TFLOP/s |\n"
            << "|---|---|---|---|---|---|---|---|\n";
  for (const int64_t d : {64, 128}) {
    for (const auto& [bh, t] : std::vector<std::pair<int64_t, int64_t>>{
             {256, 2048}, {64, 8192}, {16, 32768}}) {
      const int64_t b = bh / kHeads;
      torch::manual_seed(0);
      // Leaves laid out [B, T, H, D], as the mixer's projections.
      const at::Tensor q = at::randn({b, t, kHeads, d}, f32).to(at::kBFloat16).requires_grad_(true);
      at::Tensor kn = at::randn({b, t, kHeads, d}, f32);
      const at::Tensor k = (kn / kn.norm(2, -1, true)).to(at::kBFloat16).requires_grad_(true);
      const at::Tensor v = at::randn({b, t, kHeads, d}, f32).to(at::kBFloat16).requires_grad_(true);
      const at::Tensor g =
          (at::log_sigmoid(at::randn({b, t, kHeads, d}, f32)) / 16).requires_grad_(true);
      const at::Tensor d_o = at::randn({b, kHeads, t, d}, f32).to(at::kBFloat16);
      auto heads = [](const at::Tensor& x) { return x.transpose(1, 2); };
      const double scale = 1.0 / std::sqrt(static_cast<double>(d));

      const double fwd_ms = TimeMs(
          [&] {
            at::NoGradGuard no_grad;
            hyb::kernels::cuda::GlaChunked(heads(q), heads(k), heads(v), heads(g), scale, {});
          },
          10);
      const double fwd_bwd_ms = TimeMs(
          [&] {
            const auto r = hyb::kernels::GlaChunked(heads(q), heads(k), heads(v), heads(g), scale,
                                                    {}, kChunk);
            torch::autograd::grad({r.output}, {q, k, v, g}, {d_o});
          },
          10);
      const auto kept = hyb::kernels::GlaChunked(heads(q), heads(k), heads(v), heads(g), scale, {},
                                                 kChunk);
      const double bwd_ms = TimeMs(
          [&] {
            torch::autograd::grad({kept.output}, {q, k, v, g}, {d_o}, /*retain_graph=*/true);
          },
          10);

      const double token_heads = static_cast<double>(bh) * static_cast<double>(t);
      const double dd = static_cast<double>(d), c = static_cast<double>(kChunk);
      const double fwd_flop = token_heads * (c * 2 * dd + 4 * dd * dd);
      const double bwd_flop = token_heads * (c * 5 * dd + 8 * dd * dd);
      const double fwd_tflops = fwd_flop / (fwd_ms * 1e-3) / 1e12;
      const double bwd_tflops = bwd_flop / (bwd_ms * 1e-3) / 1e12;
      std::cout << std::fixed << std::setprecision(3) << "| " << bh << " | " << t << " | " << d
                << " | " << fwd_ms << " | " << std::setprecision(1) << fwd_tflops << " | "
                << std::setprecision(3) << fwd_bwd_ms << " | " << bwd_ms << " | "
                << std::setprecision(1) << bwd_tflops << " |\n";
      hyb::Json row = hyb::Json::object();
      row["batch_heads"] = bh;
      row["tokens"] = t;
      row["head_dim"] = d;
      row["forward_ms"] = fwd_ms;
      row["forward_backward_ms"] = fwd_bwd_ms;
      row["backward_ms"] = bwd_ms;
      row["forward_tflops"] = fwd_tflops;
      row["backward_tflops"] = bwd_tflops;
      rows.push_back(row);
    }
  }
  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << rows.dump(2) << "\n";
  }
  return 0;
}
