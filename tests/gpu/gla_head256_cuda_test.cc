// GPU tests of the chunked GLA CUDA kernels at head dims of 256 (ctest label `gpu`): the kernels
// run the 64/128 code on key/value slices and add the outputs that are sums over slices in fp32
// (kernels/cuda/gla_slices.cuh). Outputs, final states and every gradient against the fp64 ATen
// reference, within the tolerance of linear_attention_cuda_test.cc (below 1e-2 and below twice
// the error of the same reference run in bf16); the slices against separate 128-dim runs (the
// decomposition itself, with tight bounds); a packed batch through autograd. Before these ran: a
// torch-free driver of the launchers against an fp64 token-by-token recurrence on an H200 (every
// pair of {64, 128, 256}, T 1-4,096, packed batches) measured 2.8-3.3e-3 on o, 1.6e-3 on S_T and
// 1.8-5.0e-3 on the gradients (dg the largest), the same as at 64/128; compute-sanitizer memcheck
// clean on small 256 cases.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "gpu_test_util.h"
#include "hyb/kernels/cuda_ops.h"
#include "hyb/kernels/linear_attention.h"

namespace hyb {
namespace {

#ifdef HYB_WITH_CUDA

at::Tensor D(const at::Tensor& x) { return x.defined() ? x.to(at::kDouble) : x; }
at::Tensor Bf(const at::Tensor& x) { return x.defined() ? x.to(at::kBFloat16) : x; }

struct GlaInputs {
  at::Tensor q, k, v, g, s0;  // q, k, v bf16; g, s0 fp32 (s0 may be undefined)
  at::Tensor d_o, d_s;        // upstream gradients: do bf16, dS_T fp32 (may be undefined)
};

// GLA inputs as the mixer makes them (gates logsigmoid(x) / 16, keys L2-normalised) and upstream
// gradients for sum(o * d_o) + sum(S_T * d_s).
GlaInputs MakeGla(int64_t b, int64_t h, int64_t t, int64_t dk, int64_t dv, bool with_state,
                  bool with_final_grad) {
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  GlaInputs in;
  in.q = at::randn({b, h, t, dk}, f32).to(at::kBFloat16);
  const at::Tensor k = at::randn({b, h, t, dk}, f32);
  in.k = (k / k.norm(2, -1, true)).to(at::kBFloat16);
  in.v = at::randn({b, h, t, dv}, f32).to(at::kBFloat16);
  in.g = at::log_sigmoid(at::randn({b, h, t, dk}, f32)) / 16;
  if (with_state) in.s0 = at::randn({b, h, dk, dv}, f32);
  in.d_o = at::randn({b, h, t, dv}, f32).to(at::kBFloat16);
  if (with_final_grad) in.d_s = at::randn({b, h, dk, dv}, f32);
  return in;
}

// Output, final state and gradients of one computation.
struct Result {
  at::Tensor o, s1, dq, dk, dv, dg, ds0;
};

// The ATen reference under autograd with every input in `type` (fp64: the oracle; bf16: the
// error a bf16 implementation makes). ds0 is the gradient for a zero state without one.
Result Reference(const GlaInputs& in, at::ScalarType type, double scale) {
  auto leaf = [&](const at::Tensor& x) { return x.to(type).detach().requires_grad_(true); };
  const at::Tensor q = leaf(in.q), k = leaf(in.k), v = leaf(in.v), g = leaf(in.g);
  const at::Tensor s0 =
      leaf(in.s0.defined() ? in.s0
                           : at::zeros({in.q.size(0), in.q.size(1), in.q.size(3), in.v.size(3)},
                                       in.g.options()));
  const auto r = kernels::GlaChunkedReference(q, k, v, g, scale, s0, 64);
  std::vector<at::Tensor> outs = {r.output}, grads = {in.d_o.to(type)};
  if (in.d_s.defined()) {
    outs.push_back(r.final_state);
    grads.push_back(in.d_s.to(type));
  }
  const auto d = torch::autograd::grad(outs, {q, k, v, g, s0}, grads);
  return {r.output.detach(), r.final_state.detach(), d[0], d[1], d[2], d[3], d[4]};
}

// The kernels: the forward through the dispatch point, the gradients (fp32) through the CUDA
// backward entry point.
Result Kernel(const GlaInputs& in, double scale) {
  const auto fwd = kernels::GlaChunked(in.q, in.k, in.v, in.g, scale, in.s0, 64);
  EXPECT_EQ(fwd.final_state.scalar_type(), at::kFloat) << "the CUDA kernel did not run";
  const auto bwd =
      kernels::cuda::GlaChunkedBackward(in.q, in.k, in.v, in.g, scale, in.s0, in.d_o, in.d_s);
  return {fwd.output, fwd.final_state, bwd.dq, bwd.dk, bwd.dv, bwd.dg, bwd.d_initial_state};
}

std::vector<std::tuple<const char*, at::Tensor, at::Tensor>> Parts(const Result& a,
                                                                   const Result& b) {
  return {{"o", a.o, b.o},    {"S_T", a.s1, b.s1}, {"dq", a.dq, b.dq},   {"dk", a.dk, b.dk},
          {"dv", a.dv, b.dv}, {"dg", a.dg, b.dg},  {"ds0", a.ds0, b.ds0}};
}

// `got` against the fp64 reference: below 1e-2 and below twice the bf16 reference's error
// (bf16 operands with fp32 accumulation, as the 64/128 kernels; linear_attention_cuda_test.cc
// measured 0.2-0.75x of the bf16 reference's error there). Prints every error.
void ExpectWithinBf16ReferenceError(const Result& got, const Result& ref, const Result& ref_bf16,
                                    const std::string& label) {
  const auto vs_ref = Parts(got, ref), vs_bf16 = Parts(ref_bf16, ref);
  std::cout << "[gla h256] " << label;
  for (size_t i = 0; i < vs_ref.size(); ++i) {
    const auto& [name, x, want] = vs_ref[i];
    const double err = RelErr(x, want);
    const double err_bf16 = RelErr(std::get<1>(vs_bf16[i]), want);
    std::cout << " " << name << " " << err << " (bf16 ref " << err_bf16 << ")";
    EXPECT_TRUE(at::isfinite(x).all().item<bool>()) << label << " " << name;
    EXPECT_LT(err, 1e-2) << label << " " << name;
    EXPECT_LT(err, 2 * err_bf16) << label << " " << name;
  }
  std::cout << "\n";
}

TEST(CudaGlaHead256Test, OutputsStatesAndGradientsWithinTwiceReferenceBf16Error) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(256);
  // (B, H, T, K, V, initial state, final-state gradient): T = 1 (with a state: without one dg is
  // exactly 0), lengths around the chunk, 1,000 and 4,096 tokens (several forward segments with
  // few heads), with and without an initial state; K = V = 256 and the pairs with 64 and 128;
  // more (batch, head) pairs than multiprocessors (one segment, the reverse scan's widest slices).
  const std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool>> cases = {
      {2, 2, 1, 256, 256, true, true},    {1, 3, 63, 256, 256, false, true},
      {2, 2, 64, 256, 256, true, false},  {1, 2, 65, 256, 256, false, true},
      {1, 2, 1000, 256, 256, true, true}, {1, 2, 1000, 256, 256, false, false},
      {1, 2, 4096, 256, 256, true, true}, {1, 1, 4096, 256, 256, false, true},
      {2, 2, 200, 64, 256, true, true},   {2, 2, 200, 256, 64, false, true},
      {1, 2, 1000, 128, 256, true, true}, {1, 2, 1000, 256, 128, true, false},
      {2, 2, 65, 64, 256, false, true},   {1, 2, 63, 256, 128, true, true},
      {4, 40, 100, 256, 256, true, true}, {4, 40, 70, 64, 256, false, true}};
  for (const auto& [b, h, t, dk, dv, with_state, with_final_grad] : cases) {
    const GlaInputs in = MakeGla(b, h, t, dk, dv, with_state, with_final_grad);
    const double scale = 1.0 / std::sqrt(static_cast<double>(dk));
    ASSERT_TRUE(kernels::cuda::GlaChunkedSupported(in.q, in.k, in.v, in.g, in.s0));
    PoisonAllocator(b * h * t * (3 * dk + 2 * dv) * 4);
    const Result got = Kernel(in, scale);
    const Result ref = Reference(in, at::kDouble, scale);
    const Result ref_bf16 = Reference(in, at::kBFloat16, scale);
    std::ostringstream label;
    label << "B=" << b << " H=" << h << " T=" << t << " K=" << dk << " V=" << dv
          << " state=" << with_state << " dS_T=" << with_final_grad;
    ExpectWithinBf16ReferenceError(got, ref, ref_bf16, label.str());
  }
}

// The decomposition itself: a 256 dim equals two 128-dim runs on its halves. Value halves are
// independent (o, S_T, dv, ds0 per half; dq, dk, dg the sums of the halves'); key halves add
// their outputs (o the sum, S_T, dq, dk, dg, ds0 per half; dv the sum). Bounds: fp32 gradients
// differ only by the forward's segmentation of the sequence (the sliced launch has twice the
// blocks), ~1e-6; bf16 outputs by rare one-ulp roundings, or, summing two bf16 halves, by
// bf16's rounding (2^-9 relative per element).
TEST(CudaGlaHead256Test, SlicesEqualSeparateHalfRuns) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(257);
  auto half = [](const at::Tensor& x, int64_t dim, int64_t i) {
    return x.defined() ? x.narrow(dim, 128 * i, 128).contiguous() : x;
  };
  for (const auto& [dk, dv] : std::vector<std::pair<int64_t, int64_t>>{{128, 256}, {256, 128}}) {
    const bool split_v = dv == 256;
    const GlaInputs in = MakeGla(2, 2, 300, dk, dv, /*with_state=*/true, /*with_final_grad=*/true);
    const double scale = 0.1;
    const Result whole = Kernel(in, scale);
    std::vector<Result> parts;
    for (int64_t i = 0; i < 2; ++i) {
      GlaInputs p = in;
      if (split_v) {
        p.v = half(in.v, 3, i);
        p.d_o = half(in.d_o, 3, i);
        p.s0 = half(in.s0, 3, i);
        p.d_s = half(in.d_s, 3, i);
      } else {
        p.q = half(in.q, 3, i);
        p.k = half(in.k, 3, i);
        p.g = half(in.g, 3, i);
        p.s0 = half(in.s0, 2, i);
        p.d_s = half(in.d_s, 2, i);
      }
      parts.push_back(Kernel(p, scale));
    }
    auto cat = [&](at::Tensor Result::*m, int64_t dim) {
      return at::cat({parts[0].*m, parts[1].*m}, dim);
    };
    auto sum = [&](at::Tensor Result::*m) {
      return (parts[0].*m).to(at::kFloat) + (parts[1].*m).to(at::kFloat);
    };
    const Result joined =
        split_v ? Result{cat(&Result::o, 3),  cat(&Result::s1, 3), sum(&Result::dq),
                         sum(&Result::dk),    cat(&Result::dv, 3), sum(&Result::dg),
                         cat(&Result::ds0, 3)}
                : Result{sum(&Result::o),     cat(&Result::s1, 2), cat(&Result::dq, 3),
                         cat(&Result::dk, 3), sum(&Result::dv),    cat(&Result::dg, 3),
                         cat(&Result::ds0, 2)};
    std::cout << "[gla h256 halves] K=" << dk << " V=" << dv;
    for (const auto& [name, x, want] : Parts(whole, joined)) {
      const double err = RelErr(x, want);
      std::cout << " " << name << " " << err;
      const bool is_o = std::string(name) == "o";
      EXPECT_LT(err, is_o ? (split_v ? 2e-3 : 5e-3) : 1e-4)
          << "K=" << dk << " V=" << dv << " " << name;
    }
    std::cout << "\n";
  }
}

