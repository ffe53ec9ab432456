// GPU time of the chunked Gated DeltaNet CUDA kernels: the chunk-parallel ones
// (cuda::GatedDeltaChunkedFast*, gated_delta_fast*.cu) beside the sequential fp32 ones
// (cuda::GatedDeltaChunked*, gated_delta_chunked*.cu), at 32K tokens per batch: B = 32768 / T,
// 16 heads, K = V = 128 (--dim: 64 or 256 instead), T in {1K, 2K, 4K, 8K, 32K}. bf16 q/k/v
// [B, H, T, D] (keys L2-normalised), fp32 log decays g = logsigmoid(x) / 4 and betas
// sigmoid(x) [B, H, T], no initial state, random output gradient. Prints one markdown table: ms
// for the forward alone (no autograd) and for forward + backward through each autograd function.
//
//   gated_delta_bench [--t 2048,8192] [--dim 64|128|256] [--fast-forward-only] [--reps N]
//                     [--sweep [--slice 16|32|64]]
//
// At --dim 256 the chunk-parallel kernels run the forward only (their backward takes 64 and 128):
// its forward + backward columns print "-".
// --t: only these lengths; --fast-forward-only: only the chunk-parallel forward (its column;
// the others print "-"), e.g. under `ncu` for a per-kernel profile; --reps: back-to-back calls
// per timed batch of the chunk-parallel forward (default 20; cuda_timing.h runs 1 + 7 batches);
// --sweep: instead, the chunk-parallel forward through its launcher with every width of the
// recurrence's column slices (--slice: only that one) beside the one the launcher picks itself,
// checking that every width's output equals the launcher's own bit for bit.
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <exception>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_timing.h"
#include "hyb/kernels/cuda_gated_delta.h"
#include "hyb/kernels/cuda_ops.h"

#include <ATen/cuda/CUDAContext.h>

#include "gated_delta_fast_launch.h"

