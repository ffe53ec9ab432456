// GPU tests of the short convolution kernels (kernels/cuda/short_conv.cu) through
// kernels::ShortConv: forward, d_u and d_w against the function computed in fp64, within twice
// the error of the ATen reference run in the kernel's dtype (flash-attention's rule, as in
// norm_cuda_test.cc; a floor of 1e-5 for fp32), strided inputs, the decoding cache updated in
// place (also inside a captured CUDA graph), determinism, and the inputs left to the reference
// (ctest label `gpu`).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <iostream>
#include <string>
#include <tuple>
#include <vector>

#include "gpu_test_util.h"
#include "hyb/kernels/cuda_conv.h"
#include "hyb/kernels/short_conv.h"

#ifdef HYB_WITH_CUDA
// CUDA headers only in the CUDA build: Debian's CPU LibTorch lacks the CUDA runtime's.
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace hyb {
namespace {

#ifdef HYB_WITH_CUDA

// True when `out` came from the CUDA autograd node (the reference ends in a transpose or silu).
bool FromCudaNode(const at::Tensor& out) {
  return out.grad_fn() != nullptr && out.grad_fn()->name().find("ShortConv") != std::string::npos;
}

// The definition in the inputs' dtype, from shifted slices (no convolution op); in fp64 the
// oracle.
at::Tensor Exact(const at::Tensor& u, const at::Tensor& w, const at::Tensor& prev, bool silu) {
  const int64_t b = u.size(0), t = u.size(1), c = u.size(2), k = w.size(1);
  const at::Tensor before =
      prev.defined() ? prev.transpose(1, 2) : at::zeros({b, k - 1, c}, u.options());
  const at::Tensor x = at::cat({before, u}, 1);  // [B, K-1+T, C]
  at::Tensor y = at::zeros({b, t, c}, u.options());
  for (int64_t j = 0; j < k; ++j) y = y + x.narrow(1, j, t) * w.select(1, j);
  return silu ? y * at::sigmoid(y) : y;
}

struct Inputs {
  at::Tensor u, w, d_out;  // u [B, T, C] (maybe a column slice), w [C, K], d_out [B, T, C]
};

// strided: u is the middle third of a [B, T, 3C] projection, as the mixers pass it.
Inputs Make(int64_t b, int64_t t, int64_t c, int64_t k, bool strided, at::ScalarType type) {
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  Inputs in;
  in.u = strided ? at::randn({b, t, 3 * c}, f32).to(type).narrow(2, c, c)
                 : at::randn({b, t, c}, f32).to(type);
  in.w = (0.5 * at::randn({c, k}, f32)).to(type);
  in.d_out = at::randn({b, t, c}, f32).to(type);
  return in;
}

// kDispatch: kernels::ShortConv; kReference: kernels::ShortConvReference; kExact: Exact.
enum class Path { kDispatch, kReference, kExact };

struct Result {
  at::Tensor out, d_u, d_w;
  bool cuda_node = false;
};

// Output and gradients of the path on leaf copies of the inputs in `type` (u's strides kept).
Result RunConv(const Inputs& in, bool silu, at::ScalarType type, Path path) {
  const at::Tensor u = in.u.to(type).detach().requires_grad_(true);
  const at::Tensor w = in.w.to(type).detach().requires_grad_(true);
  at::Tensor out;
  if (path == Path::kDispatch) {
    out = kernels::ShortConv(u, w, nullptr, silu);
  } else if (path == Path::kReference) {
    out = kernels::ShortConvReference(u, w, nullptr, silu);
  } else {
    out = Exact(u, w, at::Tensor(), silu);
  }
  Result r;
  r.cuda_node = FromCudaNode(out);
  const auto grads = torch::autograd::grad({out}, {u, w}, {in.d_out.to(out.scalar_type())});
  r.out = out.detach();
  r.d_u = grads[0];
  r.d_w = grads[1];
  return r;
}

void ExpectWithinReference(const Result& got, const Result& low, const Result& exact, double floor,
                           const std::string& what) {
  const std::vector<std::tuple<const char*, at::Tensor, at::Tensor, at::Tensor>> parts = {
      {"out", got.out, low.out, exact.out},
      {"d_u", got.d_u, low.d_u, exact.d_u},
      {"d_w", got.d_w, low.d_w, exact.d_w}};
  for (const auto& [name, g, l, e] : parts) {
    ASSERT_TRUE(g.defined()) << what << " " << name;
    ASSERT_EQ(g.sizes(), e.sizes()) << what << " " << name;
    EXPECT_EQ(g.scalar_type(), l.scalar_type()) << what << " " << name;
    const double err = RelErr(g, e), ref = RelErr(l, e);
    EXPECT_LE(err, 2 * ref + floor)
        << what << " " << name << ": kernel " << err << ", reference " << ref;
  }
}

TEST(CudaShortConvTest, ForwardAndGradientsWithinTwiceReferenceError) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(41);
  for (const at::ScalarType type : {at::kBFloat16, at::kFloat}) {
    // fp32: kernel and reference both round in fp32 and sum d_w over up to 4096 steps in
    // different orders; the floor stays far below any indexing or formula error.
    const double floor = type == at::kFloat ? 1e-5 : 0.0;
    for (const int64_t t : {1, 3, 4, 5, 100, 2048}) {
      for (const int64_t c : {64, 4096}) {
        for (const int64_t k : {2, 4}) {
          for (const bool strided : {true, false}) {
            for (const bool silu : {true, false}) {
              const int64_t b = 2;
              const Inputs in = Make(b, t, c, k, strided, type);
              const std::string what = std::string(c10::toString(type)) + " B" + std::to_string(b) +
                                       " T" + std::to_string(t) + " C" + std::to_string(c) + " K" +
                                       std::to_string(k) + (strided ? " strided" : "") +
                                       (silu ? " silu" : "");
              const Result got = RunConv(in, silu, type, Path::kDispatch);
              EXPECT_TRUE(got.cuda_node) << what << ": the CUDA autograd node did not run";
              const Result low = RunConv(in, silu, type, Path::kReference);
              const Result exact = RunConv(in, silu, at::kDouble, Path::kExact);
              ExpectWithinReference(got, low, exact, floor, what);
            }
          }
        }
      }
    }
  }
}

// Without gradients the forward rounds where the reference does: bf16 outputs are almost all
// bit-identical (the fp32 sums may differ in their last bit), and never more than a rounding
// apart.
TEST(CudaShortConvTest, ForwardRoundsLikeTheReference) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(42);
  at::NoGradGuard no_grad;
  // The fp32 reference in full fp32 (cuDNN may otherwise convolve in TF32); restored below.
  const bool tf32 = at::globalContext().allowTF32CuDNN();
  at::globalContext().setAllowTF32CuDNN(false);
  for (const at::ScalarType type : {at::kBFloat16, at::kHalf, at::kFloat}) {
    for (const bool silu : {true, false}) {
      const Inputs in = Make(3, 333, 512, 4, /*strided=*/true, type);
      ASSERT_TRUE(kernels::cuda::ShortConvSupported(in.u, in.w, at::Tensor()));
      const at::Tensor got = kernels::cuda::ShortConv(in.u, in.w, nullptr, silu);
      const at::Tensor want = kernels::ShortConvReference(in.u, in.w, nullptr, silu);
      ASSERT_EQ(got.sizes(), want.sizes());
      ASSERT_EQ(got.scalar_type(), type);
      EXPECT_TRUE(got.is_contiguous());
      const double ulp =
          type == at::kFloat ? 1e-6 : (type == at::kBFloat16 ? 1.0 / 128 : 1.0 / 1024);
      const at::Tensor g = got.to(at::kFloat), w = want.to(at::kFloat);
      // Relative to the value, or to the inputs' scale near zero (where the sums cancel).
      const double err =
          ((g - w).abs() / (w.abs() + (type == at::kFloat ? 1.0 : 1e-2))).max().item<double>();
      EXPECT_LE(err, 3 * ulp) << c10::toString(type) << (silu ? " silu" : "");
      if (type != at::kFloat) {
        const double same = g.eq(w).to(at::kDouble).mean().item<double>();
        EXPECT_GE(same, 0.99) << c10::toString(type) << (silu ? " silu" : "");
      }
    }
  }
  at::globalContext().setAllowTF32CuDNN(tf32);
}

