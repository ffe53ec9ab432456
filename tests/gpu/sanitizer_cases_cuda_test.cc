// Small cases for compute-sanitizer (suite CudaSanitizerCases, ctest label `gpu`): every CUDA
// kernel the product runs, called once or twice through the product's entry points on shapes
// picked to reach the kernels' edge paths (partial chunks and tiles, T = 1, empty packed
// sequences, GLA's parallel segments, split-KV splits without visible keys, grid-stride loops,
// unaligned rows, strided operands), forward and backward through autograd.
// scripts/gpu-sanitize runs this suite under `compute-sanitizer --tool memcheck` (and racecheck on
// request): that is what it is for. Each case still checks finite results against the fp64 CPU
// reference (kernels::*Reference) within a loose bound, so that a wrong or unwritten result fails
// it as well; precision has its own suites (the other tests/gpu/*_cuda_test.cc). Inputs are made
// and references run on the CPU, so that under the sanitizer the device runs little besides the
// product's kernels. The whole suite takes a few seconds without the sanitizer.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "hyb/kernels/attention.h"
#include "hyb/kernels/linear_attention.h"
#include "hyb/kernels/logits.h"
#include "hyb/kernels/norm.h"
#include "hyb/kernels/short_conv.h"

#ifdef HYB_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>

#include "attention_decode_launch.h"
#include "gated_delta_fast_launch.h"
#include "hyb/kernels/cuda_attention.h"
#include "hyb/kernels/cuda_conv.h"
#include "hyb/kernels/cuda_gated_delta.h"
#include "hyb/kernels/cuda_norm.h"
#include "hyb/kernels/cuda_ops.h"
#include "linear_attention_launch.h"
#include "rms_norm_launch.h"
#include "short_conv_launch.h"
#endif

