// GPU speed of the linear-attention kernels at the shapes of issue 11, beside LibTorch's fused
// causal SDPA measured in the same process: bf16, 32K tokens per batch, 16 heads, head dim 128,
// T in {1K, 2K, 4K, 8K, 32K} (batch = 32K / T), forward, and forward + backward of our GLA (gradients
// for q, k, v, g from a random output gradient), and forward, and forward + backward, of the
// chunked Gated DeltaNet kernels (per-head log decays and betas, fp32 SIMT; gradients for q, k,
// v, g, beta); and batched decoding steps (state fp32)
// against attention decoding one token over a bf16 KV cache (our split-KV kernel and LibTorch's
// SDPA); SDPA forward and forward + backward give the crossover T. fla's numbers come from
// ../shared/reference/linear_attention_ops.py run in the same session.
//
//   linear_attention_cuda_bench [--hbm-tbps 4.8] [--json FILE] [--ops gla,gdn,sdpa,decode]
//
// --ops picks the measured operators (default: all four); "gla-fwd" times GLA's forward alone.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "hyb/common/json_util.h"
#include "hyb/kernels/attention.h"
#include "hyb/kernels/cuda_ops.h"
#include "hyb/kernels/linear_attention.h"
#include "cuda_timing.h"

namespace {

constexpr int64_t kHeads = 16, kDim = 128, kTokens = 32768;

using hyb::bench::TimeMs;

}  // namespace

