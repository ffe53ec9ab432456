// GPU tests of the vectorised RMSNorm kernels (kernels/cuda/rms_norm_gated.cu) through
// kernels::RmsNormGated / kernels::RmsNorm, forward and every gradient, against the ATen reference
// (ctest label `gpu`). Tolerances follow flash-attention's rule: the kernel's error against the
// function computed in fp64 must stay within twice the error of the ATen reference run in the
// kernel's dtype (plus a floor of 1e-5 for fp32).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <iostream>
#include <string>
#include <tuple>
#include <vector>

#include "gpu_test_util.h"
#include "hyb/kernels/cuda_norm.h"
#include "hyb/kernels/norm.h"

namespace hyb {
namespace {

#ifdef HYB_WITH_CUDA

constexpr double kEps = 1e-6;

// True when `out` came from the CUDA autograd node (the reference ends in a MulBackward).
bool FromCudaNode(const at::Tensor& out) {
  return out.grad_fn() != nullptr && out.grad_fn()->name().find("RmsNorm") != std::string::npos;
}

struct Inputs {
  at::Tensor x, weight, gate, d_y;  // x [B, T, H, D], gate [B, T, H * D], d_y [B, T, H, D]
};

// strided: x is the [B, T, H, D] transpose of a contiguous [B, H, T, D], as in the mixers.
Inputs Make(int64_t b, int64_t h, int64_t t, int64_t d, bool strided, at::ScalarType type) {
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  Inputs in;
  in.x = strided ? (2 * at::randn({b, h, t, d}, f32)).to(type).transpose(1, 2)
                 : (2 * at::randn({b, t, h, d}, f32)).to(type);
  in.weight = (1 + 0.3 * at::randn({d}, f32)).to(type);
  in.gate = (2 * at::randn({b, t, h * d}, f32)).to(type);
  in.d_y = at::randn({b, t, h, d}, f32).to(type);
  return in;
}

// Output and gradients (x, weight, gate; gate undefined without one) of `fn` on leaf copies of
// the inputs in `type` (their strides kept).
struct Result {
  at::Tensor out, d_x, d_weight, d_gate;
  bool cuda_node = false;
};

// The function all in x's dtype: the exact oracle in fp64 (kernels::RmsNormReference normalises
// in fp32 whatever the input type).
at::Tensor Exact(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& gate) {
  const at::Tensor y = weight * (x * at::rsqrt(x.pow(2).mean(-1, true) + kEps));
  return gate.defined() ? y * at::silu(gate.reshape(x.sizes())) : y;
}

// kDispatch: kernels::RmsNormGated / RmsNorm; kReference: their ATen references; kExact: Exact.
enum class Path { kDispatch, kReference, kExact };

Result RunNorm(const Inputs& in, bool gated, at::ScalarType type, Path path) {
  const at::Tensor x = in.x.to(type).detach().requires_grad_(true);
  const at::Tensor w = in.weight.to(type).detach().requires_grad_(true);
  const at::Tensor g = in.gate.to(type).detach().requires_grad_(true);
  at::Tensor out;
  if (path == Path::kDispatch) {
    out = gated ? kernels::RmsNormGated(x, w, g, kEps) : kernels::RmsNorm(x, w, kEps);
  } else if (path == Path::kReference) {
    out = gated ? kernels::RmsNormGatedReference(x, w, g, kEps)
                : kernels::RmsNormReference(x, w, kEps);
  } else {
    out = Exact(x, w, gated ? g : at::Tensor());
  }
  Result r;
  r.cuda_node = FromCudaNode(out);
  const auto grads = torch::autograd::grad({out}, {x, w, g}, {in.d_y.to(out.scalar_type())},
                                           c10::nullopt, false, /*allow_unused=*/true);
  r.out = out.detach();
  r.d_x = grads[0];
  r.d_weight = grads[1];
  r.d_gate = grads[2];
  return r;
}

// Checks every tensor of `got` against the fp64 reference, within twice the error of `low`
// (the reference in the kernel's dtype) plus `floor`.
void ExpectWithinReference(const Result& got, const Result& low, const Result& exact, bool gated,
                           double floor, const std::string& what) {
  const std::vector<std::tuple<const char*, at::Tensor, at::Tensor, at::Tensor>> parts = {
      {"out", got.out, low.out, exact.out},
      {"d_x", got.d_x, low.d_x, exact.d_x},
      {"d_weight", got.d_weight, low.d_weight, exact.d_weight},
      {"d_gate", got.d_gate, low.d_gate, exact.d_gate}};
  for (const auto& [name, g, l, e] : parts) {
    if (!gated && std::string(name) == "d_gate") {
      EXPECT_FALSE(g.defined()) << what;
      continue;
    }
    ASSERT_TRUE(g.defined()) << what << " " << name;
    ASSERT_EQ(g.sizes(), e.sizes()) << what << " " << name;
    EXPECT_EQ(g.scalar_type(), l.scalar_type()) << what << " " << name;
    const double err = RelErr(g, e), ref = RelErr(l, e);
    std::cout << what << " " << name << ": kernel " << err << ", reference " << ref << "\n";
    EXPECT_LE(err, 2 * ref + floor) << what << " " << name;
  }
}

TEST(CudaRmsNormGatedTest, ForwardAndGradientsWithinTwiceReferenceError) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(21);
  // (B, H, T, D): rows B * T * H never a multiple of the rows a block holds; the last case has
  // more rows than one wave of blocks (the blocks stride over rows).
  const std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>> shapes = {
      {2, 3, 333, 64}, {2, 3, 111, 128}, {3, 1, 111, 2048}, {1, 2, 3, 2048}, {4, 16, 1025, 64}};
  for (const at::ScalarType type : {at::kBFloat16, at::kFloat}) {
    // fp32: the kernel and the reference both round in fp32 and sum d_weight over up to 65600
    // rows in different orders; the floor stays far below any indexing or formula error.
    const double floor = type == at::kFloat ? 1e-5 : 0.0;
    for (const auto& [b, h, t, d] : shapes) {
      for (const bool strided : {true, false}) {
        for (const bool gated : {true, false}) {
          const Inputs in = Make(b, h, t, d, strided, type);
          const std::string what = std::string(c10::toString(type)) + " B" + std::to_string(b) +
                                   " H" + std::to_string(h) + " T" + std::to_string(t) + " D" +
                                   std::to_string(d) + (strided ? " strided" : "") +
                                   (gated ? " gated" : " plain");
          const Result got = RunNorm(in, gated, type, Path::kDispatch);
          EXPECT_TRUE(got.cuda_node) << what << ": the CUDA autograd node did not run";
          const Result low = RunNorm(in, gated, type, Path::kReference);
          const Result exact = RunNorm(in, gated, at::kDouble, Path::kExact);
          ExpectWithinReference(got, low, exact, gated, floor, what);
        }
      }
    }
  }
}

// Without gradients the forward rounds where the reference does: bf16/fp16 outputs are mostly
// bit-identical, and never more than a few roundings apart.
TEST(CudaRmsNormGatedTest, ForwardRoundsLikeTheReference) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(22);
  at::NoGradGuard no_grad;
  for (const at::ScalarType type : {at::kBFloat16, at::kHalf, at::kFloat}) {
    for (const int64_t d : {64, 128, 256, 2048}) {
      const Inputs in = Make(2, 4, 77, d, /*strided=*/true, type);
      ASSERT_TRUE(kernels::cuda::RmsNormGatedSupported(in.x, in.weight, in.gate));
      const at::Tensor got = kernels::cuda::RmsNormGated(in.x, in.weight, in.gate, kEps);
      const at::Tensor want = kernels::RmsNormGatedReference(in.x, in.weight, in.gate, kEps);
      ASSERT_EQ(got.sizes(), want.sizes());
      ASSERT_EQ(got.scalar_type(), type);
      const double ulp =
          type == at::kFloat ? 1e-6 : (type == at::kBFloat16 ? 1.0 / 128 : 1.0 / 1024);
      const at::Tensor g = got.to(at::kFloat), w = want.to(at::kFloat);
      const double err = ((g - w).abs() / (w.abs() + 1e-3)).max().item<double>();
      EXPECT_LE(err, 3 * ulp) << c10::toString(type) << " D" << d;
      if (type != at::kFloat) {
        const double same = g.eq(w).to(at::kDouble).mean().item<double>();
        EXPECT_GE(same, 0.99) << c10::toString(type) << " D" << d;
      }
    }
  }
}