namespace hyb {
namespace {

#ifdef HYB_WITH_CUDA

// The checks' bounds on ||got - want|| / ||want||: loose (precision is the other suites' job) but
// far below what a wrong, stale or unwritten result gives (about 1, or NaN).
constexpr double kOutputTol = 5e-2;
constexpr double kGradTol = 1e-1;

at::TensorOptions CpuF32() { return at::TensorOptions().dtype(at::kFloat); }

int NumSms() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

// x on the GPU (same dtype); undefined stays undefined.
at::Tensor Dev(const at::Tensor& x) { return x.defined() ? x.to(at::kCUDA) : x; }

// x on the CPU in fp64, what the references read; undefined stays undefined.
at::Tensor Ref(const at::Tensor& x) {
  return x.defined() ? x.detach().to(at::kCPU, at::kDouble) : x;
}

// Fills the caching allocator's free blocks (small and large pools) with NaN, so that an output
// element a kernel leaves unwritten shows as NaN instead of a stale value. (Under
// scripts/gpu-sanitize the caching is off: every tensor is its own allocation, which memcheck
// bounds exactly, and this only costs one allocation.)
void PoisonAllocator(int64_t bytes) {
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<at::Tensor> held;
  for (int i = 0; i < 16; ++i) held.push_back(at::full({int64_t{1} << 17}, nan, f32));
  held.push_back(at::full({bytes / 4 + 1024}, nan, f32));
}

// `got` (any device and dtype) is finite and ||got - want|| <= tol ||want|| + 1e-3 sqrt(numel);
// the second term for references that are exactly zero (a gate's gradient at T = 1 without a
// state).
void ExpectNear(const std::string& what, const at::Tensor& got, const at::Tensor& want,
                double tol) {
  ASSERT_TRUE(got.defined()) << what << ": undefined";
  ASSERT_TRUE(want.defined()) << what << ": no reference";
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const at::Tensor g = Ref(got), w = Ref(want);
  EXPECT_TRUE(at::isfinite(g).all().item<bool>()) << what << ": non-finite values";
  const double err = (g - w).norm().item<double>(), size = w.norm().item<double>();
  EXPECT_LE(err, tol * size + 1e-3 * std::sqrt(static_cast<double>(w.numel())))
      << what << ": |got - want| = " << err << ", |want| = " << size;
}

// A GPU leaf holding x's values; `strided`: a [B, H, T, D] view of a [B, T, H, D] leaf buffer (the
// mixers' layout), whose gradient is kept (retain_grad).
at::Tensor GpuLeaf(const at::Tensor& x, bool strided) {
  if (!x.defined()) return x;
  if (!strided) return x.to(at::kCUDA).requires_grad_(true);
  at::Tensor view =
      x.transpose(1, 2).contiguous().to(at::kCUDA).requires_grad_(true).transpose(1, 2);
  view.retain_grad();
  return view;
}

// ---------------------------------------------------------------------------------------------
// Linear attention: chunked GLA and Gated DeltaNet, fixed-length and packed.

// One batch on the CPU, as the mixers make it: keys L2-normalised; GLA gates logsigmoid(x) / 16;
// gated-delta decays in [-1, 0] and betas sigmoid(x), rounded to bf16 values kept in fp32.
struct LinearInputs {
  std::vector<int64_t> cu;  // packed offsets (B = 1), or empty
  at::Tensor q, k, v;       // [B, H, T, K | V] bf16
  at::Tensor g;             // GLA [B, H, T, K], gated delta [B, H, T]; fp32
  at::Tensor beta;          // gated delta: [B, H, T] fp32
  at::Tensor s0;            // [S, H, K, V] fp32 or undefined (S = B, or N sequences)
  at::Tensor d_o;           // [B, H, T, V] bf16: the output's gradient
  at::Tensor d_s;           // [S, H, K, V] fp32 or undefined: the final state's
};

LinearInputs MakeLinear(bool gla, int64_t b, int64_t h, int64_t t, int64_t dk, int64_t dv,
                        int64_t states, bool with_state, bool with_final_grad) {
  LinearInputs in;
  in.q = at::randn({b, h, t, dk}, CpuF32()).to(at::kBFloat16);
  const at::Tensor k = at::randn({b, h, t, dk}, CpuF32());
  in.k = (k / k.norm(2, -1, true)).to(at::kBFloat16);
  in.v = at::randn({b, h, t, dv}, CpuF32()).to(at::kBFloat16);
  if (gla) {
    in.g = at::log_sigmoid(at::randn({b, h, t, dk}, CpuF32())) / 16;
  } else {
    in.g = (-at::rand({b, h, t}, CpuF32())).to(at::kBFloat16).to(at::kFloat);
    in.beta = at::sigmoid(at::randn({b, h, t}, CpuF32())).to(at::kBFloat16).to(at::kFloat);
  }
  if (with_state) in.s0 = at::randn({states, h, dk, dv}, CpuF32());
  in.d_o = at::randn({b, h, t, dv}, CpuF32()).to(at::kBFloat16);
  if (with_final_grad) in.d_s = at::randn({states, h, dk, dv}, CpuF32());
  return in;
}

LinearInputs MakePacked(bool gla, const std::vector<int64_t>& lengths, int64_t h, int64_t dk,
                        int64_t dv, bool with_state, bool with_final_grad) {
  std::vector<int64_t> cu = {0};
  for (const int64_t len : lengths) cu.push_back(cu.back() + len);
  const auto n = static_cast<int64_t>(lengths.size());
  LinearInputs in = MakeLinear(gla, 1, h, cu.back(), dk, dv, n, with_state, with_final_grad);
  in.cu = cu;
  return in;
}

// Output, final state and gradients of sum(o * d_o) + sum(S_T * d_s).
struct LinearRun {
  at::Tensor o, s1;
  at::Tensor dq, dk, dv, dg;
  at::Tensor dbeta;  // gated delta only
  at::Tensor ds0;    // with an initial state only (the references: always)
};

// Runs `call(q, k, v, g, beta, s0)` (a product entry point) on GPU leaves of the inputs and
// back-propagates d_o (and d_s). `strided`: q, k, v (and GLA's g) as [B, H, T, D] views of
// [B, T, H, D] buffers.
template <typename Call>
LinearRun RunLinear(const LinearInputs& in, bool strided, Call call) {
  const at::Tensor q = GpuLeaf(in.q, strided), k = GpuLeaf(in.k, strided);
  const at::Tensor v = GpuLeaf(in.v, strided), g = GpuLeaf(in.g, strided && in.g.dim() == 4);
  const at::Tensor beta = GpuLeaf(in.beta, false), s0 = GpuLeaf(in.s0, false);
  const kernels::LinearAttentionOutput r = call(q, k, v, g, beta, s0);
  std::vector<at::Tensor> outs = {r.output}, grads = {Dev(in.d_o)};
  if (in.d_s.defined()) {
    outs.push_back(r.final_state);
    grads.push_back(Dev(in.d_s));
  }
  torch::autograd::backward(outs, grads);
  return {r.output.detach(),
          r.final_state.detach(),
          q.grad(),
          k.grad(),
          v.grad(),
          g.grad(),
          beta.defined() ? beta.grad() : at::Tensor(),
          s0.defined() ? s0.grad() : at::Tensor()};
}

// The fp64 chunked references (per sequence when packed): forward and backward.
LinearRun GlaReference(const LinearInputs& in, double scale) {
  const at::Tensor q = Ref(in.q), k = Ref(in.k), v = Ref(in.v), g = Ref(in.g), s0 = Ref(in.s0);
  const at::Tensor d_o = Ref(in.d_o), d_s = Ref(in.d_s);
  if (!in.cu.empty()) {
    const auto f = kernels::GlaChunkedVarlenReference(q, k, v, g, scale, s0, in.cu, 64);
    const auto d =
        kernels::GlaChunkedVarlenBackwardReference(q, k, v, g, scale, s0, d_o, d_s, in.cu, 64);
    return {f.output, f.final_state, d.dq, d.dk, d.dv, d.dg, at::Tensor(), d.d_initial_state};
  }
  const auto f = kernels::GlaChunkedReference(q, k, v, g, scale, s0, 64);
  const auto d = kernels::GlaChunkedBackwardReference(q, k, v, g, scale, s0, d_o, d_s, 64);
  return {f.output, f.final_state, d.dq, d.dk, d.dv, d.dg, at::Tensor(), d.d_initial_state};
}

LinearRun GatedDeltaReference(const LinearInputs& in, double scale) {
  const at::Tensor q = Ref(in.q), k = Ref(in.k), v = Ref(in.v), g = Ref(in.g);
  const at::Tensor beta = Ref(in.beta), s0 = Ref(in.s0), d_o = Ref(in.d_o), d_s = Ref(in.d_s);
  if (!in.cu.empty()) {
    const auto f =
        kernels::GatedDeltaChunkedVarlenReference(q, k, v, g, beta, scale, s0, in.cu, 64);
    const auto d = kernels::GatedDeltaChunkedVarlenBackwardReference(q, k, v, g, beta, scale, s0,
                                                                     d_o, d_s, in.cu, 64);
    return {f.output, f.final_state, d.dq, d.dk, d.dv, d.dg, d.dbeta, d.d_initial_state};
  }
  const auto f = kernels::GatedDeltaChunkedReference(q, k, v, g, beta, scale, s0, 64);
  const auto d =
      kernels::GatedDeltaChunkedBackwardReference(q, k, v, g, beta, scale, s0, d_o, d_s, 64);
  return {f.output, f.final_state, d.dq, d.dk, d.dv, d.dg, d.dbeta, d.d_initial_state};
}

void ExpectRun(const std::string& label, const LinearRun& got, const LinearRun& want) {
  ExpectNear(label + " o", got.o, want.o, kOutputTol);
  ExpectNear(label + " S_T", got.s1, want.s1, kOutputTol);
  ExpectNear(label + " dq", got.dq, want.dq, kGradTol);
  ExpectNear(label + " dk", got.dk, want.dk, kGradTol);
  ExpectNear(label + " dv", got.dv, want.dv, kGradTol);
  ExpectNear(label + " dg", got.dg, want.dg, kGradTol);
  if (want.dbeta.defined()) ExpectNear(label + " dbeta", got.dbeta, want.dbeta, kGradTol);
  if (got.ds0.defined()) ExpectNear(label + " ds0", got.ds0, want.ds0, kGradTol);
}

std::string Shape(int64_t b, int64_t h, int64_t t, int64_t dk, int64_t dv) {
  return "B=" + std::to_string(b) + " H=" + std::to_string(h) + " T=" + std::to_string(t) +
         " K=" + std::to_string(dk) + " V=" + std::to_string(dv);
}

// Chunked GLA, fixed length: kernels::GlaChunked takes cuda::GlaChunkedWithGrad under autograd
// and cuda::GlaChunked without (gla_chunked.cu, gla_chunked_bwd.cu).
TEST(CudaSanitizerCases, GlaChunkedFixedLength) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(101);
  const int sms = NumSms();
  const int64_t many = (sms + 3) / 4 + 1;  // batches of 4 heads: B * H > multiprocessors
  struct Case {
    int64_t b, h, t, dk, dv;
    bool with_state, with_final_grad, strided;
    const char* what;
  };
  const std::vector<Case> cases = {
      {1, 2, 1, 64, 64, true, true, false, "T = 1: one partial chunk"},
      {2, 1, 600, 64, 128, false, true, true,
       "several segments of 4 chunks, the last chunk 24 tokens; q, k, v, g strided"},
      {many, 4, 70, 128, 128, true, false, false, "B * H >= multiprocessors: one segment each"},
      {1, 2, 300, 256, 256, true, true, false, "head dims 256 (slices of 128), 2 segments"},
      {1, 1, 65, 128, 256, false, true, false, "K = 128, V = 256"}};
  // The multi-segment and single-segment paths are what the two middle cases are for.
  EXPECT_LT(kernels::cuda::GlaSegmentChunks(2, 600, sms), 10);
  EXPECT_EQ(kernels::cuda::GlaSegmentChunks(many * 4, 70, sms), 2);
  for (const Case& c : cases) {
    const LinearInputs in =
        MakeLinear(true, c.b, c.h, c.t, c.dk, c.dv, c.b, c.with_state, c.with_final_grad);
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.dk));
    const std::string label = Shape(c.b, c.h, c.t, c.dk, c.dv) + " (" + c.what + ")";
    PoisonAllocator(c.b * c.h * c.t * (c.dk + c.dv) * 16);
    const LinearRun got =
        RunLinear(in, c.strided, [&](auto q, auto k, auto v, auto g, auto, auto s0) {
          EXPECT_TRUE(kernels::cuda::GlaChunkedSupported(q, k, v, g, s0)) << label;
          return kernels::GlaChunked(q, k, v, g, scale, s0, 64);
        });
    const LinearRun want = GlaReference(in, scale);
    ExpectRun(label, got, want);
    // Inference: the forward without chunk states.
    at::NoGradGuard no_grad;
    const auto plain =
        kernels::GlaChunked(Dev(in.q), Dev(in.k), Dev(in.v), Dev(in.g), scale, Dev(in.s0), 64);
    ExpectNear(label + " o (no grad)", plain.output, want.o, kOutputTol);
    ExpectNear(label + " S_T (no grad)", plain.final_state, want.s1, kOutputTol);
  }
  // No tokens: the final state is the initial one.
  const LinearInputs e = MakeLinear(true, 2, 2, 0, 64, 64, 2, true, false);
  const auto r =
      kernels::cuda::GlaChunked(Dev(e.q), Dev(e.k), Dev(e.v), Dev(e.g), 0.125, Dev(e.s0));
  EXPECT_EQ(r.output.size(2), 0);
  EXPECT_TRUE(at::equal(r.final_state.cpu(), e.s0));
}

