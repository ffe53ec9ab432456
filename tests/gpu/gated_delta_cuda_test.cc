// GPU tests of the CUDA chunked Gated DeltaNet backward (kernels/cuda/gated_delta_chunked_bwd.cu),
// its autograd function and the bf16 Gated DeltaNet mixer path (ctest label `gpu`). Tolerances
// follow flash-attention's rule: the kernel's error against an fp64 reference must stay within a
// small multiple of the error the same reference makes when run in bf16, under an absolute
// ceiling.
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
#ifdef HYB_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif
#include "hyb/kernels/cuda_gated_delta.h"
#include "hyb/kernels/cuda_ops.h"
#include "hyb/kernels/linear_attention.h"
#include "hyb/worker/linear_mixer.h"

namespace hyb {
namespace {

#ifdef HYB_WITH_CUDA

at::Tensor Bf(const at::Tensor& x) { return x.defined() ? x.to(at::kBFloat16) : x; }

struct GdnInputs {
  at::Tensor q, k, v, g, beta, s0;  // q, k, v bf16; g, beta, s0 fp32 (s0 may be undefined)
};

// Inputs as the mixer makes them: keys L2-normalised, per-head log decays uniform in [g_min, 0],
// betas sigmoid(x). g and beta are rounded to bf16 values (kept in fp32) so that the bf16
// reference reads exactly what the kernel reads.
GdnInputs MakeInputs(int64_t b, int64_t h, int64_t t, int64_t dk, int64_t dv, bool with_state,
                     double g_min) {
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  GdnInputs in;
  in.q = at::randn({b, h, t, dk}, f32).to(at::kBFloat16);
  const at::Tensor k = at::randn({b, h, t, dk}, f32);
  in.k = (k / k.norm(2, -1, true)).to(at::kBFloat16);
  in.v = at::randn({b, h, t, dv}, f32).to(at::kBFloat16);
  in.g = (at::rand({b, h, t}, f32) * g_min).to(at::kBFloat16).to(at::kFloat);
  in.beta = at::sigmoid(at::randn({b, h, t}, f32)).to(at::kBFloat16).to(at::kFloat);
  if (with_state) in.s0 = at::randn({b, h, dk, dv}, f32);
  return in;
}

struct GdnGrads {
  at::Tensor dq, dk, dv, dg, dbeta, ds0;
};

// Gradients of sum(o * d_o) + sum(S_T * d_s) by autograd through an ATen reference: in fp64
// through the chunked form (the oracle), or in bf16 through the token-by-token recurrence (the
// error a bf16 implementation makes; the chunked form's triangular solve has no bf16). Without
// an initial state, ds0 is the gradient for a zero state.
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

// The kernel's gradients against the fp64 reference, beside the error of the bf16 reference;
// prints every error. The kernel reads the same bf16 q/k/v/do and fp32 g/beta/states as the
// fp64 reference and works in fp32: its error is fp32 round-off, far below bf16's.
void ExpectGradsWithinBf16ReferenceError(const GdnGrads& got, const GdnGrads& ref,
                                         const GdnGrads& ref_bf16, const std::string& label) {
  const std::vector<std::tuple<const char*, at::Tensor, at::Tensor, at::Tensor>> parts = {
      {"dq", got.dq, ref.dq, ref_bf16.dq},
      {"dk", got.dk, ref.dk, ref_bf16.dk},
      {"dv", got.dv, ref.dv, ref_bf16.dv},
      {"dg", got.dg, ref.dg, ref_bf16.dg},
      {"dbeta", got.dbeta, ref.dbeta, ref_bf16.dbeta},
      {"ds0", got.ds0, ref.ds0, ref_bf16.ds0}};
  std::cout << "[gdn bwd] " << label;
  for (const auto& [name, g, r, rb] : parts) {
    const double err = RelErr(g, r), err_bf16 = RelErr(rb, r);
    std::cout << " " << name << " " << err << " (bf16 ref " << err_bf16 << ")";
    EXPECT_TRUE(at::isfinite(g).all().item<bool>()) << label << " " << name;
    EXPECT_LT(err, 1e-2) << label << " " << name;
    EXPECT_LT(err, 2 * err_bf16) << label << " " << name;
  }
  std::cout << "\n";
}

TEST(CudaGatedDeltaBackwardTest, GradientsWithinTwiceReferenceBf16Error) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(41);
  // (B, H, T, K = V, initial state, final-state gradient): T around the chunk, long sequences,
  // one head of 65,536 tokens. Few (batch, head) pairs: the reverse scan splits the value
  // columns over blocks of 32; the 256-pair case last takes them all in one block. (T = 1
  // without an initial state has dg = 0 exactly: no relative error to measure, so the T = 1
  // cases carry one.)
  const std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, bool, bool>> cases = {
      {2, 2, 1, 64, true, true},      {2, 2, 1, 128, true, false},
      {2, 2, 63, 64, false, true},    {1, 3, 63, 128, true, false},
      {1, 3, 64, 128, true, true},    {2, 2, 64, 64, false, false},
      {2, 2, 65, 64, true, true},     {1, 2, 65, 128, false, true},
      {1, 2, 1000, 128, true, true},  {2, 2, 1000, 64, false, false},
      {1, 2, 4096, 128, false, true}, {1, 2, 4096, 64, true, false},
      {1, 1, 65536, 64, true, true},  {1, 1, 65536, 128, false, false},
      {64, 4, 130, 128, true, true}};
  for (const auto& [b, h, t, d, with_state, with_final_grad] : cases) {
    const GdnInputs in = MakeInputs(b, h, t, d, d, with_state, -1.0);
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
    const at::Tensor d_o = at::randn({b, h, t, d}, f32).to(at::kBFloat16);
    const at::Tensor d_s = with_final_grad ? at::randn({b, h, d, d}, f32) : at::Tensor();
    ASSERT_TRUE(kernels::cuda::GatedDeltaChunkedSupported(in.q, in.k, in.v, in.g, in.beta, in.s0));
    PoisonAllocator(b * h * t * (4 * d + 2) * 4);
    const auto k = kernels::cuda::GatedDeltaChunkedBackward(in.q, in.k, in.v, in.g, in.beta, scale,
                                                            in.s0, d_o, d_s);
    const GdnGrads got{k.dq, k.dk, k.dv, k.dg, k.dbeta, k.d_initial_state};
    const GdnGrads ref = ReferenceGrads(in, /*bf16=*/false, scale, d_o, d_s);
    const GdnGrads ref_bf16 = ReferenceGrads(in, /*bf16=*/true, scale, d_o, d_s);
    std::ostringstream label;
    label << "B=" << b << " H=" << h << " T=" << t << " K=V=" << d << " state=" << with_state
          << " dS_T=" << with_final_grad;
    ExpectGradsWithinBf16ReferenceError(got, ref, ref_bf16, label.str());
  }
}

TEST(CudaGatedDeltaBackwardTest, MixedHeadDimsStrongGatesAndZeroTokens) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(42);
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  // K != V, and log decays down to -5 per token (e^(b_t - b_s) spans e^-320 inside a chunk):
  // exponentials of differences only, so nothing overflows and the result still matches fp64.
  for (const auto& [dk, dv] : std::vector<std::pair<int64_t, int64_t>>{{64, 128}, {128, 64}}) {
    const GdnInputs in = MakeInputs(1, 2, 300, dk, dv, true, -5.0);
    const double scale = 1.0 / std::sqrt(static_cast<double>(dk));
    const at::Tensor d_o = at::randn({1, 2, 300, dv}, f32).to(at::kBFloat16);
    const at::Tensor d_s = at::randn({1, 2, dk, dv}, f32);
    const auto r = kernels::cuda::GatedDeltaChunkedBackward(in.q, in.k, in.v, in.g, in.beta, scale,
                                                            in.s0, d_o, d_s);
    const GdnGrads got{r.dq, r.dk, r.dv, r.dg, r.dbeta, r.d_initial_state};
    const GdnGrads ref = ReferenceGrads(in, false, scale, d_o, d_s);
    const GdnGrads ref_bf16 = ReferenceGrads(in, true, scale, d_o, d_s);
    std::ostringstream label;
    label << "strong gates K=" << dk << " V=" << dv;
    ExpectGradsWithinBf16ReferenceError(got, ref, ref_bf16, label.str());
  }
  // T = 0: empty gradients, and the initial state's gradient is the final state's.
  const GdnInputs e = MakeInputs(2, 2, 0, 64, 64, true, -1.0);
  const at::Tensor d_s = at::randn({2, 2, 64, 64}, f32);
  const auto r = kernels::cuda::GatedDeltaChunkedBackward(e.q, e.k, e.v, e.g, e.beta, 1.0, e.s0,
                                                          at::Tensor(), d_s);
  EXPECT_EQ(r.dq.size(2), 0);
  EXPECT_EQ(r.dg.size(2), 0);
  EXPECT_TRUE(at::equal(r.d_initial_state, d_s));
}