// Inputs the kernels read through a copy (misaligned, uncollapsible strides), inputs they do not
// take (the reference runs), no rows, and a weight without gradient.
TEST(CudaRmsNormGatedTest, CopiesFallbacksAndEdgeCases) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(23);
  const auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  auto check = [&](const at::Tensor& x, const at::Tensor& w, const at::Tensor& gate,
                   bool expect_cuda, const char* what) {
    const at::Tensor xg = x.detach().requires_grad_(true);
    const at::Tensor wg = w.detach().requires_grad_(true);
    const at::Tensor gg = gate.detach().requires_grad_(true);
    const at::Tensor out = kernels::RmsNormGated(xg, wg, gg, kEps);
    EXPECT_EQ(FromCudaNode(out), expect_cuda) << what;
    const at::Tensor d_y = at::randn(out.sizes(), out.options());
    const auto got = torch::autograd::grad({out}, {xg, wg, gg}, {d_y});
    const at::Tensor x64 = x.to(at::kDouble).requires_grad_(true);
    const at::Tensor w64 = w.to(at::kDouble).requires_grad_(true);
    const at::Tensor g64 = gate.to(at::kDouble).requires_grad_(true);
    const at::Tensor ref = Exact(x64, w64, g64);
    const auto want = torch::autograd::grad({ref}, {x64, w64, g64}, {d_y.to(at::kDouble)});
    EXPECT_LE(RelErr(out, ref), 1e-2) << what;
    for (size_t i = 0; i < 3; ++i) {
      ASSERT_EQ(got[i].sizes(), want[i].sizes()) << what << " " << i;
      EXPECT_LE(RelErr(got[i], want[i]), 2e-2) << what << " " << i;
    }
  };
  const int64_t rows = 37, d = 64;
  const at::Tensor flat = at::randn({rows * d + 1}, bf16);
  check(flat.narrow(0, 1, rows * d).view({rows, d}), at::ones({d}, bf16),
        at::randn({rows, d}, bf16), true, "x 2 bytes off 16");
  check(flat.narrow(0, 0, rows * d).view({rows, d}), at::ones({d}, bf16),
        at::randn({rows * d + 1}, bf16).narrow(0, 1, rows * d), true, "gate 2 bytes off 16");
  check(at::randn({2, 3, 4, 5, d}, bf16).permute({3, 1, 0, 2, 4}), 1 + at::randn({d}, bf16),
        at::randn({5, 3, 2, 4 * d}, bf16), true, "four uncollapsible dims");
  check(at::randn({3, 100}, bf16), at::ones({100}, bf16), at::randn({3, 100}, bf16), false,
        "D not whole 16-byte vectors");
  check(at::randn({3, 64}, bf16), at::ones({64}, bf16.dtype(at::kFloat)),
        at::randn({3, 64}, bf16), false, "an fp32 weight");

  // No rows: empty outputs, a zero weight gradient.
  const at::Tensor empty = at::empty({0, 4, d}, bf16).requires_grad_(true);
  const at::Tensor w = at::ones({d}, bf16).requires_grad_(true);
  const at::Tensor g = at::empty({0, 4 * d}, bf16).requires_grad_(true);
  const at::Tensor out = kernels::RmsNormGated(empty, w, g, kEps);
  EXPECT_EQ(out.numel(), 0);
  const auto grads = torch::autograd::grad({out}, {empty, w, g}, {at::zeros_like(out)});
  EXPECT_EQ(grads[1].abs().sum().item<float>(), 0.f);

  // A weight that needs no gradient (a frozen norm): x and gate still get theirs.
  const at::Tensor x = at::randn({5, 7, d}, bf16).requires_grad_(true);
  const at::Tensor frozen = at::ones({d}, bf16);
  const at::Tensor out2 = kernels::RmsNorm(x, frozen, kEps);
  EXPECT_TRUE(FromCudaNode(out2));
  const auto gx = torch::autograd::grad({out2}, {x}, {at::randn_like(out2)});
  EXPECT_TRUE(gx[0].isfinite().all().item<bool>());
}