int main(int argc, char** argv) {
  double hbm_tbps = 4.8;
  std::string json_path;
  std::set<std::string> ops = {"gla", "gdn", "sdpa", "decode"};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--hbm-tbps") {
      hbm_tbps = std::stod(v);
    } else if (k == "--json") {
      json_path = v;
    } else if (k == "--ops") {
      ops.clear();
      std::stringstream list(v);
      for (std::string op; std::getline(list, op, ',');) {
        if (op != "gla" && op != "gla-fwd" && op != "gdn" && op != "sdpa" && op != "decode") {
          std::cerr << "--ops: unknown operator '" << op
                    << "' (expected gla, gla-fwd, gdn, sdpa, decode)\n";
          return 2;
        }
        ops.insert(op);
      }
    } else {
      std::cerr << "unknown flag " << k << "\n";
      return 2;
    }
  }
  if (!torch::cuda::is_available()) {
    std::cerr << "linear_attention_cuda_bench: no CUDA device\n";
    return 1;
  }
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const double scale = 1.0 / std::sqrt(static_cast<double>(kDim));
  hyb::Json rows = hyb::Json::array();
  at::NoGradGuard no_grad;

  std::cout << "| op | T | B | ms | GB/s | HBM bound ms |\n|---|---|---|---|---|---|\n";
  for (const int64_t t : {1024, 2048, 4096, 8192, 32768}) {
    const int64_t b = kTokens / t;
    torch::manual_seed(0);
    const at::Tensor q = at::randn({b, kHeads, t, kDim}, f32).to(at::kBFloat16);
    at::Tensor k = at::randn({b, kHeads, t, kDim}, f32);
    k = (k / k.norm(2, -1, true)).to(at::kBFloat16);
    const at::Tensor v = at::randn({b, kHeads, t, kDim}, f32).to(at::kBFloat16);
    const at::Tensor g = at::log_sigmoid(at::randn({b, kHeads, t, kDim}, f32)) / 16;
    // Bytes that must move: q, k, v, o in bf16, g in fp32 (as fla's reference script counts).
    const double bytes = static_cast<double>(b * kHeads * t * kDim) * (2 * 4 + 4);
    const double bound_ms = bytes / (hbm_tbps * 1e12) * 1e3;
    const bool gla = ops.count("gla") > 0, gla_fwd = gla || ops.count("gla-fwd") > 0;
    const bool gdn = ops.count("gdn") > 0, sdpa = ops.count("sdpa") > 0;
    const auto time_if = [](bool on, const std::function<void()>& f, int iters) {
      return on ? TimeMs(f, iters) : 0.0;
    };
    const double gla_ms =
        time_if(gla_fwd, [&] { hyb::kernels::GlaChunked(q, k, v, g, scale, {}, 64); }, 10);
    // Forward + backward through the autograd path (torch::autograd::grad: no accumulation into
    // .grad, so the time is the two kernels' plus the dtype conversions of the gradients).
    const at::Tensor qg = q.detach().requires_grad_(true), kg = k.detach().requires_grad_(true);
    const at::Tensor vg = v.detach().requires_grad_(true), gg = g.detach().requires_grad_(true);
    const at::Tensor d_o = at::randn({b, kHeads, t, kDim}, f32).to(at::kBFloat16);
    const double gla_fwd_bwd_ms = time_if(
        gla,
        [&] {
          const at::AutoGradMode grad_mode(true);
          const auto r = hyb::kernels::GlaChunked(qg, kg, vg, gg, scale, {}, 64);
          torch::autograd::grad({r.output}, {qg, kg, vg, gg}, {d_o});
        },
        5);
    // Gated DeltaNet: per-head log decays and betas [B, H, T] in fp32, through the dispatch
    // point (the CUDA kernels; with autograd for forward + backward, as GLA's row).
    const at::Tensor gh = at::log_sigmoid(at::randn({b, kHeads, t}, f32));
    const at::Tensor beta = at::sigmoid(at::randn({b, kHeads, t}, f32));
    const double gdn_ms = time_if(
        gdn, [&] { hyb::kernels::GatedDeltaChunked(q, k, v, gh, beta, scale, {}, 64); }, 3);
    const at::Tensor ghg = gh.detach().requires_grad_(true);
    const at::Tensor betag = beta.detach().requires_grad_(true);
    const double gdn_fwd_bwd_ms = time_if(
        gdn,
        [&] {
          const at::AutoGradMode grad_mode(true);
          const auto r = hyb::kernels::GatedDeltaChunked(qg, kg, vg, ghg, betag, scale, {}, 64);
          torch::autograd::grad({r.output}, {qg, kg, vg, ghg, betag}, {d_o});
        },
        2);
    // q, k, v, o in bf16, g and beta in fp32.
    const double gdn_bytes = static_cast<double>(b * kHeads * t) * (kDim * 2 * 4 + 2 * 4);
    hyb::kernels::AttentionOptions ao;
    ao.scale = scale;
    const double sdpa_ms =
        time_if(sdpa, [&] { hyb::kernels::SoftmaxAttention(q, k, v, ao); }, 10);
    // SDPA forward + backward (causal; LibTorch 2.x's fused kernel, through the dispatch point
    // as the forward row), for the crossover T.
    const double sdpa_fwd_bwd_ms = time_if(
        sdpa,
        [&] {
          const at::AutoGradMode grad_mode(true);
          const at::Tensor o = hyb::kernels::SoftmaxAttention(qg, kg, vg, ao);
          torch::autograd::grad({o}, {qg, kg, vg}, {d_o});
        },
        5);
    auto row = [&](const std::string& op, double ms, bool with_bw) {
      std::cout << "| " << op << " | " << t << " | " << b << " | " << std::fixed
                << std::setprecision(3) << ms << " | ";
      if (with_bw) {
        std::cout << std::setprecision(0) << bytes / (ms * 1e-3) / 1e9 << " | "
                  << std::setprecision(3) << bound_ms;
      } else {
        std::cout << " | ";
      }
      std::cout << " |\n";
      rows.push_back({{"op", op},
                      {"T", t},
                      {"B", b},
                      {"fwd_ms", ms},
                      {"hbm_bound_ms", with_bw ? bound_ms : 0.0}});
    };
    if (gla_fwd) row("gla_chunked_cuda fwd", gla_ms, true);
    if (gla) row("gla_chunked_cuda fwd+bwd", gla_fwd_bwd_ms, false);
    if (sdpa) row("sdpa_causal fwd", sdpa_ms, false);
    if (sdpa) row("sdpa_causal fwd+bwd", sdpa_fwd_bwd_ms, false);
    if (!gdn) continue;
    std::cout << "| gated_delta_chunked_cuda fwd | " << t << " | " << b << " | " << std::fixed
              << std::setprecision(3) << gdn_ms << " | " << std::setprecision(0)
              << gdn_bytes / (gdn_ms * 1e-3) / 1e9 << " | " << std::setprecision(3)
              << gdn_bytes / (hbm_tbps * 1e12) * 1e3 << " |\n";
    rows.push_back({{"op", "gated_delta_chunked_cuda fwd"},
                    {"T", t},
                    {"B", b},
                    {"fwd_ms", gdn_ms},
                    {"hbm_bound_ms", gdn_bytes / (hbm_tbps * 1e12) * 1e3}});
    row("gated_delta_chunked_cuda fwd+bwd", gdn_fwd_bwd_ms, false);
  }

  // Decoding: one token for B sequences, 16 heads, K = V = 128, fp32 state read and written.
  if (ops.count("decode") == 0) {
    if (!json_path.empty()) std::ofstream(json_path) << rows.dump(1) << "\n";
    return 0;
  }
  std::cout
      << "\n| op | batch | ctx | us/step | tokens/s | state GB/s |\n|---|---|---|---|---|---|\n";
  for (const int64_t b : {1, 4, 16, 64, 256}) {
    torch::manual_seed(1);
    const auto bf = f32.dtype(at::kBFloat16);
    const at::Tensor q = at::randn({b, kHeads, kDim}, bf), v = at::randn({b, kHeads, kDim}, bf);
    at::Tensor k = at::randn({b, kHeads, kDim}, f32);
    k = (k / k.norm(2, -1, true)).to(at::kBFloat16);
    const at::Tensor g =
        (at::log_sigmoid(at::randn({b, kHeads, kDim}, f32)) / 16).to(at::kBFloat16);
    const at::Tensor gh = at::log_sigmoid(at::randn({b, kHeads}, f32)).to(at::kBFloat16);
    const at::Tensor beta = at::sigmoid(at::randn({b, kHeads}, f32)).to(at::kBFloat16);
    const at::Tensor s = at::randn({b, kHeads, kDim, kDim}, f32) * 0.1;
    const double state_bytes = 2.0 * static_cast<double>(s.numel()) * 4;
    auto decode_row = [&](const std::string& op, int64_t ctx, double ms, double moved) {
      std::cout << "| " << op << " | " << b << " | " << ctx << " | " << std::fixed
                << std::setprecision(1) << ms * 1e3 << " | " << std::setprecision(0)
                << b / (ms * 1e-3) << " | " << moved / (ms * 1e-3) / 1e9 << " |\n";
      rows.push_back({{"op", op},
                      {"batch", b},
                      {"ctx", ctx},
                      {"step_ms", ms},
                      {"tokens_per_s", b / (ms * 1e-3)}});
    };
    decode_row("gla_step_cuda", 0, TimeMs([&] { hyb::kernels::GlaStep(q, k, v, g, scale, s); }, 50),
               state_bytes);
    decode_row("gated_delta_step_cuda", 0,
               TimeMs([&] { hyb::kernels::GatedDeltaStep(q, k, v, gh, beta, scale, s); }, 50),
               state_bytes);
    for (const int64_t ctx : {4096, 16384, 65536}) {
      const double kv_bytes = 2.0 * b * kHeads * ctx * kDim * 2;
      if (kv_bytes > 40e9) {
        std::cout << "| kv_cache decoding | " << b << " | " << ctx
                  << " | skipped: KV cache over 40 GB | | |\n";
        continue;
      }
      const at::Tensor kc = at::randn({b, kHeads, ctx, kDim}, bf);
      const at::Tensor vc = at::randn({b, kHeads, ctx, kDim}, bf);
      const at::Tensor q1 = q.unsqueeze(2);
      hyb::kernels::AttentionOptions ao;
      ao.scale = scale;
      ao.q_offset = ctx - 1;
      // SoftmaxAttention with one query dispatches to our split-KV decoding kernel; the SDPA row
      // is LibTorch's fused attention over the same cache (all keys visible to the last token).
      decode_row("split_kv_decode_kv_cache", ctx,
                 TimeMs([&] { hyb::kernels::SoftmaxAttention(q1, kc, vc, ao); }, 20), kv_bytes);
#if TORCH_VERSION_MAJOR >= 2
      decode_row("sdpa_decode_kv_cache", ctx,
                 TimeMs([&] { at::scaled_dot_product_attention(q1, kc, vc); }, 20), kv_bytes);
#endif
    }
  }
  if (!json_path.empty()) std::ofstream(json_path) << rows.dump(1) << "\n";
  return 0;
}