// Chunked GLA over packed sequences (cu_seqlens): kernels::GlaChunkedVarlen takes
// cuda::GlaChunkedVarlenWithGrad / cuda::GlaChunkedVarlen; empty and one-token sequences, and a
// long sequence among short ones cut into segments.
TEST(CudaSanitizerCases, GlaChunkedPackedSequences) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(102);
  const int sms = NumSms();
  struct Case {
    std::vector<int64_t> lengths;
    int64_t h, dk, dv;
    bool with_state, with_final_grad;
  };
  const std::vector<Case> cases = {{{300, 0, 1, 70, 64}, 2, 64, 64, true, true},
                                   {{0, 300, 5}, 1, 256, 256, false, true}};
  for (const Case& c : cases) {
    const LinearInputs in =
        MakePacked(true, c.lengths, c.h, c.dk, c.dv, c.with_state, c.with_final_grad);
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.dk));
    const std::vector<int64_t> cu_chunks = kernels::cuda::VarlenChunks(in.cu);
    int64_t longest = 0;
    for (size_t i = 0; i + 1 < cu_chunks.size(); ++i) {
      longest = std::max(longest, cu_chunks[i + 1] - cu_chunks[i]);
    }
    const int seg = kernels::cuda::GlaVarlenSegmentChunks(c.h, cu_chunks, sms);
    std::string label = "packed H=" + std::to_string(c.h) + " K=" + std::to_string(c.dk) +
                        " V=" + std::to_string(c.dv) + " lengths";
    for (const int64_t len : c.lengths) label += " " + std::to_string(len);
    label += " (" + std::to_string(seg) + " chunks per segment)";
    EXPECT_LT(seg, longest) << label << ": the longest sequence should take several segments";
    PoisonAllocator(in.cu.back() * c.h * (c.dk + c.dv) * 16);
    const LinearRun got = RunLinear(in, false, [&](auto q, auto k, auto v, auto g, auto, auto s0) {
      EXPECT_TRUE(kernels::cuda::GlaChunkedVarlenSupported(q, k, v, g, s0,
                                                           static_cast<int64_t>(c.lengths.size())))
          << label;
      return kernels::GlaChunkedVarlen(q, k, v, g, scale, s0, in.cu, 64);
    });
    const LinearRun want = GlaReference(in, scale);
    ExpectRun(label, got, want);
    at::NoGradGuard no_grad;
    const auto plain = kernels::GlaChunkedVarlen(Dev(in.q), Dev(in.k), Dev(in.v), Dev(in.g), scale,
                                                 Dev(in.s0), in.cu, 64);
    ExpectNear(label + " o (no grad)", plain.output, want.o, kOutputTol);
    ExpectNear(label + " S_T (no grad)", plain.final_state, want.s1, kOutputTol);
  }
}

// The sequential Gated DeltaNet kernels (gated_delta_chunked.cu, gated_delta_chunked_bwd.cu,
// cuda::GatedDeltaChunked*), fixed length: the product runs them for K != V (the chunk-parallel
// kernels take K = V); the K = V case calls them directly. Value columns split over blocks
// (B * H < multiprocessors) and one block per pair.
TEST(CudaSanitizerCases, GatedDeltaSequentialFixedLength) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(201);
  const int sms = NumSms();
  const int64_t many = (sms + 3) / 4 + 1;
  struct Case {
    int64_t b, h, t, dk, dv;
    bool with_state, with_final_grad, direct;
    const char* what;
  };
  const std::vector<Case> cases = {
      {1, 2, 65, 64, 128, true, true, false, "K != V through the product, columns split"},
      {many, 4, 1, 128, 64, false, true, false, "T = 1, B * H >= multiprocessors"},
      {2, 2, 130, 64, 64, true, false, true, "K = V called directly"}};
  EXPECT_GT(kernels::cuda::GatedDeltaColumnSlices(2, 128, sms), 1);
  EXPECT_EQ(kernels::cuda::GatedDeltaColumnSlices(many * 4, 64, sms), 1);
  for (const Case& c : cases) {
    const LinearInputs in =
        MakeLinear(false, c.b, c.h, c.t, c.dk, c.dv, c.b, c.with_state, c.with_final_grad);
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.dk));
    const std::string label = Shape(c.b, c.h, c.t, c.dk, c.dv) + " (" + c.what + ")";
    PoisonAllocator(c.b * c.h * c.t * (c.dk + c.dv) * 16);
    const LinearRun got =
        RunLinear(in, false, [&](auto q, auto k, auto v, auto g, auto beta, auto s0) {
          EXPECT_TRUE(kernels::cuda::GatedDeltaChunkedSupported(q, k, v, g, beta, s0)) << label;
          if (c.direct) {
            return kernels::cuda::GatedDeltaChunkedWithGrad(q, k, v, g, beta, scale, s0);
          }
          EXPECT_FALSE(kernels::cuda::GatedDeltaChunkedFastSupported(q, k, v, g, beta, s0))
              << label;
          return kernels::GatedDeltaChunked(q, k, v, g, beta, scale, s0, 64);
        });
    const LinearRun want = GatedDeltaReference(in, scale);
    ExpectRun(label, got, want);
    const auto plain = kernels::cuda::GatedDeltaChunked(Dev(in.q), Dev(in.k), Dev(in.v), Dev(in.g),
                                                        Dev(in.beta), scale, Dev(in.s0));
    ExpectNear(label + " o (no grad)", plain.output, want.o, kOutputTol);
    ExpectNear(label + " S_T (no grad)", plain.final_state, want.s1, kOutputTol);
  }
  const LinearInputs e = MakeLinear(false, 2, 2, 0, 64, 128, 2, true, false);
  const auto r = kernels::cuda::GatedDeltaChunked(Dev(e.q), Dev(e.k), Dev(e.v), Dev(e.g),
                                                  Dev(e.beta), 0.125, Dev(e.s0));
  EXPECT_EQ(r.output.size(2), 0);
  EXPECT_TRUE(at::equal(r.final_state.cpu(), e.s0));
}

