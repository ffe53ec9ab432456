// GPU speed of single-query (decoding) softmax attention over a bf16 KV cache: our split-KV
// kernel (kernels/cuda/attention_decode.cu, position read on the device) beside LibTorch's
// scaled_dot_product_attention as the runtime called it before, with a bool key mask over the
// whole reserved buffer, and SDPA over exactly the visible keys. The buffer holds `ctx` + 256
// slots (room for the tokens still to come, as generation reserves it) and the query sits at
// position ctx - 1, so ctx keys are visible. Shapes: Llama-3.2-1B's attention (32 query heads, 8
// key/value heads, head dim 64) and (16, 16, 128); ctx 4K, 16K, 64K; batch 1, 4, 32.
//
// Each variant is captured `kCallsPerGraph` times into one CUDA graph (as decoding replays it) and
// timed by replaying: the time per call excludes host launch overhead. GB/s counts the visible
// keys and values read once (2 * B * Hkv * ctx * D * 2 bytes) against the HBM bandwidth.
//
//   attention_decode_bench [--hbm-tbps 4.8] [--json FILE]
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "hyb/common/json_util.h"
#include "hyb/kernels/cuda_attention.h"

namespace {

constexpr int kCallsPerGraph = 20;
constexpr int64_t kReservedSlots = 256;

// Median over 7 batches of the time per call of `f`, captured kCallsPerGraph times in a CUDA
// graph and replayed `replays` times per batch; after one eager warm-up call. Milliseconds.
double GraphTimeMs(const std::function<void()>& f, int replays) {
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
  c10::cuda::getCurrentCUDAStream().synchronize();
  const c10::cuda::CUDAStreamGuard guard(side);
  f();
  side.synchronize();
  at::cuda::CUDAGraph graph;
  graph.capture_begin();
  for (int i = 0; i < kCallsPerGraph; ++i) f();
  graph.capture_end();
  graph.replay();
  side.synchronize();
  std::vector<double> ms;
  for (int batch = 0; batch < 7; ++batch) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < replays; ++i) graph.replay();
    side.synchronize();
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() /
        (replays * kCallsPerGraph));
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  double hbm_tbps = 4.8;
  std::string json_path;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--hbm-tbps") {
      hbm_tbps = std::stod(v);
    } else if (k == "--json") {
      json_path = v;
    } else {
      std::cerr << "unknown flag " << k << "\n";
      return 2;
    }
  }
  if (argc % 2 == 0) {
    std::cerr << "usage: attention_decode_bench [--hbm-tbps 4.8] [--json FILE]\n";
    return 2;
  }
  if (!torch::cuda::is_available()) {
    std::cerr << "attention_decode_bench: no CUDA device\n";
    return 1;
  }
  const auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const auto long_opts = at::TensorOptions().device(at::kCUDA).dtype(at::kLong);
  hyb::Json rows = hyb::Json::array();
  at::NoGradGuard no_grad;

  std::cout << "| op | H | Hkv | D | ctx | batch | us/call | GB/s | % of " << hbm_tbps
            << " TB/s | vs ours |\n|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& [h, hkv, d] :
       std::vector<std::tuple<int64_t, int64_t, int64_t>>{{32, 8, 64}, {16, 16, 128}}) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    for (const int64_t ctx : {4096, 16384, 65536}) {
      for (const int64_t b : {1, 4, 32}) {
        torch::manual_seed(0);
        const int64_t cap = ctx + kReservedSlots;
        const at::Tensor q = at::randn({b, h, 1, d}, bf16);
        const at::Tensor k = at::randn({b, hkv, cap, d}, bf16);
        const at::Tensor v = at::randn({b, hkv, cap, d}, bf16);
        const at::Tensor pos = at::full({1}, ctx - 1, long_opts);
        const double bytes = 2.0 * static_cast<double>(b * hkv * ctx * d) * 2;
        const int replays = bytes > 1e9 ? 3 : 20;
        double ours_ms = 0;
        auto row = [&](const std::string& op, double ms) {
          const double gbps = bytes / (ms * 1e-3) / 1e9;
          std::cout << "| " << op << " | " << h << " | " << hkv << " | " << d << " | " << ctx
                    << " | " << b << " | " << std::fixed << std::setprecision(1) << ms * 1e3
                    << " | " << std::setprecision(0) << gbps << " | " << std::setprecision(1)
                    << 100 * gbps / (hbm_tbps * 1e3) << " | " << std::setprecision(2)
                    << ms / ours_ms << "x |\n";
          rows.push_back({{"op", op},
                          {"heads", h},
                          {"kv_heads", hkv},
                          {"head_dim", d},
                          {"ctx", ctx},
                          {"capacity", cap},
                          {"batch", b},
                          {"us_per_call", ms * 1e3},
                          {"kv_gbps", gbps},
                          {"hbm_fraction", gbps / (hbm_tbps * 1e3)}});
        };
        ours_ms = GraphTimeMs(
            [&] { hyb::kernels::cuda::AttentionDecodeAt(q, k, v, pos, 0, scale); }, replays);
        row("split_kv_decode (ours)", ours_ms);
#if TORCH_VERSION_MAJOR >= 2
        // The query heads of a key/value group as its rows, as SoftmaxAttention passes them.
        const at::Tensor qg = q.reshape({b, hkv, h / hkv, d});
        // Before: the mask built from the device position every token, then SDPA over the
        // whole buffer.
        row("sdpa, mask over the buffer",
            GraphTimeMs(
                [&] {
                  const std::optional<at::Tensor> mask =
                      at::arange(cap, long_opts).le(pos).view({1, 1, 1, cap});
                  at::scaled_dot_product_attention(qg, k, v, mask, 0.0, false, scale);
                },
                replays));
        const at::Tensor kv_k = k.narrow(2, 0, ctx), kv_v = v.narrow(2, 0, ctx);
        row("sdpa, visible keys only",
            GraphTimeMs(
                [&] {
                  at::scaled_dot_product_attention(qg, kv_k, kv_v, std::nullopt, 0.0, false,
                                                   scale);
                },
                replays));
#endif
      }
    }
  }
  if (!json_path.empty()) std::ofstream(json_path) << rows.dump(1) << "\n";
  return 0;
}
