// GPU tests of the chunk-parallel Gated DeltaNet kernels (kernels/cuda/gated_delta_fast*.cu,
// entry points in hyb/kernels/cuda_gated_delta.h; ctest label `gpu`): outputs, final state and
// every gradient against the fp64 ATen reference; packed sequences against separate runs. Tolerances follow flash-attention's rule: the
// kernel's error against the fp64 reference must stay within a small multiple of the error the
// same reference makes when run in bf16, under an absolute ceiling. These kernels keep their
// per-chunk intermediates in bf16 (as fla's do), so their error is of bf16's order, unlike the
// fp32 sequential kernels' (gated_delta_cuda_test.cc).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <iostream>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "gpu_test_util.h"
#include "hyb/kernels/cuda_gated_delta.h"
#include "hyb/kernels/cuda_ops.h"
#include "hyb/kernels/linear_attention.h"

#ifdef HYB_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>

#include "gated_delta_fast_launch.h"
#endif

namespace hyb {
namespace {

#ifdef HYB_WITH_CUDA

at::Tensor Bf(const at::Tensor& x) { return x.defined() ? x.to(at::kBFloat16) : x; }
at::Tensor D(const at::Tensor& x) { return x.defined() ? x.to(at::kDouble) : x; }

struct GdnInputs {
  at::Tensor q, k, v, g, beta, s0;  // q, k, v bf16; g, beta, s0 fp32 (s0 may be undefined)
};

// Inputs as the mixer makes them: keys L2-normalised, per-head log decays uniform in [g_min, 0],
// betas sigmoid(x). g and beta are rounded to bf16 values (kept in fp32) so that the bf16
// reference reads exactly what the kernels read.
GdnInputs MakeInputs(int64_t b, int64_t h, int64_t t, int64_t d, bool with_state, double g_min) {
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  GdnInputs in;
  in.q = at::randn({b, h, t, d}, f32).to(at::kBFloat16);
  const at::Tensor k = at::randn({b, h, t, d}, f32);
  in.k = (k / k.norm(2, -1, true)).to(at::kBFloat16);
  in.v = at::randn({b, h, t, d}, f32).to(at::kBFloat16);
  in.g = (at::rand({b, h, t}, f32) * g_min).to(at::kBFloat16).to(at::kFloat);
  in.beta = at::sigmoid(at::randn({b, h, t}, f32)).to(at::kBFloat16).to(at::kFloat);
  if (with_state) in.s0 = at::randn({b, h, d, d}, f32);
  return in;
}

std::string Label(int64_t b, int64_t h, int64_t t, int64_t d, bool with_state) {
  std::ostringstream s;
  s << "B=" << b << " H=" << h << " T=" << t << " K=V=" << d << " state=" << with_state;
  return s.str();
}

// The kernel's error against fp64 within `factor` times the bf16 reference's (when one was run:
// ref_bf16 >= 0) and under `ceiling`.
void ExpectWithin(const char* name, const at::Tensor& got, const at::Tensor& ref, double ref_bf16,
                  double factor, double ceiling, const std::string& label) {
  const double err = RelErr(got, ref);
  std::cout << " " << name << " " << err;
  if (ref_bf16 >= 0) std::cout << " (bf16 ref " << ref_bf16 << ")";
  EXPECT_TRUE(at::isfinite(got).all().item<bool>()) << label << " " << name;
  EXPECT_LT(err, ceiling) << label << " " << name;
  if (ref_bf16 >= 0) {
    EXPECT_LT(err, factor * ref_bf16) << label << " " << name;
  }
}

TEST(CudaGatedDeltaFastTest, ForwardWithinTwiceReferenceBf16Error) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(51);
  for (const int64_t t : {1, 63, 64, 65, 1000, 4096}) {
    for (const int64_t d : {64, 128, 256}) {
      for (const bool with_state : {false, true}) {
        const int64_t b = t <= 65 ? 2 : 1, h = t <= 65 ? 3 : 2;
        const GdnInputs in = MakeInputs(b, h, t, d, with_state, -1.0);
        const double scale = 1.0 / std::sqrt(static_cast<double>(d));
        ASSERT_TRUE(kernels::cuda::GatedDeltaChunkedFastSupported(in.q, in.k, in.v, in.g, in.beta,
                                                                  in.s0, /*forward_only=*/true));
        // The backward stops at 128.
        ASSERT_EQ(
            kernels::cuda::GatedDeltaChunkedFastSupported(in.q, in.k, in.v, in.g, in.beta, in.s0),
            d <= 128);
        PoisonAllocator(b * h * t * d * 16 + b * h * d * d * 4);
        const auto got =
            kernels::cuda::GatedDeltaChunkedFast(in.q, in.k, in.v, in.g, in.beta, scale, in.s0);
        ASSERT_EQ(got.output.scalar_type(), at::kBFloat16);
        ASSERT_EQ(got.final_state.scalar_type(), at::kFloat);
        const auto ref = kernels::GatedDeltaChunkedReference(D(in.q), D(in.k), D(in.v), D(in.g),
                                                             D(in.beta), scale, D(in.s0), 64);
        const auto ref_bf16 =
            kernels::GatedDeltaRecurrent(in.q, in.k, in.v, Bf(in.g), Bf(in.beta), scale, Bf(in.s0));
        const std::string label = Label(b, h, t, d, with_state);
        std::cout << "[gdn fast fwd] " << label;
        ExpectWithin("o", got.output, ref.output, RelErr(ref_bf16.output, ref.output), 2.0, 1e-2,
                     label);
        ExpectWithin("S_T", got.final_state, ref.final_state,
                     RelErr(ref_bf16.final_state, ref.final_state), 2.0, 1e-2, label);
        std::cout << "\n";
      }
    }
  }
}

TEST(CudaGatedDeltaFastTest, ForwardLongSequenceStrongGatesManyHeadsAndZeroTokens) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(52);
  // (B, H, T, K = V, initial state, g_min): one head of 65,536 tokens (fp64 reference only: the
  // bf16 recurrence would take minutes); log decays down to -5 per token (e^(b_t - b_s) spans
  // e^-320 inside a chunk: exponentials of differences only, nothing overflows); enough
  // (batch, head) pairs that the recurrence takes 32 and 64 value columns per block.
  const std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, bool, double>> cases = {
      {1, 1, 65536, 128, true, -1.0}, {1, 2, 1000, 64, true, -5.0}, {1, 2, 1000, 128, true, -5.0},
      {40, 1, 200, 128, true, -1.0},  {64, 4, 130, 128, true, -1.0}, {64, 4, 130, 64, false, -1.0}};
  for (const auto& [b, h, t, d, with_state, g_min] : cases) {
    const GdnInputs in = MakeInputs(b, h, t, d, with_state, g_min);
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    const auto got =
        kernels::cuda::GatedDeltaChunkedFast(in.q, in.k, in.v, in.g, in.beta, scale, in.s0);
    const auto ref = kernels::GatedDeltaChunkedReference(D(in.q), D(in.k), D(in.v), D(in.g),
                                                         D(in.beta), scale, D(in.s0), 64);
    const std::string label = Label(b, h, t, d, with_state) + " g_min=" + std::to_string(g_min);
    std::cout << "[gdn fast fwd] " << label;
    ExpectWithin("o", got.output, ref.output, -1, 0, 1e-2, label);
    ExpectWithin("S_T", got.final_state, ref.final_state, -1, 0, 1e-2, label);
    std::cout << "\n";
  }
  // T = 0: output empty, final state = initial state.
  const GdnInputs e = MakeInputs(2, 2, 0, 64, true, -1.0);
  const auto got = kernels::cuda::GatedDeltaChunkedFast(e.q, e.k, e.v, e.g, e.beta, 1.0, e.s0);
  EXPECT_EQ(got.output.size(2), 0);
  EXPECT_TRUE(at::equal(got.final_state, e.s0));
  // Unsupported head dims and dtypes are refused, not run.
  const GdnInputs odd = MakeInputs(1, 1, 8, 96, false, -1.0);
  EXPECT_FALSE(kernels::cuda::GatedDeltaChunkedFastSupported(odd.q, odd.k, odd.v, odd.g, odd.beta,
                                                             odd.s0));
  const GdnInputs ok = MakeInputs(1, 1, 8, 64, false, -1.0);
  EXPECT_TRUE(
      kernels::cuda::GatedDeltaChunkedFastSupported(ok.q, ok.k, ok.v, ok.g, ok.beta, ok.s0));
  EXPECT_FALSE(kernels::cuda::GatedDeltaChunkedFastSupported(ok.q.to(at::kFloat), ok.k, ok.v,
                                                             ok.g, ok.beta, ok.s0));
  const at::Tensor v128 = at::zeros({1, 1, 8, 128}, ok.v.options());
  EXPECT_FALSE(
      kernels::cuda::GatedDeltaChunkedFastSupported(ok.q, ok.k, v128, ok.g, ok.beta, ok.s0));
}