// Gated DeltaNet over packed sequences: kernels::GatedDeltaChunkedVarlen (whichever kernels the
// product picks) and the sequential kernels' packed form called directly
// (cuda::GatedDeltaChunkedVarlenWithGrad / cuda::GatedDeltaChunkedVarlen).
TEST(CudaSanitizerCases, GatedDeltaPackedSequences) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(202);
  struct Case {
    std::vector<int64_t> lengths;
    int64_t h, dk, dv;
    bool with_state, with_final_grad;
  };
  const std::vector<Case> cases = {{{130, 0, 1, 63}, 2, 64, 64, true, true},
                                   {{0, 65}, 1, 128, 64, false, true}};
  for (const Case& c : cases) {
    const LinearInputs in =
        MakePacked(false, c.lengths, c.h, c.dk, c.dv, c.with_state, c.with_final_grad);
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.dk));
    const auto n = static_cast<int64_t>(c.lengths.size());
    std::string label = "packed H=" + std::to_string(c.h) + " K=" + std::to_string(c.dk) +
                        " V=" + std::to_string(c.dv) + " lengths";
    for (const int64_t len : c.lengths) label += " " + std::to_string(len);
    const LinearRun want = GatedDeltaReference(in, scale);
    PoisonAllocator(in.cu.back() * c.h * (c.dk + c.dv) * 16);
    const LinearRun product =
        RunLinear(in, false, [&](auto q, auto k, auto v, auto g, auto beta, auto s0) {
          return kernels::GatedDeltaChunkedVarlen(q, k, v, g, beta, scale, s0, in.cu, 64);
        });
    ExpectRun(label + " product", product, want);
    const LinearRun sequential =
        RunLinear(in, false, [&](auto q, auto k, auto v, auto g, auto beta, auto s0) {
          EXPECT_TRUE(kernels::cuda::GatedDeltaChunkedVarlenSupported(q, k, v, g, beta, s0, n))
              << label;
          return kernels::cuda::GatedDeltaChunkedVarlenWithGrad(q, k, v, g, beta, scale, s0, in.cu);
        });
    ExpectRun(label + " sequential", sequential, want);
    at::NoGradGuard no_grad;
    const auto plain = kernels::cuda::GatedDeltaChunkedVarlen(
        Dev(in.q), Dev(in.k), Dev(in.v), Dev(in.g), Dev(in.beta), scale, Dev(in.s0), in.cu);
    ExpectNear(label + " o (no grad)", plain.output, want.o, kOutputTol);
    ExpectNear(label + " S_T (no grad)", plain.final_state, want.s1, kOutputTol);
  }
}

// The chunk-parallel Gated DeltaNet kernels (gated_delta_fast*.cu, cuda::GatedDeltaChunkedFast*),
// which kernels::GatedDeltaChunked runs for K = V: all three widths of the recurrences' column
// slices (16, 32, 64, chosen from B * H and the multiprocessors), T = 1, partial last chunks.
TEST(CudaSanitizerCases, GatedDeltaChunkParallel) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(203);
  const int sms = NumSms();
  struct Case {
    int64_t b, h, t, d;
    bool with_state, with_final_grad;
  };
  const std::vector<Case> cases = {{4, 4, 1, 64, true, true},
                                   {1, 3, 130, 128, false, true},
                                   {(sms + 3) / 4, 1, 65, 128, true, false},
                                   {sms, 1, 64, 64, true, true}};
  std::set<int> slices, forward_slices;
  for (const Case& c : cases) {
    const LinearInputs in =
        MakeLinear(false, c.b, c.h, c.t, c.d, c.d, c.b, c.with_state, c.with_final_grad);
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
    const int slice =
        kernels::cuda::GatedDeltaFastSliceColumns(c.b * c.h, static_cast<int>(c.d), sms);
    const int forward_slice =
        kernels::cuda::GatedDeltaFastForwardSliceColumns(c.b * c.h, static_cast<int>(c.d), sms);
    slices.insert(slice);
    forward_slices.insert(forward_slice);
    const std::string label = Shape(c.b, c.h, c.t, c.d, c.d) + " (" +
                              std::to_string(forward_slice) + "-column slices forward, " +
                              std::to_string(slice) + " backward)";
    PoisonAllocator(c.b * c.h * (c.t + 64) * c.d * 24);
    const LinearRun got =
        RunLinear(in, false, [&](auto q, auto k, auto v, auto g, auto beta, auto s0) {
          EXPECT_TRUE(kernels::cuda::GatedDeltaChunkedFastSupported(q, k, v, g, beta, s0)) << label;
          return kernels::GatedDeltaChunked(q, k, v, g, beta, scale, s0, 64);
        });
    const LinearRun want = GatedDeltaReference(in, scale);
    ExpectRun(label, got, want);
    at::NoGradGuard no_grad;
    const auto plain = kernels::GatedDeltaChunked(Dev(in.q), Dev(in.k), Dev(in.v), Dev(in.g),
                                                  Dev(in.beta), scale, Dev(in.s0), 64);
    ExpectNear(label + " o (no grad)", plain.output, want.o, kOutputTol);
    ExpectNear(label + " S_T (no grad)", plain.final_state, want.s1, kOutputTol);
  }
  EXPECT_EQ(slices, (std::set<int>{16, 32, 64})) << "the cases should take every slice width";
  EXPECT_EQ(forward_slices, (std::set<int>{16, 32, 64}))
      << "the cases should take every slice width in the forward too";
}

// The chunk-parallel forward at K = V = 256 (no autograd: its backward stops at 128): every
// recurrence slice width (16 columns on 4 warps, 32 and 64 on 8), the output kernel's four value
// slices, a partial last chunk and T = 1.
TEST(CudaSanitizerCases, GatedDeltaChunkParallelHeadDim256) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(204);
  const int sms = NumSms();
  struct Case {
    int64_t b, h, t;
    bool with_state;
  };
  const std::vector<Case> cases = {
      {2, 1, 130, true}, {(sms + 7) / 8, 1, 65, false}, {sms, 1, 65, false}, {3, 1, 1, true}};
  std::set<int> forward_slices;
  at::NoGradGuard no_grad;
  for (const Case& c : cases) {
    const LinearInputs in = MakeLinear(false, c.b, c.h, c.t, 256, 256, c.b, c.with_state, false);
    const int forward_slice = kernels::cuda::GatedDeltaFastForwardSliceColumns(c.b * c.h, 256, sms);
    forward_slices.insert(forward_slice);
    const std::string label = Shape(c.b, c.h, c.t, 256, 256) + " (" +
                              std::to_string(forward_slice) + "-column slices)";
    EXPECT_TRUE(kernels::cuda::GatedDeltaChunkedFastSupported(
        Dev(in.q), Dev(in.k), Dev(in.v), Dev(in.g), Dev(in.beta), Dev(in.s0), true))
        << label;
    PoisonAllocator(c.b * c.h * (c.t + 64) * 256 * 24);
    const auto got = kernels::GatedDeltaChunked(Dev(in.q), Dev(in.k), Dev(in.v), Dev(in.g),
                                                Dev(in.beta), 1.0 / 16.0, Dev(in.s0), 64);
    const auto want = kernels::GatedDeltaChunkedReference(
        Ref(in.q), Ref(in.k), Ref(in.v), Ref(in.g), Ref(in.beta), 1.0 / 16.0, Ref(in.s0), 64);
    ExpectNear(label + " o", got.output, want.output, kOutputTol);
    ExpectNear(label + " S_T", got.final_state, want.final_state, kOutputTol);
  }
  EXPECT_EQ(forward_slices, (std::set<int>{16, 32, 64}))
      << "the cases should take every slice width";
}

