// Throughput of the linear-attention operators' chunked forms (forward, and forward + backward)
// against the recurrent form and softmax attention, measured in one run on the same machine.
// Results go to stdout as a Markdown table and, with --json FILE, as JSON.
//
//   linear_attention_bench [--tokens 512,2048] [--heads 8] [--head-dim 64] [--chunk 32]
//                          [--threads N] [--device cpu|cuda] [--repeats 5] [--json FILE]
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "hyb/common/json_util.h"
#include "hyb/kernels/attention.h"
#include "hyb/kernels/linear_attention.h"

namespace {

using hyb::kernels::AttentionOptions;

struct Args {
  std::vector<int64_t> tokens = {512, 2048};
  int64_t heads = 8, head_dim = 64, chunk = 32, repeats = 5, threads = 0;
  std::string device = "cpu", json;
};

void Sync(const at::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize();
}

// Median seconds of `repeats` runs after one warm-up.
double Time(const std::function<void()>& f, int64_t repeats, const at::Device& d) {
  f();
  Sync(d);
  std::vector<double> s;
  for (int64_t i = 0; i < repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    Sync(d);
    s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(s.begin(), s.end());
  return s[s.size() / 2];
}

std::vector<int64_t> ParseList(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoll(item));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--tokens") a.tokens = ParseList(v);
    else if (k == "--heads") a.heads = std::stoll(v);
    else if (k == "--head-dim") a.head_dim = std::stoll(v);
    else if (k == "--chunk") a.chunk = std::stoll(v);
    else if (k == "--repeats") a.repeats = std::stoll(v);
    else if (k == "--threads") a.threads = std::stoll(v);
    else if (k == "--device") a.device = v;
    else if (k == "--json") a.json = v;
    else {
      std::cerr << "unknown flag " << k << "\n";
      return 2;
    }
  }
  if (a.threads > 0) at::set_num_threads(static_cast<int>(a.threads));
  const at::Device dev(a.device);
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(dev);
  const int64_t b = 1, h = a.heads, d = a.head_dim;
  hyb::Json results = hyb::Json::array();
  std::cout << "| op | T | pass | ms | tokens/s |\n|---|---|---|---|---|\n";
  auto report = [&](const std::string& op, int64_t t, const std::string& pass, double sec) {
    const double tps = static_cast<double>(b * t) / sec;
    std::cout << "| " << op << " | " << t << " | " << pass << " | " << std::fixed
              << std::setprecision(2) << sec * 1e3 << " | " << std::setprecision(0) << tps
              << " |\n";
    results.push_back({{"op", op}, {"tokens", t}, {"pass", pass}, {"seconds", sec},
                       {"tokens_per_second", tps}});
  };
  for (int64_t t : a.tokens) {
    torch::manual_seed(0);
    at::Tensor q = at::randn({b, h, t, d}, opts), k = at::randn({b, h, t, d}, opts);
    at::Tensor v = at::randn({b, h, t, d}, opts);
    k = k / k.norm(2, -1, true);
    at::Tensor g_vec = -0.05 * at::rand({b, h, t, d}, opts);
    at::Tensor g_head = -0.05 * at::rand({b, h, t}, opts);
    at::Tensor beta = at::sigmoid(at::randn({b, h, t}, opts));
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    {
      at::NoGradGuard no_grad;
      report("gla_chunked", t, "forward", Time([&] {
        hyb::kernels::GlaChunked(q, k, v, g_vec, scale, {}, a.chunk);
      }, a.repeats, dev));
      report("gated_delta_chunked", t, "forward", Time([&] {
        hyb::kernels::GatedDeltaChunked(q, k, v, g_head, beta, scale, {}, a.chunk);
      }, a.repeats, dev));
      report("gla_recurrent", t, "forward", Time([&] {
        hyb::kernels::GlaRecurrent(q, k, v, g_vec, scale, {});
      }, std::max<int64_t>(1, a.repeats / 2), dev));
      report("gated_delta_recurrent", t, "forward", Time([&] {
        hyb::kernels::GatedDeltaRecurrent(q, k, v, g_head, beta, scale, {});
      }, std::max<int64_t>(1, a.repeats / 2), dev));
      AttentionOptions ao;
      ao.scale = scale;
      report("softmax_attention_causal", t, "forward", Time([&] {
        hyb::kernels::SoftmaxAttention(q, k, v, ao);
      }, a.repeats, dev));
    }
    // Forward + backward (the distillation path).
    std::vector<at::Tensor> leaves = {q, k, v, g_vec, g_head, beta};
    for (auto& x : leaves) x = x.detach().requires_grad_(true);
    report("gla_chunked", t, "fwd+bwd", Time([&] {
      hyb::kernels::GlaChunked(leaves[0], leaves[1], leaves[2], leaves[3], scale, {}, a.chunk)
          .output.sum()
          .backward();
    }, a.repeats, dev));
    report("gated_delta_chunked", t, "fwd+bwd", Time([&] {
      hyb::kernels::GatedDeltaChunked(leaves[0], leaves[1], leaves[2], leaves[4], leaves[5], scale,
                                      {}, a.chunk)
          .output.sum()
          .backward();
    }, a.repeats, dev));
  }
  if (!a.json.empty()) {
    hyb::Json doc = {{"device", a.device}, {"threads", at::get_num_threads()}, {"heads", h},
                     {"head_dim", d}, {"chunk", a.chunk}, {"batch", b}, {"results", results}};
    std::ofstream(a.json) << doc.dump(2) << "\n";
  }
  return 0;
}