struct GdnGrads {
  at::Tensor dq, dk, dv, dg, dbeta, ds0;
};

// Gradients of sum(o * d_o) + sum(S_T * d_s) by autograd through an ATen reference: in fp64
// through the chunked form (the oracle), or in bf16 through the token-by-token recurrence (the
// error a bf16 implementation makes). Without an initial state, ds0 is the gradient for a zero
// state.
GdnGrads ReferenceGrads(const GdnInputs& in, bool bf16, double scale, const at::Tensor& d_o,
                        const at::Tensor& d_s) {
  const at::ScalarType type = bf16 ? at::kBFloat16 : at::kDouble;
  auto leaf = [&](const at::Tensor& x) { return x.to(type).detach().requires_grad_(true); };
  const at::Tensor q = leaf(in.q), k = leaf(in.k), v = leaf(in.v), g = leaf(in.g);
  const at::Tensor beta = leaf(in.beta);
  const at::Tensor s0 =
      leaf(in.s0.defined() ? in.s0
                           : at::zeros({in.q.size(0), in.q.size(1), in.q.size(3), in.v.size(3)},
                                       in.g.options()));
  const auto r = bf16 ? kernels::GatedDeltaRecurrent(q, k, v, g, beta, scale, s0)
                      : kernels::GatedDeltaChunkedReference(q, k, v, g, beta, scale, s0, 64);
  std::vector<at::Tensor> outs = {r.output}, grads = {d_o.to(type)};
  if (d_s.defined()) {
    outs.push_back(r.final_state);
    grads.push_back(d_s.to(type));
  }
  const auto d = torch::autograd::grad(outs, {q, k, v, g, beta, s0}, grads);
  return {d[0], d[1], d[2], d[3], d[4], d[5]};
}