// Single-token decoding steps (linear_attention_step.cu) through kernels::GlaStep and
// kernels::GatedDeltaStep: key dims not a multiple of the row groups, value dims not a multiple
// of a block's 32 columns, K = 256, fp32 and bf16.
TEST(CudaSanitizerCases, LinearAttentionDecodeSteps) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(204);
  struct Case {
    at::ScalarType type;
    int64_t b, h, dk, dv;
  };
  const std::vector<Case> cases = {
      {at::kFloat, 2, 3, 40, 36}, {at::kBFloat16, 1, 2, 256, 128}, {at::kFloat, 4, 1, 128, 4}};
  for (const Case& c : cases) {
    for (const bool delta : {false, true}) {
      const at::Tensor q = at::randn({c.b, c.h, c.dk}, CpuF32()).to(c.type);
      const at::Tensor k0 = at::randn({c.b, c.h, c.dk}, CpuF32());
      const at::Tensor k = (k0 / k0.norm(2, -1, true)).to(c.type);
      const at::Tensor v = at::randn({c.b, c.h, c.dv}, CpuF32()).to(c.type);
      const at::Tensor g =
          delta ? (-at::rand({c.b, c.h}, CpuF32())).to(c.type)
                : (at::log_sigmoid(at::randn({c.b, c.h, c.dk}, CpuF32())) / 16).to(c.type);
      const at::Tensor beta = at::sigmoid(at::randn({c.b, c.h}, CpuF32())).to(c.type);
      const at::Tensor s = at::randn({c.b, c.h, c.dk, c.dv}, CpuF32());
      const std::string label = std::string(delta ? "GatedDeltaStep " : "GlaStep ") +
                                c10::toString(c.type) + " B=" + std::to_string(c.b) +
                                " H=" + std::to_string(c.h) + " K=" + std::to_string(c.dk) +
                                " V=" + std::to_string(c.dv);
      const at::Tensor qd = Dev(q), kd = Dev(k), vd = Dev(v), sd = Dev(s);
      EXPECT_TRUE(kernels::cuda::LinearStepSupported(qd, kd, vd, sd)) << label;
      PoisonAllocator(c.b * c.h * c.dk * c.dv * 8);
      const auto got = delta ? kernels::GatedDeltaStep(qd, kd, vd, Dev(g), Dev(beta), 0.3, sd)
                             : kernels::GlaStep(qd, kd, vd, Dev(g), 0.3, sd);
      const auto want =
          delta ? kernels::GatedDeltaStepReference(Ref(q), Ref(k), Ref(v), Ref(g), Ref(beta), 0.3,
                                                   Ref(s))
                : kernels::GlaStepReference(Ref(q), Ref(k), Ref(v), Ref(g), 0.3, Ref(s));
      ExpectNear(label + " o", got.output, want.output, kOutputTol);
      ExpectNear(label + " state", got.final_state, want.final_state, kOutputTol);
      EXPECT_TRUE(at::equal(sd.cpu(), s)) << label << ": the input state was modified";
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Softmax attention decoding: the split-KV kernel (attention_decode.cu) through
// kernels::SoftmaxAttention with one query.

void CheckAttention(const std::string& label, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, const kernels::AttentionOptions& options) {
  EXPECT_TRUE(kernels::cuda::AttentionDecodeSupported(q, k, v)) << label;
  PoisonAllocator(q.numel() * 4 * 1024);
  const at::Tensor got = kernels::SoftmaxAttention(q, k, v, options);
  kernels::AttentionOptions ref = options;
  ref.force_math = true;
  if (options.key_end.defined()) ref.key_end = options.key_end.cpu();
  ExpectNear(label, got, kernels::SoftmaxAttention(Ref(q), Ref(k), Ref(v), ref), kOutputTol);
}

TEST(CudaSanitizerCases, AttentionDecodeSplitKv) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(301);
  const int sms = NumSms();
  const int64_t many_b = 4 * sms / 16 + 1;  // B * Hkv (16) rows past 4 blocks per multiprocessor
  struct Case {
    at::ScalarType type;
    int64_t b, h, hkv, d, tk, window, splits;
    const char* what;
  };
  const std::vector<Case> cases = {
      {at::kBFloat16, 1, 4, 1, 64, 300, 0, 3, "splits of 128 keys, the last 44"},
      {at::kHalf, 2, 20, 2, 128, 1, 0, 1, "one key; groups of 10 heads in 2 blocks of 5"},
      {at::kFloat, 1, 3, 1, 256, 700, 37, 6, "window 37: only the last split sees keys"},
      {at::kBFloat16, 1, 2, 1, 16, 129, 0, 2, "a last split of one key"},
      {at::kBFloat16, 2, 4, 2, 32, 64, 0, 1, "fewer keys than the smallest split"},
      {at::kBFloat16, many_b, 16, 16, 16, 200, 0, 1, "many rows: one split each"}};
  for (const Case& c : cases) {
    const at::Tensor q = at::randn({c.b, c.h, 1, c.d}, CpuF32()).to(c.type);
    const at::Tensor k = at::randn({c.b, c.hkv, c.tk, c.d}, CpuF32()).to(c.type);
    const at::Tensor v = at::randn({c.b, c.hkv, c.tk, c.d}, CpuF32()).to(c.type);
    const auto plan = kernels::cuda::PlanAttentionDecode(c.b, c.hkv, c.h / c.hkv, c.tk, sms);
    const std::string label = std::string(c10::toString(c.type)) + " B=" + std::to_string(c.b) +
                              " H=" + std::to_string(c.h) + " Hkv=" + std::to_string(c.hkv) +
                              " D=" + std::to_string(c.d) + " Tk=" + std::to_string(c.tk) +
                              " window=" + std::to_string(c.window) + " (" + c.what + ")";
    EXPECT_EQ(plan.num_splits, c.splits) << label;
    kernels::AttentionOptions options;
    options.q_offset = c.tk - 1;
    options.sliding_window = c.window;
    options.scale = 1.0 / std::sqrt(static_cast<double>(c.d));
    CheckAttention(label, Dev(q), Dev(k), Dev(v), options);
  }
  // A key buffer (capacity 260 of a 400-slot allocation: strided) read up to a position on the
  // device, as a captured decoding graph does; D = 8 (one thread per key).
  const at::Tensor q = Dev(at::randn({3, 2, 1, 8}, CpuF32()).to(at::kBFloat16));
  const at::Tensor kbuf = Dev(at::randn({3, 2, 400, 8}, CpuF32()).to(at::kBFloat16));
  const at::Tensor vbuf = Dev(at::randn({3, 2, 400, 8}, CpuF32()).to(at::kBFloat16));
  const at::Tensor k = kbuf.narrow(2, 0, 260), v = vbuf.narrow(2, 0, 260);
  auto position = [](int64_t p) {
    return at::full({1}, p, at::TensorOptions().dtype(at::kLong).device(at::kCUDA));
  };
  const double scale = 1.0 / std::sqrt(8.0);
  for (const auto& [end, window] :
       std::vector<std::pair<int64_t, int64_t>>{{100, 0}, {100, 37}, {259, 0}}) {
    kernels::AttentionOptions options;
    options.key_end = position(end);
    options.sliding_window = window;
    options.scale = scale;
    CheckAttention("key_end=" + std::to_string(end) + " window=" + std::to_string(window) +
                       " D=8 strided buffer",
                   q, k, v, options);
  }
  // No visible key: zeros. A position past the buffer is cut to its last slot.
  const at::Tensor none = kernels::cuda::AttentionDecodeAt(q, k, v, position(-1), 0, scale);
  EXPECT_TRUE(at::isfinite(none).all().item<bool>());
  EXPECT_EQ(none.abs().max().item<double>(), 0.0);
  kernels::AttentionOptions last;
  last.key_end = at::full({1}, int64_t{259}, at::TensorOptions().dtype(at::kLong));
  last.scale = scale;
  last.force_math = true;
  ExpectNear("key_end past the buffer",
             kernels::cuda::AttentionDecodeAt(q, k, v, position(1000), 0, scale),
             kernels::SoftmaxAttention(Ref(q), Ref(k), Ref(v), last), kOutputTol);
}

// ---------------------------------------------------------------------------------------------
// RMSNorm: the one-block-per-row forward (rms_norm.cu) and the vectorised forward and backward
// with an optional silu gate (rms_norm_gated.cu).

constexpr double kEps = 1e-6;

// kernels::RmsNorm without a gradient: rms_norm.cu, rows shorter than a warp and longer than a
// 1024-thread block, odd lengths.
TEST(CudaSanitizerCases, RmsNormForwardAnyRowLength) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(401);
  const std::vector<std::pair<at::ScalarType, std::vector<int64_t>>> cases = {
      {at::kBFloat16, {3, 5, 2051}}, {at::kFloat, {1, 7}}, {at::kHalf, {4, 1000}}};
  for (const auto& [type, shape] : cases) {
    const at::Tensor x = at::randn(shape, CpuF32()).to(type);
    const at::Tensor w = (1 + 0.1 * at::randn({shape.back()}, CpuF32())).to(type);
    const std::string label =
        std::string("RmsNorm ") + c10::toString(type) + " " + c10::str(at::IntArrayRef(shape));
    const at::Tensor xd = Dev(x), wd = Dev(w);
    EXPECT_TRUE(kernels::cuda::RmsNormSupported(xd, wd)) << label;
    PoisonAllocator(x.numel() * 8);
    ExpectNear(label, kernels::RmsNorm(xd, wd, kEps),
               kernels::RmsNormReference(Ref(x), Ref(w), kEps), kOutputTol);
  }
}