// The decoding cache: the previous inputs are read, the last K-1 inputs written into the same
// buffer (T below K-1, within one tile, and over several tiles: the copy launch), or into a new
// tensor when the cache was undefined; with and without gradients.
TEST(CudaShortConvTest, CacheUpdatedInPlace) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(43);
  const auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  for (const int64_t k : {2, 4}) {
    for (const int64_t t : {1, 2, 3, 5, 32, 33, 100}) {
      for (const bool silu : {true, false}) {
        for (const bool grad : {false, true}) {
          const std::string what = "K" + std::to_string(k) + " T" + std::to_string(t) +
                                   (silu ? " silu" : "") + (grad ? " grad" : "");
          const int64_t b = 3, c = 256;
          const Inputs in = Make(b, t, c, k, /*strided=*/true, at::kBFloat16);
          const at::Tensor start = at::randn({b, c, k - 1}, bf16);
          at::Tensor cache = start.clone(), ref_cache = start.clone();
          const void* buffer = cache.data_ptr();
          const at::Tensor u = in.u.detach().requires_grad_(grad);
          const at::Tensor w = in.w.detach().requires_grad_(grad);
          const at::Tensor got = kernels::ShortConv(u, w, &cache, silu);
          const at::Tensor want = kernels::ShortConvReference(in.u, in.w, &ref_cache, silu);
          EXPECT_EQ(cache.data_ptr(), buffer) << what << ": the cache moved";
          EXPECT_TRUE(at::equal(cache, ref_cache)) << what << ": the new cache";
          const at::Tensor exact =
              Exact(in.u.to(at::kDouble), in.w.to(at::kDouble), start.to(at::kDouble), silu);
          EXPECT_LE(RelErr(got, exact), 2 * RelErr(want, exact) + 1e-6) << what;
          if (grad) {
            EXPECT_TRUE(FromCudaNode(got)) << what;
            const auto g = torch::autograd::grad({got}, {u, w}, {in.d_out});
            const at::Tensor u64 = in.u.to(at::kDouble).requires_grad_(true);
            const at::Tensor w64 = in.w.to(at::kDouble).requires_grad_(true);
            const at::Tensor out64 = Exact(u64, w64, start.to(at::kDouble), silu);
            const auto e = torch::autograd::grad({out64}, {u64, w64}, {in.d_out.to(at::kDouble)});
            // The bf16 reference's own gradient error is about one rounding of the output.
            EXPECT_LE(RelErr(g[0], e[0]), 2e-2) << what << " d_u";
            EXPECT_LE(RelErr(g[1], e[1]), 2e-2) << what << " d_w";
          }
        }
        // An undefined cache: zeros before, a new tensor after.
        const Inputs in = Make(2, t, 64, k, /*strided=*/false, at::kBFloat16);
        at::Tensor fresh, ref_fresh;
        at::NoGradGuard no_grad;
        const at::Tensor got = kernels::ShortConv(in.u, in.w, &fresh, silu);
        const at::Tensor want = kernels::ShortConvReference(in.u, in.w, &ref_fresh, silu);
        ASSERT_TRUE(fresh.defined());
        EXPECT_TRUE(at::equal(fresh, ref_fresh)) << "K" << k << " T" << t << " fresh cache";
        EXPECT_LE(RelErr(got, want), 1e-2) << "K" << k << " T" << t << " fresh cache";
      }
    }
  }
}