// Every gradient within `factor` times the bf16 reference's error (when `ref_bf16` is given)
// and under the ceiling; prints every error.
void ExpectGrads(const GdnGrads& got, const GdnGrads& ref, const GdnGrads* ref_bf16,
                 double factor, double ceiling, const std::string& label) {
  const std::vector<std::tuple<const char*, at::Tensor, at::Tensor, at::Tensor>> parts = {
      {"dq", got.dq, ref.dq, ref_bf16 ? ref_bf16->dq : at::Tensor()},
      {"dk", got.dk, ref.dk, ref_bf16 ? ref_bf16->dk : at::Tensor()},
      {"dv", got.dv, ref.dv, ref_bf16 ? ref_bf16->dv : at::Tensor()},
      {"dg", got.dg, ref.dg, ref_bf16 ? ref_bf16->dg : at::Tensor()},
      {"dbeta", got.dbeta, ref.dbeta, ref_bf16 ? ref_bf16->dbeta : at::Tensor()},
      {"ds0", got.ds0, ref.ds0, ref_bf16 ? ref_bf16->ds0 : at::Tensor()}};
  std::cout << "[gdn fast bwd] " << label;
  for (const auto& [name, g, r, rb] : parts) {
    ExpectWithin(name, g, r, rb.defined() ? RelErr(rb, r) : -1.0, factor, ceiling, label);
  }
  std::cout << "\n";
}

GdnGrads KernelGrads(const GdnInputs& in, double scale, const at::Tensor& d_o,
                     const at::Tensor& d_s) {
  const auto k = kernels::cuda::GatedDeltaChunkedFastBackward(in.q, in.k, in.v, in.g, in.beta,
                                                              scale, in.s0, d_o, d_s);
  return {k.dq, k.dk, k.dv, k.dg, k.dbeta, k.d_initial_state};
}

TEST(CudaGatedDeltaFastBackwardTest, GradientsWithinTwiceReferenceBf16Error) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(53);
  // (B, H, T, K = V, initial state, final-state gradient): T around the chunk, long sequences;
  // 40 and 256 (batch, head) pairs take the state-gradient recurrence's 32 and 64 value columns
  // per block (the others 16). (T = 1 without an initial state has dg = 0 exactly: no relative
  // error to measure, so the T = 1 cases carry one; and 32 sequences, so that the relative
  // errors of dg and dbeta are not those of a handful of numbers.)
  const std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, bool, bool>> cases = {
      {8, 4, 1, 64, true, true},      {8, 4, 1, 128, true, false},
      {2, 2, 63, 64, false, true},    {1, 3, 63, 128, true, false},
      {1, 3, 64, 128, true, true},    {2, 2, 64, 64, false, false},
      {2, 2, 65, 64, true, true},     {1, 2, 65, 128, false, true},
      {1, 2, 1000, 128, true, true},  {2, 2, 1000, 64, false, false},
      {1, 2, 4096, 128, false, true}, {1, 2, 4096, 64, true, false},
      {40, 1, 100, 128, true, true},  {64, 4, 130, 128, true, true}};
  for (const auto& [b, h, t, d, with_state, with_final_grad] : cases) {
    const GdnInputs in = MakeInputs(b, h, t, d, with_state, -1.0);
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
    const at::Tensor d_o = at::randn({b, h, t, d}, f32).to(at::kBFloat16);
    const at::Tensor d_s = with_final_grad ? at::randn({b, h, d, d}, f32) : at::Tensor();
    PoisonAllocator(b * h * t * (8 * d + 2) * 4);
    const GdnGrads got = KernelGrads(in, scale, d_o, d_s);
    const GdnGrads ref = ReferenceGrads(in, /*bf16=*/false, scale, d_o, d_s);
    const GdnGrads ref_bf16 = ReferenceGrads(in, /*bf16=*/true, scale, d_o, d_s);
    ExpectGrads(got, ref, &ref_bf16, 2.0, 2e-2,
                Label(b, h, t, d, with_state) + " dS_T=" + std::to_string(with_final_grad));
  }
}