// Through autograd (the dispatch point's CUDA path): dq, dk, dv in bf16 equal the backward entry
// point's fp32 gradients rounded once; dg and ds0 its fp32 values.
TEST(CudaGlaHead256Test, AutogradThroughGlaChunked) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(258);
  const GlaInputs in = MakeGla(2, 2, 300, 256, 256, true, true);
  const double scale = 0.0625;
  auto leaf = [](const at::Tensor& x) { return x.detach().clone().requires_grad_(true); };
  const at::Tensor q = leaf(in.q), k = leaf(in.k), v = leaf(in.v), g = leaf(in.g), s0 = leaf(in.s0);
  const auto r = kernels::GlaChunked(q, k, v, g, scale, s0, 64);
  ASSERT_EQ(r.final_state.scalar_type(), at::kFloat) << "the CUDA path did not run";
  torch::autograd::backward({r.output, r.final_state}, {in.d_o, in.d_s});
  const auto want =
      kernels::cuda::GlaChunkedBackward(in.q, in.k, in.v, in.g, scale, in.s0, in.d_o, in.d_s);
  EXPECT_EQ(q.grad().scalar_type(), at::kBFloat16);
  EXPECT_LT(RelErr(q.grad(), want.dq.to(at::kBFloat16)), 1e-4);
  EXPECT_LT(RelErr(k.grad(), want.dk.to(at::kBFloat16)), 1e-4);
  EXPECT_LT(RelErr(v.grad(), want.dv.to(at::kBFloat16)), 1e-4);
  EXPECT_LT(RelErr(g.grad(), want.dg), 1e-6);
  EXPECT_LT(RelErr(s0.grad(), want.d_initial_state), 1e-6);
}