struct NormRun {
  at::Tensor y, dx, dw, dgate;
};

// y = RmsNorm(x, w) or RmsNormGated(x, w, gate) through the product on the GPU (`strided`: x a
// [B, T, H, D] view of a [B, H, T, D] buffer, as the mixers pass it), with the gradients of
// sum(y * dy); or (reference) through the fp64 references on the CPU.
NormRun RunNorm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& gate,
                const at::Tensor& dy, bool strided, bool reference) {
  at::Tensor xl, wl, gl;
  if (reference) {
    xl = Ref(x).requires_grad_(true);
    wl = Ref(w).requires_grad_(true);
    if (gate.defined()) gl = Ref(gate).requires_grad_(true);
  } else {
    xl = GpuLeaf(x, strided);
    wl = GpuLeaf(w, false);
    gl = GpuLeaf(gate, false);
  }
  at::Tensor y;
  if (reference) {
    y = gate.defined() ? kernels::RmsNormGatedReference(xl, wl, gl, kEps)
                       : kernels::RmsNormReference(xl, wl, kEps);
  } else {
    y = gate.defined() ? kernels::RmsNormGated(xl, wl, gl, kEps) : kernels::RmsNorm(xl, wl, kEps);
  }
  y.backward(reference ? Ref(dy) : Dev(dy));
  return {y.detach(), xl.grad(), wl.grad(), gate.defined() ? gl.grad() : at::Tensor()};
}

void CheckNorm(const std::string& label, const at::Tensor& x, const at::Tensor& w,
               const at::Tensor& gate, bool strided) {
  const at::Tensor dy = at::randn(x.sizes(), CpuF32()).to(x.scalar_type());
  {
    const at::Tensor xd = Dev(x), wd = Dev(w), gd = Dev(gate);
    EXPECT_TRUE(kernels::cuda::RmsNormGatedSupported(xd, wd, gd)) << label;
  }
  PoisonAllocator(x.numel() * 16);
  const NormRun got = RunNorm(x, w, gate, dy, strided, /*reference=*/false);
  const NormRun want = RunNorm(x, w, gate, dy, strided, /*reference=*/true);
  ExpectNear(label + " y", got.y, want.y, kOutputTol);
  ExpectNear(label + " dx", got.dx, want.dx, kGradTol);
  ExpectNear(label + " dw", got.dw, want.dw, kGradTol);
  if (gate.defined()) {
    ExpectNear(label + " dgate", got.dgate, want.dgate, kGradTol);
    at::NoGradGuard no_grad;
    ExpectNear(label + " y (no grad)", kernels::RmsNormGated(Dev(x), Dev(w), Dev(gate), kEps),
               want.y, kOutputTol);
  }
}

// The vectorised kernels: rows shared by a warp's lanes (one lane per row at D = 8), rows over a
// whole block (D = 4096, 8192: the longest taken), a row count not a multiple of a block's,
// strided x, a gate of another shape.
TEST(CudaSanitizerCases, RmsNormVectorisedForwardBackward) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(402);
  struct Case {
    at::ScalarType type;
    std::vector<int64_t> shape;  // of x
    bool gated, strided;         // strided: x [B, T, H, D] a view of [B, H, T, D]
  };
  const std::vector<Case> cases = {
      {at::kBFloat16, {2, 33, 64}, false, false}, {at::kFloat, {5, 4096}, false, false},
      {at::kHalf, {2, 9, 3, 64}, false, true},    {at::kBFloat16, {2, 7, 3, 128}, true, true},
      {at::kHalf, {3, 8}, true, false},           {at::kFloat, {2, 8192}, true, false}};
  for (const Case& c : cases) {
    const at::Tensor x = at::randn(c.shape, CpuF32()).to(c.type);
    const at::Tensor w = (1 + 0.1 * at::randn({c.shape.back()}, CpuF32())).to(c.type);
    at::Tensor gate;
    if (c.gated) {
      // The mixers' gate: the [..., H * D] projection, reshaped by the kernels.
      std::vector<int64_t> gshape(c.shape.begin(), c.shape.end() - 1);
      if (c.shape.size() == 4) {
        gshape.back() *= c.shape.back();
      } else {
        gshape.push_back(c.shape.back());
      }
      gate = at::randn(gshape, CpuF32()).to(c.type);
    }
    const std::string label = std::string(c.gated ? "RmsNormGated " : "RmsNorm (grad) ") +
                              c10::toString(c.type) + " " + c10::str(at::IntArrayRef(c.shape)) +
                              (c.strided ? " strided" : "");
    CheckNorm(label, x, w, gate, c.strided);
  }
}