TEST(CudaGatedDeltaFastBackwardTest, LongSequenceStrongGatesAndZeroTokens) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(54);
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  // One head of 65,536 tokens against fp64 alone (the bf16 recurrence's autograd would take
  // minutes): the absolute ceiling the short cases' bf16 references stay under.
  {
    const GdnInputs in = MakeInputs(1, 1, 65536, 64, true, -1.0);
    const at::Tensor d_o = at::randn({1, 1, 65536, 64}, f32).to(at::kBFloat16);
    const at::Tensor d_s = at::randn({1, 1, 64, 64}, f32);
    const GdnGrads got = KernelGrads(in, 0.125, d_o, d_s);
    const GdnGrads ref = ReferenceGrads(in, /*bf16=*/false, 0.125, d_o, d_s);
    ExpectGrads(got, ref, nullptr, 0, 2e-2, Label(1, 1, 65536, 64, true));
  }
  // Log decays down to -5 per token.
  for (const int64_t d : {64, 128}) {
    const GdnInputs in = MakeInputs(1, 2, 300, d, true, -5.0);
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    const at::Tensor d_o = at::randn({1, 2, 300, d}, f32).to(at::kBFloat16);
    const at::Tensor d_s = at::randn({1, 2, d, d}, f32);
    const GdnGrads got = KernelGrads(in, scale, d_o, d_s);
    const GdnGrads ref = ReferenceGrads(in, false, scale, d_o, d_s);
    const GdnGrads ref_bf16 = ReferenceGrads(in, true, scale, d_o, d_s);
    ExpectGrads(got, ref, &ref_bf16, 2.0, 2e-2, "strong gates K=V=" + std::to_string(d));
  }
  // T = 0: empty gradients, and the initial state's gradient is the final state's.
  const GdnInputs e = MakeInputs(2, 2, 0, 64, true, -1.0);
  const at::Tensor d_s = at::randn({2, 2, 64, 64}, f32);
  const auto r = kernels::cuda::GatedDeltaChunkedFastBackward(e.q, e.k, e.v, e.g, e.beta, 1.0,
                                                              e.s0, at::Tensor(), d_s);
  EXPECT_EQ(r.dq.size(2), 0);
  EXPECT_EQ(r.dg.size(2), 0);
  EXPECT_TRUE(at::equal(r.d_initial_state, d_s));
}

TEST(CudaGatedDeltaFastBackwardTest, AutogradFunctionMatchesForwardAndBackward) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(55);
  const int64_t b = 2, h = 2, t = 300, d = 64;
  const GdnInputs in = MakeInputs(b, h, t, d, true, -1.0);
  const double scale = 0.125;
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const at::Tensor d_o = at::randn({b, h, t, d}, f32).to(at::kBFloat16);
  const at::Tensor d_s = at::randn({b, h, d, d}, f32);
  auto leaf = [](const at::Tensor& x) { return x.detach().clone().requires_grad_(true); };
  const at::Tensor q = leaf(in.q), k = leaf(in.k), v = leaf(in.v), g = leaf(in.g);
  const at::Tensor beta = leaf(in.beta), s0 = leaf(in.s0);
  const auto r = kernels::cuda::GatedDeltaChunkedFastWithGrad(q, k, v, g, beta, scale, s0);
  {
    at::NoGradGuard no_grad;
    const auto plain =
        kernels::cuda::GatedDeltaChunkedFast(in.q, in.k, in.v, in.g, in.beta, scale, in.s0);
    EXPECT_TRUE(at::equal(plain.output, r.output));
    EXPECT_TRUE(at::equal(plain.final_state, r.final_state));
  }
  torch::autograd::backward({r.output, r.final_state}, {d_o, d_s});
  EXPECT_EQ(q.grad().scalar_type(), at::kBFloat16);
  EXPECT_EQ(g.grad().scalar_type(), at::kFloat);
  EXPECT_EQ(beta.grad().scalar_type(), at::kFloat);
  EXPECT_EQ(s0.grad().scalar_type(), at::kFloat);
  const auto want = kernels::cuda::GatedDeltaChunkedFastBackward(in.q, in.k, in.v, in.g, in.beta,
                                                                 scale, in.s0, d_o, d_s);
  // The autograd function's backward reads the forward's intermediates, the standalone one
  // recomputes them: the same kernels on the same inputs. q, k, v gradients are rounded to bf16.
  const std::vector<std::tuple<const char*, at::Tensor, at::Tensor, double>> parts = {
      {"dq", q.grad(), want.dq, 8e-3},       {"dk", k.grad(), want.dk, 8e-3},
      {"dv", v.grad(), want.dv, 8e-3},       {"dg", g.grad(), want.dg, 1e-6},
      {"dbeta", beta.grad(), want.dbeta, 1e-6}, {"ds0", s0.grad(), want.d_initial_state, 1e-6}};
  std::cout << "[gdn fast autograd]";
  for (const auto& [name, x, kernel, tol] : parts) {
    const double err = RelErr(x, kernel);
    std::cout << " " << name << " " << err;
    EXPECT_LT(err, tol) << name;
  }
  std::cout << "\n";

  // No initial state, only the output used, g and beta in bf16: their gradients come back in
  // bf16, finite and not all zero.
  const at::Tensor g2 = leaf(Bf(in.g)), beta2 = leaf(Bf(in.beta));
  const auto r2 =
      kernels::cuda::GatedDeltaChunkedFastWithGrad(in.q, in.k, in.v, g2, beta2, scale, {});
  r2.output.to(at::kFloat).pow(2).sum().backward();
  ASSERT_TRUE(g2.grad().defined());
  ASSERT_TRUE(beta2.grad().defined());
  EXPECT_EQ(g2.grad().scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::isfinite(g2.grad()).all().item<bool>());
  EXPECT_TRUE(at::isfinite(beta2.grad()).all().item<bool>());
  EXPECT_GT(g2.grad().abs().sum().item<double>(), 0.0);
}