// Head dims of 256 (K, V or both) run on the sequential kernels with autograd (the chunk-parallel
// ones take K = V in {64, 128} then, and K = V = 256 only in a forward without autograd): the forward and the backward's reverse scan keep the widest slice of
// value columns that fits shared memory (32 and 64 with K = 256), and the backward's per-chunk
// kernel walks the value columns in slices. T = 130 (a partial last chunk) and T = 1, with an
// initial state and a final-state gradient; two (batch, head) pairs (value columns split over
// blocks of 32) and, at T = 130, more pairs than multiprocessors (the widest slice per block).
// Output, final state and every gradient against the fp64 reference, within twice the bf16
// reference's error.
TEST(CudaGatedDeltaBackwardTest, HeadDims256WithinTwiceReferenceBf16Error) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(46);
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const int64_t many = at::cuda::getCurrentDeviceProperties()->multiProcessorCount / 4 + 1;
  const std::vector<std::pair<int64_t, int64_t>> dims = {
      {256, 256}, {256, 64}, {64, 256}, {128, 256}, {256, 128}};
  const std::vector<std::tuple<int64_t, int64_t, int64_t>> shapes = {
      {1, 2, 130}, {2, 1, 1}, {many, 4, 130}};
  for (const auto& [dk, dv] : dims) {
    for (const auto& [b, h, t] : shapes) {
      const GdnInputs in = MakeInputs(b, h, t, dk, dv, /*with_state=*/true, -1.0);
      const double scale = 1.0 / std::sqrt(static_cast<double>(dk));
      const at::Tensor d_o = at::randn({b, h, t, dv}, f32).to(at::kBFloat16);
      const at::Tensor d_s = at::randn({b, h, dk, dv}, f32);
      std::ostringstream label;
      label << "B=" << b << " H=" << h << " T=" << t << " K=" << dk << " V=" << dv;
      ASSERT_TRUE(kernels::cuda::GatedDeltaChunkedSupported(in.q, in.k, in.v, in.g, in.beta, in.s0))
          << label.str();
      EXPECT_FALSE(
          kernels::cuda::GatedDeltaChunkedFastSupported(in.q, in.k, in.v, in.g, in.beta, in.s0));
      // Forward.
      PoisonAllocator(b * h * (t * dv * 2 + dk * dv * 4));
      const auto got =
          kernels::cuda::GatedDeltaChunked(in.q, in.k, in.v, in.g, in.beta, scale, in.s0);
      ASSERT_EQ(got.output.scalar_type(), at::kBFloat16);
      ASSERT_EQ(got.final_state.scalar_type(), at::kFloat);
      auto d = [](const at::Tensor& x) { return x.to(at::kDouble); };
      const auto ref = kernels::GatedDeltaChunkedReference(d(in.q), d(in.k), d(in.v), d(in.g),
                                                           d(in.beta), scale, d(in.s0), 64);
      const auto ref_bf16 = kernels::GatedDeltaRecurrent(in.q, in.k, in.v, Bf(in.g), Bf(in.beta),
                                                         scale, Bf(in.s0));
      const double err_o = RelErr(got.output, ref.output);
      const double err_s = RelErr(got.final_state, ref.final_state);
      const double ref_o = RelErr(ref_bf16.output, ref.output);
      const double ref_s = RelErr(ref_bf16.final_state, ref.final_state);
      std::cout << "[gdn fwd] " << label.str() << " o " << err_o << " (bf16 ref " << ref_o
                << ") S_T " << err_s << " (bf16 ref " << ref_s << ")\n";
      EXPECT_TRUE(at::isfinite(got.output).all().item<bool>()) << label.str();
      EXPECT_TRUE(at::isfinite(got.final_state).all().item<bool>()) << label.str();
      EXPECT_LT(err_o, 1e-2) << label.str();
      EXPECT_LT(err_o, 2 * ref_o) << label.str();
      EXPECT_LT(err_s, 1e-2) << label.str();
      EXPECT_LT(err_s, 2 * ref_s) << label.str();
      // Backward.
      PoisonAllocator(b * h * t * (3 * dk + dv + 2) * 4);
      const auto k = kernels::cuda::GatedDeltaChunkedBackward(in.q, in.k, in.v, in.g, in.beta,
                                                              scale, in.s0, d_o, d_s);
      const GdnGrads grads{k.dq, k.dk, k.dv, k.dg, k.dbeta, k.d_initial_state};
      const GdnGrads gref = ReferenceGrads(in, /*bf16=*/false, scale, d_o, d_s);
      const GdnGrads gref_bf16 = ReferenceGrads(in, /*bf16=*/true, scale, d_o, d_s);
      ExpectGradsWithinBf16ReferenceError(grads, gref, gref_bf16, label.str());
    }
  }
  // The dispatch point runs these kernels for head dims of 256, under autograd too.
  const GdnInputs in = MakeInputs(1, 2, 130, 256, 256, true, -1.0);
  const double scale = 0.0625;
  const at::Tensor d_o = at::randn({1, 2, 130, 256}, f32).to(at::kBFloat16);
  const at::Tensor d_s = at::randn({1, 2, 256, 256}, f32);
  auto leaf = [](const at::Tensor& x) { return x.detach().clone().requires_grad_(true); };
  const at::Tensor g = leaf(in.g), beta = leaf(in.beta), s0 = leaf(in.s0);
  const auto r = kernels::GatedDeltaChunked(in.q, in.k, in.v, g, beta, scale, s0, 64);
  ASSERT_EQ(r.output.scalar_type(), at::kBFloat16) << "the CUDA path did not run";
  const auto plain =
      kernels::cuda::GatedDeltaChunked(in.q, in.k, in.v, in.g, in.beta, scale, in.s0);
  EXPECT_TRUE(at::equal(plain.output, r.output));
  EXPECT_TRUE(at::equal(plain.final_state, r.final_state));
  torch::autograd::backward({r.output, r.final_state}, {d_o, d_s});
  const auto want = kernels::cuda::GatedDeltaChunkedBackward(in.q, in.k, in.v, in.g, in.beta,
                                                             scale, in.s0, d_o, d_s);
  EXPECT_LT(RelErr(g.grad(), want.dg), 1e-6);
  EXPECT_LT(RelErr(beta.grad(), want.dbeta), 1e-6);
  EXPECT_LT(RelErr(s0.grad(), want.d_initial_state), 1e-6);
}

