// GPU speed of the fused logits scores (kernels/cuda/logits_score.cu) beside the ATen composition
// the validation scorers ran before them (worker/src/task_scoring.cc: rows in chunks of 256 MiB
// of fp32, x = logits.to(fp32), gather - logsumexp; and two fp32 log_softmax then
// (p.exp() * (p - q)).sum(1)), on [N, V] bf16 logits: N = 16384 tokens, V = 128256 (Llama 3's
// vocabulary) by default. GB/s counts the bytes that must move: the logits (and the teacher's) in
// bf16 once, targets and results. Also prints the largest difference between the two.
//
//   logits_score_bench [--rows 16384] [--vocab 128256] [--hbm-tbps 4.8] [--json FILE]
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <string>
#include <vector>

#include "hyb/common/json_util.h"
#include "hyb/kernels/logits.h"
#include "cuda_timing.h"

namespace {

using hyb::bench::TimeMs;

// Rows per chunk as ScoringOptions::logits_chunk_bytes (256 MiB) of fp32 gives them.
int64_t ChunkRows(int64_t vocab) { return std::max<int64_t>(1, (int64_t{256} << 20) / (vocab * 4)); }

at::Tensor AtenLogProbs(const at::Tensor& logits, const at::Tensor& targets) {
  const int64_t n = logits.size(0), chunk = ChunkRows(logits.size(1));
  at::Tensor out = at::empty({n}, logits.options().dtype(at::kFloat));
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    const int64_t c = std::min(chunk, n - r0);
    const at::Tensor x = logits.narrow(0, r0, c).to(at::kFloat);
    out.narrow(0, r0, c).copy_(x.gather(1, targets.narrow(0, r0, c).unsqueeze(1)).squeeze(1) -
                               x.logsumexp(1));
  }
  return out;
}

at::Tensor AtenKl(const at::Tensor& teacher, const at::Tensor& logits) {
  const int64_t n = logits.size(0), chunk = ChunkRows(logits.size(1));
  at::Tensor out = at::empty({n}, logits.options().dtype(at::kFloat));
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    const int64_t c = std::min(chunk, n - r0);
    const at::Tensor q = at::log_softmax(logits.narrow(0, r0, c).to(at::kFloat), 1);
    const at::Tensor p = at::log_softmax(teacher.narrow(0, r0, c).to(at::kFloat), 1);
    out.narrow(0, r0, c).copy_((p.exp() * (p - q)).sum(1));
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t rows = 16384, vocab = 128256;
  double hbm_tbps = 4.8;
  std::string json_path;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--rows") {
      rows = std::stoll(v);
    } else if (k == "--vocab") {
      vocab = std::stoll(v);
    } else if (k == "--hbm-tbps") {
      hbm_tbps = std::stod(v);
    } else if (k == "--json") {
      json_path = v;
    } else {
      std::cerr << "unknown flag " << k << "\n";
      return 2;
    }
  }
  if (!torch::cuda::is_available()) {
    std::cerr << "logits_score_bench: no CUDA device\n";
    return 1;
  }
#ifndef HYB_WITH_CUDA
  std::cerr << "logits_score_bench: built without HYB_CUDA (no fused kernels to measure)\n";
  return 1;
#else
  at::NoGradGuard no_grad;
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  torch::manual_seed(0);
  const at::Tensor logits =
      (3 * at::randn({rows, vocab}, f32) + 5 * at::randn({rows, 1}, f32)).to(at::kBFloat16);
  const at::Tensor teacher =
      (logits.to(at::kFloat) + 0.5 * at::randn({rows, vocab}, f32)).to(at::kBFloat16);
  const at::Tensor targets = at::randint(0, vocab, {rows}, f32.dtype(at::kLong));
  if (!hyb::kernels::cuda::TokenLogProbsSupported(logits, targets) ||
      !hyb::kernels::cuda::RowKlSupported(teacher, logits)) {
    std::cerr << "logits_score_bench: the fused kernels do not take these inputs\n";
    return 1;
  }

  const double elems = static_cast<double>(rows) * static_cast<double>(vocab);
  const double logp_bytes = elems * 2 + static_cast<double>(rows) * (8 + 4);
  const double kl_bytes = 2 * elems * 2 + static_cast<double>(rows) * 4;
  const double ours_logp = TimeMs([&] { hyb::kernels::TokenLogProbs(logits, targets); }, 5);
  const double aten_logp = TimeMs([&] { AtenLogProbs(logits, targets); }, 2);
  const double ours_kl = TimeMs([&] { hyb::kernels::RowKl(teacher, logits); }, 5);
  const double aten_kl = TimeMs([&] { AtenKl(teacher, logits); }, 2);
  const double logp_diff =
      (hyb::kernels::TokenLogProbs(logits, targets) - AtenLogProbs(logits, targets))
          .abs()
          .max()
          .item<double>();
  const double kl_diff =
      (hyb::kernels::RowKl(teacher, logits) - AtenKl(teacher, logits)).abs().max().item<double>();

  hyb::Json out = hyb::Json::array();
  std::cout << "[" << rows << ", " << vocab << "] bf16 logits\n"
            << "| op | impl | ms | GB/s | HBM bound ms | speed-up |\n|---|---|---|---|---|---|\n";
  auto row = [&](const std::string& op, const std::string& impl, double ms, double bytes,
                 double base_ms) {
    const double bound_ms = bytes / (hbm_tbps * 1e12) * 1e3;
    std::cout << "| " << op << " | " << impl << " | " << std::fixed << std::setprecision(3) << ms
              << " | " << std::setprecision(0) << bytes / (ms * 1e-3) / 1e9 << " | "
              << std::setprecision(3) << bound_ms << " | " << std::setprecision(1)
              << base_ms / ms << "x |\n";
    out.push_back({{"op", op},
                   {"impl", impl},
                   {"rows", rows},
                   {"vocab", vocab},
                   {"ms", ms},
                   {"gbps", bytes / (ms * 1e-3) / 1e9},
                   {"hbm_bound_ms", bound_ms}});
  };
  row("token_log_probs", "aten (task_scoring today)", aten_logp, logp_bytes, aten_logp);
  row("token_log_probs", "fused cuda", ours_logp, logp_bytes, aten_logp);
  row("row_kl", "aten (task_scoring today)", aten_kl, kl_bytes, aten_kl);
  row("row_kl", "fused cuda", ours_kl, kl_bytes, aten_kl);
  std::cout << std::scientific << std::setprecision(2)
            << "largest |fused - aten|: token_log_probs " << logp_diff << ", row_kl " << kl_diff
            << "\n";
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(1) << "\n";
  return 0;
#endif
}