// ---------------------------------------------------------------------------------------------
// Packed sequences (cu_seqlens) through the Fast varlen entry points directly.

std::vector<int64_t> Offsets(const std::vector<int64_t>& lengths) {
  std::vector<int64_t> cu = {0};
  for (const int64_t len : lengths) cu.push_back(cu.back() + len);
  return cu;
}

// A packed batch: inputs as MakeInputs makes them ([1, H, T, D], states [N, H, D, D]), the
// upstream gradients d_o [1, H, T, D] (bf16) and d_s [N, H, D, D] (or undefined).
struct Packed {
  std::vector<int64_t> cu;
  GdnInputs in;
  at::Tensor d_o, d_s;
};

Packed MakePacked(const std::vector<int64_t>& lengths, int64_t h, int64_t d, bool with_state,
                  bool with_final_grad) {
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  Packed b;
  b.cu = Offsets(lengths);
  const int64_t t = b.cu.back(), n = static_cast<int64_t>(lengths.size());
  b.in = MakeInputs(1, h, t, d, /*with_state=*/false, -1.0);
  if (with_state) b.in.s0 = at::randn({n, h, d, d}, f32);
  b.d_o = at::randn({1, h, t, d}, f32).to(at::kBFloat16);
  if (with_final_grad) b.d_s = at::randn({n, h, d, d}, f32);
  return b;
}

// Output, final states and gradients of one packed batch (or of its sequences, packed back).
struct VarlenResult {
  at::Tensor o, s1, dq, dk, dv, dg, dbeta, ds0;
};

VarlenResult PackedRun(const Packed& b, double scale) {
  const GdnInputs& in = b.in;
  const auto f = kernels::cuda::GatedDeltaChunkedFastVarlen(in.q, in.k, in.v, in.g, in.beta,
                                                            scale, in.s0, b.cu);
  const auto d = kernels::cuda::GatedDeltaChunkedFastVarlenBackward(
      in.q, in.k, in.v, in.g, in.beta, scale, in.s0, b.d_o, b.d_s, b.cu);
  return {f.output, f.final_state, d.dq, d.dk, d.dv, d.dg, d.dbeta, d.d_initial_state};
}

// Every sequence alone through the fixed-length entry points. An empty sequence's final state is
// its initial one and its initial state's gradient its final state's (zeros when undefined).
// `with_grads` false: the forward alone (o and s1; the gradients stay undefined).
VarlenResult SeparateRuns(const Packed& b, double scale, bool with_grads = true) {
  const GdnInputs& in = b.in;
  const int64_t h = in.q.size(1), d = in.q.size(3);
  const auto f32 = in.g.options();
  std::vector<at::Tensor> o, s1, dq, dk, dv, dg, dbeta, ds0;
  for (size_t i = 0; i + 1 < b.cu.size(); ++i) {
    const int64_t t0 = b.cu[i], len = b.cu[i + 1] - b.cu[i];
    const int64_t n = static_cast<int64_t>(i);
    const at::Tensor s0 = in.s0.defined() ? in.s0.narrow(0, n, 1) : at::Tensor();
    const at::Tensor d_s = b.d_s.defined() ? b.d_s.narrow(0, n, 1) : at::Tensor();
    if (len == 0) {
      s1.push_back(s0.defined() ? s0 : at::zeros({1, h, d, d}, f32));
      ds0.push_back(d_s.defined() ? d_s : at::zeros({1, h, d, d}, f32));
      continue;
    }
    auto seq = [&](const at::Tensor& x) { return x.narrow(2, t0, len); };
    const auto f = kernels::cuda::GatedDeltaChunkedFast(seq(in.q), seq(in.k), seq(in.v),
                                                        seq(in.g), seq(in.beta), scale, s0);
    o.push_back(f.output);
    s1.push_back(f.final_state);
    if (!with_grads) continue;
    const auto g = kernels::cuda::GatedDeltaChunkedFastBackward(
        seq(in.q), seq(in.k), seq(in.v), seq(in.g), seq(in.beta), scale, s0, seq(b.d_o), d_s);
    dq.push_back(g.dq);
    dk.push_back(g.dk);
    dv.push_back(g.dv);
    dg.push_back(g.dg);
    dbeta.push_back(g.dbeta);
    ds0.push_back(g.d_initial_state);
  }
  if (!with_grads) {
    VarlenResult forward;
    forward.o = at::cat(o, 2);
    forward.s1 = at::cat(s1, 0);
    return forward;
  }
  return {at::cat(o, 2),  at::cat(s1, 0), at::cat(dq, 2),    at::cat(dk, 2),
          at::cat(dv, 2), at::cat(dg, 2), at::cat(dbeta, 2), at::cat(ds0, 0)};
}