// A packed batch (lengths 0, 1, around the chunk, and 2,500 tokens, cut into segments with few
// heads) through the dispatch point under autograd, K = V = 256 and K = 256, V = 64, against the
// fp64 reference per sequence.
TEST(CudaGlaHead256Test, VarlenWithinTwiceReferenceBf16Error) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(259);
  const std::vector<int64_t> lengths = {1, 63, 0, 64, 65, 2500};
  std::vector<int64_t> cu = {0};
  for (const int64_t len : lengths) cu.push_back(cu.back() + len);
  const int64_t n = static_cast<int64_t>(lengths.size()), t = cu.back(), h = 2;
  for (const auto& [dk, dv] : std::vector<std::pair<int64_t, int64_t>>{{256, 256}, {256, 64}}) {
    const GlaInputs one = MakeGla(1, h, t, dk, dv, /*with_state=*/false, /*with_final_grad=*/false);
    const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
    GlaInputs in = one;
    in.s0 = at::randn({n, h, dk, dv}, f32);
    in.d_s = at::randn({n, h, dk, dv}, f32);
    const double scale = 1.0 / std::sqrt(static_cast<double>(dk));
    auto run = [&](at::ScalarType type, at::ScalarType gate_type, bool kernel) {
      auto leaf = [](const at::Tensor& x, at::ScalarType ty) {
        return x.to(ty).detach().clone().requires_grad_(true);
      };
      const at::Tensor q = leaf(in.q, type), k = leaf(in.k, type), v = leaf(in.v, type);
      const at::Tensor g = leaf(in.g, gate_type), s0 = leaf(in.s0, gate_type);
      const auto r = kernel ? kernels::GlaChunkedVarlen(q, k, v, g, scale, s0, cu, 64)
                            : kernels::GlaChunkedVarlenReference(q, k, v, g, scale, s0, cu, 64);
      if (kernel) EXPECT_EQ(r.final_state.scalar_type(), at::kFloat) << "the CUDA path did not run";
      const auto d = torch::autograd::grad(
          {r.output, r.final_state}, {q, k, v, g, s0},
          {in.d_o.to(r.output.scalar_type()), in.d_s.to(r.final_state.scalar_type())});
      return Result{r.output.detach(), r.final_state.detach(), d[0], d[1], d[2], d[3], d[4]};
    };
    PoisonAllocator(h * t * (3 * dk + 2 * dv) * 4);
    const Result got = run(at::kBFloat16, at::kFloat, /*kernel=*/true);
    const Result ref = run(at::kDouble, at::kDouble, /*kernel=*/false);
    const Result ref_bf16 = run(at::kBFloat16, at::kBFloat16, /*kernel=*/false);
    std::ostringstream label;
    label << "varlen K=" << dk << " V=" << dv;
    ExpectWithinBf16ReferenceError(got, ref, ref_bf16, label.str());
  }
}

#else  // HYB_WITH_CUDA

// The kernels (kernels/cuda/) exist only in a -DHYB_CUDA=ON build.
TEST(CudaGlaHead256Test, NeedsTheCudaBuild) { GTEST_SKIP() << "built without HYB_CUDA"; }

#endif  // HYB_WITH_CUDA

}  // namespace
}  // namespace hyb