TEST(CudaGatedDeltaBackwardTest, AutogradThroughGatedDeltaChunked) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(43);
  const int64_t b = 2, h = 2, t = 300, d = 64;
  const GdnInputs in = MakeInputs(b, h, t, d, d, true, -1.0);
  const double scale = 0.125;
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const at::Tensor d_o = at::randn({b, h, t, d}, f32).to(at::kBFloat16);
  const at::Tensor d_s = at::randn({b, h, d, d}, f32);
  auto leaf = [](const at::Tensor& x) { return x.detach().clone().requires_grad_(true); };
  const at::Tensor q = leaf(in.q), k = leaf(in.k), v = leaf(in.v), g = leaf(in.g);
  const at::Tensor beta = leaf(in.beta), s0 = leaf(in.s0);
  const auto r = kernels::GatedDeltaChunked(q, k, v, g, beta, scale, s0, 64);
  ASSERT_EQ(r.output.scalar_type(), at::kBFloat16) << "the CUDA path did not run";
  ASSERT_EQ(r.final_state.scalar_type(), at::kFloat);
  // The dispatch runs the chunk-parallel kernels where they apply, else the sequential ones.
  const bool fast =
      kernels::cuda::GatedDeltaChunkedFastSupported(in.q, in.k, in.v, in.g, in.beta, in.s0);
  // The outputs equal the forward-only kernel's.
  {
    at::NoGradGuard no_grad;
    const auto plain =
        fast ? kernels::cuda::GatedDeltaChunkedFast(in.q, in.k, in.v, in.g, in.beta, scale, in.s0)
             : kernels::cuda::GatedDeltaChunked(in.q, in.k, in.v, in.g, in.beta, scale, in.s0);
    EXPECT_TRUE(at::equal(plain.output, r.output));
    EXPECT_TRUE(at::equal(plain.final_state, r.final_state));
    // Without gradients, kernels::GatedDeltaChunked runs the forward-only kernel.
    const auto dispatched =
        kernels::GatedDeltaChunked(in.q, in.k, in.v, in.g, in.beta, scale, in.s0, 64);
    EXPECT_TRUE(at::equal(plain.output, dispatched.output));
  }
  torch::autograd::backward({r.output, r.final_state}, {d_o, d_s});
  EXPECT_EQ(q.grad().scalar_type(), at::kBFloat16);
  EXPECT_EQ(g.grad().scalar_type(), at::kFloat);
  EXPECT_EQ(beta.grad().scalar_type(), at::kFloat);
  EXPECT_EQ(s0.grad().scalar_type(), at::kFloat);
  const auto want =
      fast ? kernels::cuda::GatedDeltaChunkedFastBackward(in.q, in.k, in.v, in.g, in.beta, scale,
                                                          in.s0, d_o, d_s)
           : kernels::cuda::GatedDeltaChunkedBackward(in.q, in.k, in.v, in.g, in.beta, scale, in.s0,
                                                      d_o, d_s);
  const GdnGrads ref = ReferenceGrads(in, false, scale, d_o, d_s);
  // q, k, v gradients are rounded to their bf16 dtype; the others are the kernel's fp32.
  const std::vector<std::tuple<const char*, at::Tensor, at::Tensor, at::Tensor, double>> parts = {
      {"dq", q.grad(), want.dq, ref.dq, 8e-3},
      {"dk", k.grad(), want.dk, ref.dk, 8e-3},
      {"dv", v.grad(), want.dv, ref.dv, 8e-3},
      {"dg", g.grad(), want.dg, ref.dg, 1e-6},
      {"dbeta", beta.grad(), want.dbeta, ref.dbeta, 1e-6},
      {"ds0", s0.grad(), want.d_initial_state, ref.ds0, 1e-6}};
  std::cout << "[gdn autograd]";
  for (const auto& [name, x, kernel, fp64, tol] : parts) {
    const double err_kernel = RelErr(x, kernel), err_ref = RelErr(x, fp64);
    std::cout << " " << name << " vs kernel " << err_kernel << " vs fp64 " << err_ref;
    EXPECT_LT(err_kernel, tol) << name;
    EXPECT_LT(err_ref, 1e-2) << name;
  }
  std::cout << "\n";

  // Only the output used, no initial state, only some inputs needing gradients (in bf16): the
  // rest stays undefined and the gradients come back in the inputs' dtype.
  const at::Tensor g2 = leaf(Bf(in.g)), beta2 = leaf(Bf(in.beta));
  const auto r2 = kernels::GatedDeltaChunked(in.q, in.k, in.v, g2, beta2, scale, {}, 64);
  ASSERT_EQ(r2.final_state.scalar_type(), at::kFloat) << "the CUDA path did not run";
  r2.output.to(at::kFloat).pow(2).sum().backward();
  ASSERT_TRUE(g2.grad().defined());
  ASSERT_TRUE(beta2.grad().defined());
  EXPECT_EQ(g2.grad().scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::isfinite(g2.grad()).all().item<bool>());
  EXPECT_TRUE(at::isfinite(beta2.grad()).all().item<bool>());
  EXPECT_GT(g2.grad().abs().sum().item<double>(), 0.0);
}