// Packed against separate runs (the same arithmetic: bound `tight` leaves room only for bf16
// roundings of intermediates that a last-bit fp32 difference flips) and against the fp64 ATen
// reference (the fixed-length tests' ceilings: 1e-2 forward, 2e-2 gradients).
void ExpectPackedMatches(const Packed& b, double scale, double tight, const std::string& label) {
  const GdnInputs& in = b.in;
  PoisonAllocator(in.q.size(1) * in.q.size(2) * (10 * in.q.size(3) + 2) * 4);
  const VarlenResult got = PackedRun(b, scale);
  const VarlenResult alone = SeparateRuns(b, scale);
  const auto ref = kernels::GatedDeltaChunkedVarlenReference(D(in.q), D(in.k), D(in.v), D(in.g),
                                                            D(in.beta), scale, D(in.s0), b.cu, 64);
  const auto rg = kernels::GatedDeltaChunkedVarlenBackwardReference(
      D(in.q), D(in.k), D(in.v), D(in.g), D(in.beta), scale, D(in.s0), D(b.d_o), D(b.d_s), b.cu,
      64);
  const std::vector<std::tuple<const char*, at::Tensor, at::Tensor, at::Tensor, double>> parts = {
      {"o", got.o, alone.o, ref.output, 1e-2},
      {"S_T", got.s1, alone.s1, ref.final_state, 1e-2},
      {"dq", got.dq, alone.dq, rg.dq, 2e-2},
      {"dk", got.dk, alone.dk, rg.dk, 2e-2},
      {"dv", got.dv, alone.dv, rg.dv, 2e-2},
      {"dg", got.dg, alone.dg, rg.dg, 2e-2},
      {"dbeta", got.dbeta, alone.dbeta, rg.dbeta, 2e-2},
      {"ds0", got.ds0, alone.ds0, rg.d_initial_state, 2e-2}};
  std::cout << "[gdn fast varlen] " << label;
  for (const auto& [name, x, sep, r, ceiling] : parts) {
    const double err_sep = RelErr(x, sep), err = RelErr(x, r);
    std::cout << " " << name << " sep " << err_sep << (at::equal(x, sep) ? " (equal)" : "")
              << " ref " << err;
    EXPECT_TRUE(at::isfinite(x).all().item<bool>()) << label << " " << name;
    EXPECT_LE(err_sep, tight) << label << " " << name;
    EXPECT_LT(err, ceiling) << label << " " << name;
  }
  std::cout << "\n";
}

// Length-0 and length-1 sequences, lengths around the chunk (63, 64, 65) and 5,000 tokens (79
// chunks) beside them, with and without initial states and final-state gradients; many short
// sequences (more (sequence, head) pairs than multiprocessors: the recurrences' widest slices).
TEST(CudaGatedDeltaFastVarlenTest, PackedEqualsSeparateRunsAndReference) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(56);
  const std::vector<std::vector<int64_t>> sets = {{1, 63, 0, 64, 65, 1000, 5000},
                                                  {0, 1, 130, 0, 2500, 1}};
  for (const int64_t d : {64, 128}) {
    for (size_t set = 0; set < sets.size(); ++set) {
      const bool with_state = set == 0, with_final_grad = set == 0 || d == 64;
      const Packed b = MakePacked(sets[set], 2, d, with_state, with_final_grad);
      std::ostringstream label;
      label << "K=V=" << d << " set=" << set << " state=" << with_state
            << " dS_T=" << with_final_grad;
      ExpectPackedMatches(b, 1.0 / std::sqrt(static_cast<double>(d)), 5e-4, label.str());
    }
  }
  std::vector<int64_t> many;
  for (int64_t i = 0; i < 70; ++i) many.push_back((i * 37) % 200);  // 0 .. 199, some empty
  ExpectPackedMatches(MakePacked(many, 2, 64, true, true), 0.125, 5e-4, "70 sequences H=2 K=V=64");
  std::vector<int64_t> more;
  for (int64_t i = 0; i < 600; ++i) more.push_back((i * 53) % 150);
  ExpectPackedMatches(MakePacked(more, 4, 128, false, true), 1.0 / std::sqrt(128.0), 5e-4,
                      "600 sequences H=4 K=V=128");
}