// A captured decoding step keeps reading and writing the same cache buffer: replays over a
// sequence give the outputs of one call over it.
TEST(CudaShortConvTest, CapturedDecodingStepCarriesTheCache) {
  HYB_REQUIRE_CUDA_KERNELS();
  at::NoGradGuard no_grad;
  torch::manual_seed(44);
  const auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const int64_t b = 2, t = 9, c = 4096, k = 4;
  const at::Tensor seq = at::randn({b, t, c}, bf16);
  const at::Tensor w = 0.5 * at::randn({c, k}, bf16);
  const at::Tensor whole = kernels::ShortConv(seq, w, nullptr, /*silu=*/true);
  at::Tensor step_in = at::zeros({b, 1, c}, bf16);
  at::Tensor cache = at::zeros({b, c, k - 1}, bf16);
  const void* buffer = cache.data_ptr();
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
  c10::cuda::getCurrentCUDAStream().synchronize();
  at::cuda::CUDAGraph graph;
  at::Tensor out;
  {
    const c10::cuda::CUDAStreamGuard guard(side);
    out = kernels::ShortConv(step_in, w, &cache, true);  // warm-up outside the capture
    side.synchronize();
    cache.zero_();
    side.synchronize();
    graph.capture_begin();
    out = kernels::ShortConv(step_in, w, &cache, true);
    graph.capture_end();
  }
  torch::cuda::synchronize();
  cache.zero_();  // the capture did not run the step
  std::vector<at::Tensor> outs;
  for (int64_t i = 0; i < t; ++i) {
    step_in.copy_(seq.narrow(1, i, 1));
    graph.replay();
    outs.push_back(out.clone());
  }
  torch::cuda::synchronize();
  EXPECT_EQ(cache.data_ptr(), buffer);
  EXPECT_TRUE(at::equal(at::cat(outs, 1), whole));
  EXPECT_TRUE(at::equal(cache, seq.narrow(1, t - (k - 1), k - 1).transpose(1, 2)));
}