// The weight gradient is summed in a fixed order: two runs give the same bits.
TEST(CudaRmsNormGatedTest, WeightGradientIsDeterministic) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(24);
  for (const int64_t d : {64, 2048}) {
    const Inputs in = Make(2, 8, 513, d, /*strided=*/true, at::kBFloat16);
    const auto a = kernels::cuda::RmsNormGatedBackward(in.x, in.weight, in.gate, in.d_y, kEps);
    const auto b = kernels::cuda::RmsNormGatedBackward(in.x, in.weight, in.gate, in.d_y, kEps);
    EXPECT_TRUE(at::equal(a.d_weight, b.d_weight)) << d;
    EXPECT_TRUE(at::equal(a.d_x, b.d_x)) << d;
    EXPECT_EQ(a.d_gate.sizes(), in.gate.sizes()) << d;
  }
}

// Not a check: the time of forward + backward at the distillation shape ([8, 2048] tokens,
// 32 heads of 64, bf16), kernel against reference, for the log.
TEST(CudaRmsNormGatedTest, ReportsTimeAtTheMixerShape) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(25);
  const Inputs in = Make(8, 32, 2048, 64, /*strided=*/true, at::kBFloat16);
  auto time_ms = [&](Path path) {
    double best = 1e30;
    for (int rep = 0; rep < 5; ++rep) {
      torch::cuda::synchronize();
      const auto start = std::chrono::steady_clock::now();
      const Result r = RunNorm(in, /*gated=*/true, at::kBFloat16, path);
      torch::cuda::synchronize();
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count();
      if (rep > 0 && ms < best) best = ms;
    }
    return best;
  };
  const double kernel = time_ms(Path::kDispatch), reference = time_ms(Path::kReference);
  std::cout << "RmsNormGated forward+backward [8, 2048, 32, 64] bf16: kernel " << kernel
            << " ms, reference " << reference << " ms\n";
  SUCCEED();
}

#endif  // HYB_WITH_CUDA

}  // namespace
}  // namespace hyb