// Every sequence empty (T = 0): the final states are the initial ones and the initial states'
// gradients the final states'; the autograd function's forward equals the plain forward and its
// gradients the standalone backward's; what the packed entry points refuse.
TEST(CudaGatedDeltaFastVarlenTest, EmptyBatchAutogradAndSupport) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(57);
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  {
    const Packed e = MakePacked({0, 0, 0}, 2, 64, true, true);
    const VarlenResult r = PackedRun(e, 0.125);
    EXPECT_EQ(r.o.size(2), 0);
    EXPECT_TRUE(at::equal(r.s1, e.in.s0));
    EXPECT_TRUE(at::equal(r.ds0, e.d_s));
    const Packed z = MakePacked({0, 0}, 1, 128, false, false);
    const VarlenResult rz = PackedRun(z, 0.125);
    EXPECT_TRUE(at::equal(rz.s1, at::zeros({2, 1, 128, 128}, f32)));
    EXPECT_TRUE(at::equal(rz.ds0, at::zeros({2, 1, 128, 128}, f32)));
  }
  {
    const Packed b = MakePacked({3, 0, 200, 64, 1}, 2, 64, true, true);
    const GdnInputs& in = b.in;
    auto leaf = [](const at::Tensor& x) { return x.detach().clone().requires_grad_(true); };
    const at::Tensor q = leaf(in.q), k = leaf(in.k), v = leaf(in.v), g = leaf(in.g);
    const at::Tensor beta = leaf(in.beta), s0 = leaf(in.s0);
    const auto r =
        kernels::cuda::GatedDeltaChunkedFastVarlenWithGrad(q, k, v, g, beta, 0.125, s0, b.cu);
    const VarlenResult want = PackedRun(b, 0.125);
    EXPECT_TRUE(at::equal(r.output, want.o));
    EXPECT_TRUE(at::equal(r.final_state, want.s1));
    torch::autograd::backward({r.output, r.final_state}, {b.d_o, b.d_s});
    // As AutogradFunctionMatchesForwardAndBackward: q, k, v gradients are rounded to bf16.
    EXPECT_LT(RelErr(q.grad(), want.dq), 8e-3);
    EXPECT_LT(RelErr(k.grad(), want.dk), 8e-3);
    EXPECT_LT(RelErr(v.grad(), want.dv), 8e-3);
    EXPECT_LT(RelErr(g.grad(), want.dg), 1e-6);
    EXPECT_LT(RelErr(beta.grad(), want.dbeta), 1e-6);
    EXPECT_LT(RelErr(s0.grad(), want.ds0), 1e-6);
    // The dispatch point takes these kernels for packed batches with K = V.
    const auto via_dispatch =
        kernels::GatedDeltaChunkedVarlen(in.q, in.k, in.v, in.g, in.beta, 0.125, in.s0, b.cu, 64);
    EXPECT_TRUE(at::equal(via_dispatch.output, want.o));
    EXPECT_TRUE(at::equal(via_dispatch.final_state, want.s1));
  }
  const Packed ok = MakePacked({5, 7}, 2, 64, true, false);
  const GdnInputs& in = ok.in;
  EXPECT_TRUE(kernels::cuda::GatedDeltaChunkedFastVarlenSupported(in.q, in.k, in.v, in.g, in.beta,
                                                                  in.s0, 2));
  EXPECT_FALSE(kernels::cuda::GatedDeltaChunkedFastVarlenSupported(in.q, in.k, in.v, in.g,
                                                                   in.beta, in.s0, 3));
  EXPECT_FALSE(kernels::cuda::GatedDeltaChunkedFastVarlenSupported(
      in.q.expand({2, 2, 12, 64}), in.k.expand({2, 2, 12, 64}), in.v.expand({2, 2, 12, 64}),
      in.g.expand({2, 2, 12}), in.beta.expand({2, 2, 12}), at::Tensor(), 2));
  EXPECT_FALSE(kernels::cuda::GatedDeltaChunkedFastVarlenSupported(in.q, in.k, in.v, in.g,
                                                                   in.beta, at::Tensor(), 40000));
  try {
    kernels::cuda::GatedDeltaChunkedFastVarlen(in.q, in.k, in.v, in.g, in.beta, 0.125, in.s0,
                                               {0, 5, 11});
    ADD_FAILURE() << "no error for offsets that do not end at T";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find("must equal the packed length T = 12"),
              std::string::npos)
        << e.what_without_backtrace();
  }
}