// A Gated DeltaNet mixer in bf16 on CUDA (bf16 q/k/v into the CUDA kernels, forward and
// backward) against the same weights in fp32 (fp32 projections and the ATen reference with
// autograd), beside the error the mixer's earlier bf16 path makes (bf16 projections, fp32
// recurrences: what the same bf16 mixer runs on the CPU).
TEST(CudaGatedDeltaMixerTest, Bf16MixerMatchesFp32Path) {
  HYB_REQUIRE_CUDA_KERNELS();
  for (const int64_t d : {64, 128}) {
    worker::AttentionShape shape;
    shape.hidden_size = 256;
    shape.num_heads = 4;
    shape.num_kv_heads = 4;
    shape.head_dim = d;
    worker::LinearMixerOptions options;
    options.type = worker::LinearMixerType::kGatedDeltaNet;
    options.chunk_size = 64;
    const auto m16 = worker::LinearMixer::Random(shape, options, false, false, 7, at::kBFloat16,
                                                 at::Device(at::kCUDA));
    // The same weights (bf16 values) in fp32 on the GPU, and in bf16 on the CPU.
    auto copy = [&](at::ScalarType type, const at::Device& device) {
      std::map<std::string, at::Tensor> named;
      for (const auto& [name, x] : m16->NamedTensors()) named[name] = x.to(device, type);
      auto m = worker::LinearMixer::FromTensors(
          shape, options,
          [&](const std::string& name, const std::vector<int64_t>&) -> StatusOr<at::Tensor> {
            return named.at(name);
          },
          [&](const std::string& name) { return named.count(name) > 0; });
      EXPECT_TRUE(m.ok());
      return *m;
    };
    const auto m32 = copy(at::kFloat, at::Device(at::kCUDA));
    const auto m16_cpu = copy(at::kBFloat16, at::Device(at::kCPU));
    torch::manual_seed(44);
    const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
    const at::Tensor x = at::randn({2, 300, shape.hidden_size}, f32).to(at::kBFloat16);
    const at::Tensor dy = at::randn({2, 300, shape.hidden_size}, f32);
    // Output and the gradients of sum(y * dy) for x and every weight.
    auto run = [&](const std::shared_ptr<worker::LinearMixer>& m, const at::Tensor& input) {
      // The mixer's own tensors (leaves) track gradients for this call.
      std::vector<at::Tensor> inputs = {input.detach().requires_grad_(true)};
      for (at::Tensor p : m->Parameters()) inputs.push_back(p.requires_grad_(true));
      const at::Tensor y = m->Forward(inputs[0], {}, nullptr);
      const auto grads = torch::autograd::grad({y}, inputs, {dy.to(y.device(), y.scalar_type())});
      for (size_t i = 1; i < inputs.size(); ++i) inputs[i].requires_grad_(false);
      std::vector<at::Tensor> flat = {y.to(at::kCPU, at::kDouble).flatten()};
      for (const at::Tensor& gr : grads) flat.push_back(gr.to(at::kCPU, at::kDouble).flatten());
      return flat;
    };
    const auto got = run(m16, x);
    const auto want = run(m32, x.to(at::kFloat));
    const auto old = run(m16_cpu, x.cpu());
    ASSERT_EQ(got.size(), want.size());
    std::vector<at::Tensor> got_w(got.begin() + 2, got.end()), want_w(want.begin() + 2, want.end());
    std::vector<at::Tensor> old_w(old.begin() + 2, old.end());
    const std::vector<std::tuple<const char*, at::Tensor, at::Tensor, at::Tensor>> parts = {
        {"output", got[0], want[0], old[0]},
        {"d_input", got[1], want[1], old[1]},
        {"d_weights", at::cat(got_w), at::cat(want_w), at::cat(old_w)}};
    std::cout << "[gdn mixer bf16] D=" << d;
    for (const auto& [name, a, ref, base] : parts) {
      const double err = RelErr(a, ref), err_base = RelErr(base, ref);
      std::cout << " " << name << " " << err << " (fp32-recurrence bf16 path " << err_base << ")";
      EXPECT_TRUE(at::isfinite(a).all().item<bool>()) << name;
      EXPECT_LT(err, 5e-2) << name << " D=" << d;
      EXPECT_LT(err, 2 * err_base) << name << " D=" << d;
    }
    std::cout << "\n";
  }
}

#else  // HYB_WITH_CUDA

// The kernels (kernels/cuda/) exist only in a -DHYB_CUDA=ON build.
TEST(CudaGatedDeltaBackwardTest, NeedsTheCudaBuild) { GTEST_SKIP() << "built without HYB_CUDA"; }

#endif  // HYB_WITH_CUDA

}  // namespace
}  // namespace hyb