// More rows than one wave of blocks holds: the vectorised kernels' blocks stride over the rows
// (forward and backward), and the backward sums one weight-gradient row per block.
TEST(CudaSanitizerCases, RmsNormManyRows) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(403);
  const int sms = NumSms();
  constexpr int64_t kCols = 64;
  kernels::cuda::RmsNormTile tile;
  ASSERT_TRUE(kernels::cuda::PlanRmsNormTile(kCols, 2, &tile));
  const int64_t wave_rows =
      kernels::cuda::RmsNormGridBlocks(tile, int64_t{1} << 40, sms,
                                       kernels::cuda::kRmsNormForwardThreadsPerSm) *
      tile.rows_per_block;
  const int64_t rows = wave_rows + 37;
  for (const int threads_per_sm :
       {kernels::cuda::kRmsNormForwardThreadsPerSm, kernels::cuda::kRmsNormBackwardThreadsPerSm}) {
    EXPECT_LT(
        kernels::cuda::RmsNormGridBlocks(tile, rows, sms, threads_per_sm) * tile.rows_per_block,
        rows);
  }
  const at::Tensor x = at::randn({rows, kCols}, CpuF32()).to(at::kBFloat16);
  const at::Tensor w = (1 + 0.1 * at::randn({kCols}, CpuF32())).to(at::kBFloat16);
  const at::Tensor gate = at::randn({rows, kCols}, CpuF32()).to(at::kBFloat16);
  CheckNorm("RmsNormGated bf16 [" + std::to_string(rows) + ", 64]", x, w, gate, false);
}

// ---------------------------------------------------------------------------------------------
// The fused short convolution (short_conv.cu) through kernels::ShortConv.

struct ConvRun {
  at::Tensor y, du, dw;
};

// y = ShortConv(u, w, cache = nullptr) with the gradients of sum(y * dy): on the GPU through the
// product (`proj_offset` >= 0: u is the column slice at that offset of a wider [B, T, N]
// projection leaf, read in place), or through the fp64 reference on the CPU.
ConvRun RunConv(const at::Tensor& u, const at::Tensor& w, const at::Tensor& dy, bool silu,
                int64_t proj_offset, bool reference) {
  if (reference) {
    const at::Tensor ul = Ref(u).requires_grad_(true), wl = Ref(w).requires_grad_(true);
    const at::Tensor y = kernels::ShortConvReference(ul, wl, nullptr, silu);
    y.backward(Ref(dy));
    return {y.detach(), ul.grad(), wl.grad()};
  }
  at::Tensor leaf, ul;
  if (proj_offset >= 0) {
    const int64_t c = u.size(2);
    at::Tensor proj = at::zeros({u.size(0), u.size(1), c + proj_offset + 8}, u.options());
    proj.narrow(2, proj_offset, c).copy_(u);
    leaf = proj.to(at::kCUDA).requires_grad_(true);
    ul = leaf.narrow(2, proj_offset, c);
  } else {
    leaf = ul = GpuLeaf(u, false);
  }
  const at::Tensor wl = GpuLeaf(w, false);
  EXPECT_TRUE(kernels::cuda::ShortConvSupported(ul, wl, at::Tensor()));
  const at::Tensor y = kernels::ShortConv(ul, wl, nullptr, silu);
  y.backward(Dev(dy));
  at::Tensor du = leaf.grad();
  if (proj_offset >= 0) {
    // Nothing flows outside the slice.
    EXPECT_EQ(du.narrow(2, 0, proj_offset).abs().max().item<double>(), 0.0);
    du = du.narrow(2, proj_offset, u.size(2));
  }
  return {y.detach(), du, wl.grad()};
}

void CheckConvWithGrad(const std::string& label, const at::Tensor& u, const at::Tensor& w,
                       bool silu, int64_t proj_offset) {
  const at::Tensor dy = at::randn(u.sizes(), CpuF32()).to(u.scalar_type());
  PoisonAllocator(u.numel() * 16);
  const ConvRun got = RunConv(u, w, dy, silu, proj_offset, /*reference=*/false);
  const ConvRun want = RunConv(u, w, dy, silu, proj_offset, /*reference=*/true);
  ExpectNear(label + " y", got.y, want.y, kOutputTol);
  ExpectNear(label + " du", got.du, want.du, kGradTol);
  ExpectNear(label + " dw", got.dw, want.dw, kGradTol);
}

// Partial channel blocks and time tiles, K = 2..8, a strided input, and the decoding cache: set
// when undefined, updated in place for T = 1, T < K - 1 (the new cache mixes old and new inputs)
// and T over more than one tile (the second launch copies the last inputs), also under autograd.
TEST(CudaSanitizerCases, ShortConvForwardBackwardAndCache) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(501);
  const auto weights = [](int64_t c, int64_t k, at::ScalarType type) {
    return (at::randn({c, k}, CpuF32()) / std::sqrt(static_cast<double>(k))).to(type);
  };
  CheckConvWithGrad("bf16 [2, 45, 36] K=4 silu", at::randn({2, 45, 36}, CpuF32()).to(at::kBFloat16),
                    weights(36, 4, at::kBFloat16), true, -1);
  CheckConvWithGrad("fp32 [2, 33, 132] K=3 column slice of a projection",
                    at::randn({2, 33, 132}, CpuF32()), weights(132, 3, at::kFloat), false, 4);
  CheckConvWithGrad("bf16 [1, 33, 8] K=8", at::randn({1, 33, 8}, CpuF32()).to(at::kBFloat16),
                    weights(8, 8, at::kBFloat16), true, -1);
  CheckConvWithGrad("fp16 [3, 5, 12] K=2", at::randn({3, 5, 12}, CpuF32()).to(at::kHalf),
                    weights(12, 2, at::kHalf), false, -1);

  // Decoding with the cache updated in place (what a captured decoding step needs).
  {
    const int64_t b = 3, c = 260, k = 4;
    const at::Tensor w = weights(c, k, at::kHalf);
    at::Tensor cache = Dev(at::randn({b, c, k - 1}, CpuF32()).to(at::kHalf));
    at::Tensor cache_ref = Ref(cache);
    const void* storage = cache.data_ptr();
    for (const int64_t t : {1, 2, 40}) {
      const at::Tensor u = at::randn({b, t, c}, CpuF32()).to(at::kHalf);
      const std::string label = "fp16 decode [3, " + std::to_string(t) + ", 260] K=4 silu";
      EXPECT_TRUE(kernels::cuda::ShortConvSupported(Dev(u), Dev(w), cache)) << label;
      PoisonAllocator(u.numel() * 16);
      const at::Tensor y = kernels::ShortConv(Dev(u), Dev(w), &cache, true);
      const at::Tensor want = kernels::ShortConvReference(Ref(u), Ref(w), &cache_ref, true);
      ExpectNear(label + " y", y, want, kOutputTol);
      ExpectNear(label + " cache", cache, cache_ref, kOutputTol);
      EXPECT_EQ(cache.data_ptr(), storage) << label << ": the cache was not updated in place";
    }
  }
  // No cache yet: the forward sets one.
  {
    const at::Tensor u = at::randn({2, 37, 16}, CpuF32()).to(at::kBFloat16);
    const at::Tensor w = weights(16, 4, at::kBFloat16);
    at::Tensor cache, cache_ref;
    const at::Tensor y = kernels::ShortConv(Dev(u), Dev(w), &cache, false);
    const at::Tensor want = kernels::ShortConvReference(Ref(u), Ref(w), &cache_ref, false);
    ExpectNear("bf16 [2, 37, 16] new cache y", y, want, kOutputTol);
    ExpectNear("bf16 [2, 37, 16] new cache", cache, cache_ref, kOutputTol);
  }
  // Under autograd with a cache: the CUDA backward reads a copy of the previous inputs.
  {
    const at::Tensor u = at::randn({2, 50, 64}, CpuF32());
    const at::Tensor w = weights(64, 4, at::kFloat);
    const at::Tensor dy = at::randn({2, 50, 64}, CpuF32());
    at::Tensor cache = Dev(at::randn({2, 64, 3}, CpuF32()));
    const at::Tensor prev = Ref(cache);
    const at::Tensor ul = GpuLeaf(u, false), wl = GpuLeaf(w, false);
    const at::Tensor y = kernels::ShortConv(ul, wl, &cache, true);
    y.backward(Dev(dy));
    const at::Tensor ur = Ref(u).requires_grad_(true), wr = Ref(w).requires_grad_(true);
    at::Tensor cache_ref = prev.clone();
    const at::Tensor yr = kernels::ShortConvReference(ur, wr, &cache_ref, true);
    yr.backward(Ref(dy));
    ExpectNear("fp32 [2, 50, 64] cache + grad y", y, yr, kOutputTol);
    ExpectNear("fp32 [2, 50, 64] cache + grad du", ul.grad(), ur.grad(), kGradTol);
    ExpectNear("fp32 [2, 50, 64] cache + grad dw", wl.grad(), wr.grad(), kGradTol);
    ExpectNear("fp32 [2, 50, 64] cache + grad cache", cache, cache_ref, kOutputTol);
  }
}