namespace {

constexpr int64_t kHeads = 16, kTokensPerBatch = 32768;

using hyb::bench::TimeMs;

[[noreturn]] void Usage(const std::string& why) {
  std::cerr
      << "gated_delta_bench: " << why
      << "\nusage: gated_delta_bench [--t 2048,8192] [--dim 64|128|256] [--fast-forward-only] "
         "[--reps N] [--sweep [--slice 16|32|64]]\n";
  std::exit(2);
}

int64_t PositiveInt(const std::string& flag, const std::string& text) {
  size_t used = 0;
  int64_t x = 0;
  try {
    x = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || x <= 0) Usage(flag + " wants a positive integer, got '" + text + "'");
  return x;
}

// The chunk-parallel forward through LaunchGatedDeltaFast with every recurrence slice width,
// K = V = dim, one table row per (T, width); "auto" is the width the launcher picks itself.
void Sweep(const std::vector<int64_t>& lengths, int64_t dim, int reps, int only_slice) {
  namespace cuda = hyb::kernels::cuda;
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const auto bf = f32.dtype(at::kBFloat16);
  std::cout << "| T | B | recurrence's value columns per block | fwd ms |\n|---|---|---|---|\n";
  for (const int64_t t : lengths) {
    const int64_t b = kTokensPerBatch / t, bh = b * kHeads, n = (t + 63) / 64, tp = 64 * n;
    torch::manual_seed(0);
    const at::Tensor q = at::randn({bh, t, dim}, f32).to(at::kBFloat16);
    const at::Tensor kn = at::randn({bh, t, dim}, f32);
    const at::Tensor k = (kn / kn.norm(2, -1, true)).to(at::kBFloat16);
    const at::Tensor v = at::randn({bh, t, dim}, f32).to(at::kBFloat16);
    const at::Tensor g = at::log_sigmoid(at::randn({bh, t}, f32)) / 4;
    const at::Tensor beta = at::sigmoid(at::randn({bh, t}, f32));
    const at::Tensor o = at::empty({bh, t, dim}, bf), s1 = at::empty({bh, dim, dim}, f32);
    const at::Tensor w = at::empty({bh, tp, dim}, bf), u = at::empty({bh, tp, dim}, bf);
    const at::Tensor vn = at::empty({bh, tp, dim}, bf), bb = at::empty({bh, tp}, f32);
    const at::Tensor cs = at::empty({bh, n, dim, dim}, bf), ti = at::empty({bh, tp, 64}, bf);
    cuda::GatedDeltaFastParams p;
    p.q = q.data_ptr();
    p.k = k.data_ptr();
    p.v = v.data_ptr();
    p.g = g.data_ptr<float>();
    p.beta = beta.data_ptr<float>();
    p.o = o.data_ptr();
    p.final_state = s1.data_ptr<float>();
    p.ws = {w.data_ptr(),         u.data_ptr(),  vn.data_ptr(),
            bb.data_ptr<float>(), cs.data_ptr(), ti.data_ptr()};
    p.batch_heads = bh;
    p.tokens = t;
    p.key_dim = p.value_dim = static_cast<int>(dim);
    p.scale = 1.f / std::sqrt(static_cast<float>(dim));
    p.num_sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    const int chosen =
        cuda::GatedDeltaFastForwardSliceColumns(bh, static_cast<int>(dim), p.num_sms);
    at::Tensor o_auto, s1_auto;  // every slice computes the same sums in the same order
    for (const int slice : {0, 16, 32, 64}) {
      if (slice > 0 && only_slice > 0 && slice != only_slice) continue;
      p.slice_columns = slice;
      const auto stream = at::cuda::getCurrentCUDAStream().stream();
      if (cuda::LaunchGatedDeltaFast(p, stream) != cudaSuccess) {
        std::cerr << "gated_delta_bench: launch failed at T " << t << ", slice " << slice << "\n";
        std::exit(1);
      }
      torch::cuda::synchronize();
      if (slice == 0) {
        o_auto = o.clone();
        s1_auto = s1.clone();
      }
      const bool same = at::equal(o, o_auto) && at::equal(s1, s1_auto);
      const double ms = TimeMs([&] { cuda::LaunchGatedDeltaFast(p, stream); }, reps);
      std::cout << std::fixed << std::setprecision(3) << "| " << t << " | " << b << " | "
                << (slice == 0 ? "auto (" + std::to_string(chosen) + ")" : std::to_string(slice))
                << " | " << ms << (same ? "" : " (output differs from auto's!)") << " |\n";
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> lengths = {1024, 2048, 4096, 8192, 32768};
  bool fast_forward_only = false, sweep = false;
  int64_t dim = 128;  // K = V
  int reps = 20, only_slice = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--fast-forward-only") {
      fast_forward_only = true;
    } else if (a == "--sweep") {
      sweep = true;
    } else if (a == "--t" || a == "--reps" || a == "--slice" || a == "--dim") {
      if (i + 1 >= argc) Usage(a + " needs a value");
      const std::string v = argv[++i];
      if (a == "--dim") {
        dim = PositiveInt(a, v);
        if (dim != 64 && dim != 128 && dim != 256) Usage("--dim is 64, 128 or 256");
        continue;
      }
      if (a != "--t") {
        const int x = static_cast<int>(PositiveInt(a, v));
        if (a == "--slice" && x != 16 && x != 32 && x != 64) Usage("--slice is 16, 32 or 64");
        (a == "--reps" ? reps : only_slice) = x;
        continue;
      }
      lengths.clear();
      std::stringstream list(v);
      for (std::string item; std::getline(list, item, ',');) {
        const int64_t t = PositiveInt(a, item);
        if (kTokensPerBatch % t != 0) Usage("--t " + item + " does not divide 32768 tokens");
        lengths.push_back(t);
      }
    } else {
      Usage("unknown argument '" + a + "'");
    }
  }
  if (!torch::cuda::is_available()) {
    std::cerr << "gated_delta_bench: no CUDA device\n";
    return 1;
  }
  // The chunk-parallel backward: K = V in {64, 128}; the forward takes every --dim.
  const bool chunk_parallel_backward =
      hyb::kernels::cuda::GatedDeltaFastSupportsDims(static_cast<int>(dim), static_cast<int>(dim));
  if (sweep) {
    Sweep(lengths, dim, reps, only_slice);
    return 0;
  }
  namespace cuda = hyb::kernels::cuda;
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  std::cout
      << "| T | B | sequential fwd ms | chunk-parallel fwd ms | speedup | sequential fwd+bwd ms "
         "| chunk-parallel fwd+bwd ms | speedup |\n"
      << "|---|---|---|---|---|---|---|---|\n";
  for (const int64_t t : lengths) {
    const int64_t b = kTokensPerBatch / t;
    torch::manual_seed(0);
    const at::Tensor q = at::randn({b, kHeads, t, dim}, f32).to(at::kBFloat16).requires_grad_(true);
    const at::Tensor kn = at::randn({b, kHeads, t, dim}, f32);
    const at::Tensor k = (kn / kn.norm(2, -1, true)).to(at::kBFloat16).requires_grad_(true);
    const at::Tensor v = at::randn({b, kHeads, t, dim}, f32).to(at::kBFloat16).requires_grad_(true);
    const at::Tensor g = (at::log_sigmoid(at::randn({b, kHeads, t}, f32)) / 4).requires_grad_(true);
    const at::Tensor beta = at::sigmoid(at::randn({b, kHeads, t}, f32)).requires_grad_(true);
    const at::Tensor d_o = at::randn({b, kHeads, t, dim}, f32).to(at::kBFloat16);
    const double scale = 1.0 / std::sqrt(static_cast<double>(dim));

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
    const double new_f = forward_ms(true, reps);
    if (!fast_forward_only && !chunk_parallel_backward) {
      const double old_f = forward_ms(false, 3), old_fb = forward_backward_ms(false, 3);
      std::cout << std::fixed << std::setprecision(3) << "| " << t << " | " << b << " | " << old_f
                << " | " << new_f << " | " << std::setprecision(1) << old_f / new_f << "x | "
                << std::setprecision(3) << old_fb << " | - | - |\n";
      continue;
    }
    if (fast_forward_only) {
      std::cout << std::fixed << std::setprecision(3) << "| " << t << " | " << b << " | - | "
                << new_f << " | - | - | - | - |\n";
      continue;
    }
    const double old_f = forward_ms(false, 3);
    const double old_fb = forward_backward_ms(false, 3), new_fb = forward_backward_ms(true, 10);
    std::cout << std::fixed << std::setprecision(2) << "| " << t << " | " << b << " | " << old_f
              << " | " << new_f << " | " << std::setprecision(1) << old_f / new_f << "x | "
              << std::setprecision(2) << old_fb << " | " << new_fb << " | " << std::setprecision(1)
              << old_fb / new_fb << "x |\n";
  }
  return 0;
}