// d_w is summed in a fixed order: two runs give the same bits.
TEST(CudaShortConvTest, WeightGradientIsDeterministic) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(45);
  for (const int64_t c : {64, 4096}) {
    const Inputs in = Make(4, 1000, c, 4, /*strided=*/true, at::kBFloat16);
    const auto a = kernels::cuda::ShortConvBackward(in.u, in.w, at::Tensor(), in.d_out, true);
    const auto b = kernels::cuda::ShortConvBackward(in.u, in.w, at::Tensor(), in.d_out, true);
    EXPECT_TRUE(at::equal(a.d_w, b.d_w)) << c;
    EXPECT_TRUE(at::equal(a.d_u, b.d_u)) << c;
  }
}

// Inputs the kernels read through a copy (u off its vector alignment), inputs they do not take
// (the reference runs), and no steps.
TEST(CudaShortConvTest, CopiesFallbacksAndEdgeCases) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(46);
  const auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  auto check = [&](const at::Tensor& u, const at::Tensor& w, bool expect_cuda, const char* what) {
    const at::Tensor ug = u.detach().requires_grad_(true);
    const at::Tensor wg = w.detach().requires_grad_(true);
    const at::Tensor out = kernels::ShortConv(ug, wg, nullptr, true);
    EXPECT_EQ(FromCudaNode(out), expect_cuda) << what;
    const at::Tensor d_out = at::randn(out.sizes(), out.options());
    const auto got = torch::autograd::grad({out}, {ug, wg}, {d_out});
    const at::Tensor u64 = u.to(at::kDouble).requires_grad_(true);
    const at::Tensor w64 = w.to(at::kDouble).requires_grad_(true);
    const at::Tensor ref = Exact(u64, w64, at::Tensor(), true);
    const auto want = torch::autograd::grad({ref}, {u64, w64}, {d_out.to(at::kDouble)});
    EXPECT_LE(RelErr(out, ref), 1e-2) << what;
    for (size_t i = 0; i < 2; ++i) {
      ASSERT_EQ(got[i].sizes(), want[i].sizes()) << what << " " << i;
      EXPECT_LE(RelErr(got[i], want[i]), 2e-2) << what << " " << i;
    }
  };
  check(at::randn({2, 50, 3 * 64}, bf16).narrow(2, 2, 64), 0.5 * at::randn({64, 4}, bf16), true,
        "u 4 bytes off its vector");
  check(at::randn({2, 64, 50}, bf16).transpose(1, 2), 0.5 * at::randn({64, 4}, bf16), true,
        "u channel-strided");
  check(at::randn({2, 50, 6}, bf16), 0.5 * at::randn({6, 4}, bf16), false, "C not whole vectors");
  check(at::randn({2, 50, 64}, bf16), 0.5 * at::randn({64, 1}, bf16), false, "K = 1");

  // No steps: an empty output, a zero weight gradient, the cache unchanged.
  const at::Tensor empty = at::empty({2, 0, 64}, bf16).requires_grad_(true);
  const at::Tensor w = at::randn({64, 4}, bf16).requires_grad_(true);
  const at::Tensor out = kernels::ShortConv(empty, w, nullptr, true);
  EXPECT_EQ(out.numel(), 0);
  const auto grads = torch::autograd::grad({out}, {empty, w}, {at::zeros_like(out)});
  EXPECT_EQ(grads[1].abs().sum().item<float>(), 0.f);
  at::NoGradGuard no_grad;
  const at::Tensor start = at::randn({2, 64, 3}, bf16);
  at::Tensor cache = start.clone();
  kernels::ShortConv(empty.detach(), w.detach(), &cache, false);
  EXPECT_TRUE(at::equal(cache, start));
}

#else  // HYB_WITH_CUDA

TEST(CudaShortConvTest, NeedsTheCudaBuild) { GTEST_SKIP() << "built without HYB_CUDA"; }

#endif  // HYB_WITH_CUDA

}  // namespace
}  // namespace hyb