// More time tiles than the grids' blocks: the forward's and the backward's blocks stride over
// the tiles, and the backward sums one weight-gradient row per block row. Four channels keep it
// small (one channel block).
TEST(CudaSanitizerCases, ShortConvManyTiles) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(502);
  const int sms = NumSms();
  const int64_t b = 8, c = 4;
  const int64_t tiles =
      kernels::cuda::kShortConvForwardBlocksPerSm * kernels::cuda::kShortConvBlockY * sms / b + 1;
  const int64_t t = tiles * kernels::cuda::kShortConvTimeTile - 5;  // a partial last tile
  for (const int per_sm : {kernels::cuda::kShortConvForwardBlocksPerSm,
                           kernels::cuda::kShortConvBackwardBlocksPerSm}) {
    const auto grid = kernels::cuda::PlanShortConvGrid(b, t, c, sms, per_sm);
    EXPECT_LT(grid.blocks_y * kernels::cuda::kShortConvBlockY, b * grid.tiles_per_seq);
  }
  const at::Tensor u = at::randn({b, t, c}, CpuF32());
  const at::Tensor w = at::randn({c, 4}, CpuF32()) / 2;
  CheckConvWithGrad("fp32 [8, " + std::to_string(t) + ", 4] K=4 silu", u, w, true, -1);
}

// ---------------------------------------------------------------------------------------------
// Logits scoring (logits_score.cu) through kernels::TokenLogProbs and kernels::RowKl.

TEST(CudaSanitizerCases, LogitsScores) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(601);
  const auto long_cpu = at::TensorOptions().dtype(at::kLong);
  // One column.
  {
    const at::Tensor logits = at::randn({5, 1}, CpuF32()).to(at::kBFloat16);
    const at::Tensor targets = at::zeros({5}, long_cpu);
    EXPECT_TRUE(kernels::cuda::TokenLogProbsSupported(Dev(logits), Dev(targets)));
    ExpectNear("TokenLogProbs bf16 [5, 1]", kernels::TokenLogProbs(Dev(logits), Dev(targets)),
               kernels::TokenLogProbsReference(Ref(logits), targets), kOutputTol);
  }
  // Rows starting off 16-byte alignment (row stride 1003, first column 1), targets on the
  // device, one outside [0, V): NaN there.
  {
    const at::Tensor base = Dev(at::randn({6, 1003}, CpuF32()));
    const at::Tensor logits = base.narrow(1, 1, 1000);
    at::Tensor targets = at::randint(0, 1000, {6}, long_cpu);
    targets[2] = 1000;
    EXPECT_TRUE(kernels::cuda::TokenLogProbsSupported(logits, Dev(targets)));
    PoisonAllocator(1 << 20);
    const at::Tensor got = kernels::TokenLogProbs(logits, Dev(targets)).cpu();
    at::Tensor valid = targets.clone();
    valid[2] = 0;
    const at::Tensor want = kernels::TokenLogProbsReference(Ref(logits), valid);
    const at::Tensor rows = at::tensor(std::vector<int64_t>{0, 1, 3, 4, 5}, long_cpu);
    ExpectNear("TokenLogProbs fp32 unaligned rows", got.index_select(0, rows),
               want.index_select(0, rows), kOutputTol);
    EXPECT_TRUE(std::isnan(got[2].item<double>())) << "a target outside [0, V) gives NaN";
  }
  // Long rows (512 threads), targets on the host.
  {
    const at::Tensor logits = at::randn({3, 50000}, CpuF32()).to(at::kHalf);
    const at::Tensor targets = at::randint(0, 50000, {3}, long_cpu);
    ExpectNear("TokenLogProbs fp16 [3, 50000]", kernels::TokenLogProbs(Dev(logits), targets),
               kernels::TokenLogProbsReference(Ref(logits), targets), kOutputTol);
  }
  // KL: student rows aligned unlike the teacher's (element by element), teacher entries of -inf
  // (a first column of -inf too); both aligned alike in other dtypes (vectors); one column.
  {
    at::Tensor teacher = at::randn({4, 777}, CpuF32());
    teacher.select(0, 1).narrow(0, 0, 100).fill_(-std::numeric_limits<float>::infinity());
    const at::Tensor student_base = Dev(at::randn({4, 780}, CpuF32()).to(at::kBFloat16));
    const at::Tensor student = student_base.narrow(1, 3, 777);
    EXPECT_TRUE(kernels::cuda::RowKlSupported(Dev(teacher), student));
    PoisonAllocator(1 << 20);
    ExpectNear("RowKl fp32 teacher, bf16 student misaligned", kernels::RowKl(Dev(teacher), student),
               kernels::RowKlReference(Ref(teacher), Ref(student)), kOutputTol);
  }
  {
    const at::Tensor teacher = at::randn({3, 4096}, CpuF32()).to(at::kBFloat16);
    const at::Tensor student = at::randn({3, 4096}, CpuF32()).to(at::kHalf);
    EXPECT_TRUE(kernels::cuda::RowKlSupported(Dev(teacher), Dev(student)));
    ExpectNear("RowKl bf16 teacher, fp16 student", kernels::RowKl(Dev(teacher), Dev(student)),
               kernels::RowKlReference(Ref(teacher), Ref(student)), kOutputTol);
  }
  {
    const at::Tensor teacher = at::randn({2, 1}, CpuF32()), student = at::randn({2, 1}, CpuF32());
    ExpectNear("RowKl fp32 [2, 1]", kernels::RowKl(Dev(teacher), Dev(student)),
               kernels::RowKlReference(Ref(teacher), Ref(student)), kOutputTol);
  }
}

#else

TEST(CudaSanitizerCases, SkippedWithoutCudaBuild) {
  GTEST_SKIP() << "built without HYB_CUDA: the CUDA kernels are absent";
}

#endif  // HYB_WITH_CUDA

}  // namespace
}  // namespace hyb