// K = V = 256: the chunk-parallel forward (no backward at this size; ForwardWithinTwice...
// covers short fixed-length batches): more (batch, head) pairs and long sequences, whose
// recurrence takes every slice width; packed sequences equal to separate runs; the dispatch
// point's choice with and without autograd.
TEST(CudaGatedDeltaFastTest, ForwardAtHeadDim256) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(58);
  const int64_t d = 256;
  const double scale = 1.0 / 16.0;
  // (B, H, T): 256 pairs (64-column slices on an H200's 132 SMs), 16 pairs (32 columns), 8 pairs
  // of 3,000 tokens with strong gates (16 columns: too few pairs for wider ones).
  const std::vector<std::tuple<int64_t, int64_t, int64_t, double>> wide = {
      {64, 4, 130, -1.0}, {2, 8, 700, -1.0}, {1, 8, 3000, -5.0}};
  for (const auto& [b, h, t, g_min] : wide) {
    const GdnInputs in = MakeInputs(b, h, t, d, true, g_min);
    const auto got =
        kernels::cuda::GatedDeltaChunkedFast(in.q, in.k, in.v, in.g, in.beta, scale, in.s0);
    const auto ref = kernels::GatedDeltaChunkedReference(D(in.q), D(in.k), D(in.v), D(in.g),
                                                         D(in.beta), scale, D(in.s0), 64);
    const std::string label = Label(b, h, t, d, true) + " g_min=" + std::to_string(g_min);
    std::cout << "[gdn fast fwd 256] " << label;
    ExpectWithin("o", got.output, ref.output, -1, 0, 1e-2, label);
    ExpectWithin("S_T", got.final_state, ref.final_state, -1, 0, 1e-2, label);
    std::cout << "\n";
  }
  // Packed sequences equal separate runs and fp64: lengths 0, 1, around the chunk and 700 (12
  // (sequence, head) pairs: 16-column slices); 17 sequences of one head (32 columns) and 60 of two
  // (64 columns), which run the recurrence's 8-warp blocks, with empty sequences among them.
  std::vector<int64_t> seventeen, sixty;
  for (int64_t i = 0; i < 17; ++i) seventeen.push_back((i * 41) % 190);
  for (int64_t i = 0; i < 60; ++i) sixty.push_back((i * 29) % 150);
  const std::vector<std::pair<std::vector<int64_t>, int64_t>> packed_sets = {
      {{1, 0, 63, 65, 700, 64}, 2}, {seventeen, 1}, {sixty, 2}};
  std::set<int> packed_slices;
  for (const auto& [lengths, heads] : packed_sets) {
    const int64_t nseq = static_cast<int64_t>(lengths.size());
    const Packed b = MakePacked(lengths, heads, d, true, false);
    const GdnInputs& in = b.in;
    ASSERT_TRUE(kernels::cuda::GatedDeltaChunkedFastVarlenSupported(
        in.q, in.k, in.v, in.g, in.beta, in.s0, nseq, /*forward_only=*/true));
    ASSERT_FALSE(kernels::cuda::GatedDeltaChunkedFastVarlenSupported(in.q, in.k, in.v, in.g,
                                                                     in.beta, in.s0, nseq));
    const auto got = kernels::cuda::GatedDeltaChunkedFastVarlen(in.q, in.k, in.v, in.g, in.beta,
                                                                scale, in.s0, b.cu);
    const auto ref = kernels::GatedDeltaChunkedVarlenReference(
        D(in.q), D(in.k), D(in.v), D(in.g), D(in.beta), scale, D(in.s0), b.cu, 64);
    const VarlenResult alone = SeparateRuns(b, scale, /*with_grads=*/false);
    const at::Tensor &o_sep = alone.o, &s1_sep = alone.s1;
    const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    const int slice =
        kernels::cuda::GatedDeltaFastForwardSliceColumns(nseq * heads, static_cast<int>(d), sms);
    packed_slices.insert(slice);
    std::cout << "[gdn fast varlen 256] " << nseq << " sequences H=" << heads << " (" << slice
              << "-column slices) o sep " << RelErr(got.output, o_sep) << " ref "
              << RelErr(got.output, ref.output) << " S_T sep " << RelErr(got.final_state, s1_sep)
              << " ref " << RelErr(got.final_state, ref.final_state) << "\n";
    EXPECT_LE(RelErr(got.output, o_sep), 5e-4);
    EXPECT_LE(RelErr(got.final_state, s1_sep), 5e-4);
    EXPECT_LT(RelErr(got.output, ref.output), 1e-2);
    EXPECT_LT(RelErr(got.final_state, ref.final_state), 1e-2);
  }
  EXPECT_EQ(packed_slices, (std::set<int>{16, 32, 64}))
      << "the packed sets should take every width";
  // The dispatch point: these kernels without autograd, the sequential ones with it.
  {
    const GdnInputs in = MakeInputs(1, 2, 300, d, true, -1.0);
    const auto fast =
        kernels::cuda::GatedDeltaChunkedFast(in.q, in.k, in.v, in.g, in.beta, scale, in.s0);
    const auto plain =
        kernels::GatedDeltaChunked(in.q, in.k, in.v, in.g, in.beta, scale, in.s0, 64);
    EXPECT_TRUE(at::equal(plain.output, fast.output));
    EXPECT_TRUE(at::equal(plain.final_state, fast.final_state));
    const at::Tensor q = in.q.detach().clone().requires_grad_(true);
    const auto with_grad =
        kernels::GatedDeltaChunked(q, in.k, in.v, in.g, in.beta, scale, in.s0, 64);
    const auto sequential =
        kernels::cuda::GatedDeltaChunked(in.q, in.k, in.v, in.g, in.beta, scale, in.s0);
    EXPECT_TRUE(at::equal(with_grad.output.detach(), sequential.output));
    with_grad.output.to(at::kFloat).sum().backward();
    EXPECT_TRUE(q.grad().defined());
  }
}

#else

TEST(CudaGatedDeltaFastTest, SkippedWithoutCudaBuild) {
  GTEST_SKIP() << "built without HYB_CUDA: the chunk-parallel Gated DeltaNet kernels are absent";
}

#endif  // HYB_WITH_CUDA

}  // namespace
}  // namespace hyb
