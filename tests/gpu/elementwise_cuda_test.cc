// GPU tests of the fused elementwise kernels (kernels/cuda/fused_elementwise.cu) through
// kernels::Rotary and kernels::SiluMul: bit-identical to the LibTorch composition they replace
// (the same bf16 roundings), on the layouts the runtime passes (a [B, H, T, D] view of a
// [B, T, H, D] projection), odd lengths and unaligned starts, and the inputs left to the
// reference (ctest label `gpu`).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "gpu_test_util.h"
#include "hyb/kernels/elementwise.h"

#ifdef HYB_WITH_CUDA
#include "hyb/kernels/cuda_elementwise.h"
#endif

namespace hyb {
namespace {

#ifdef HYB_WITH_CUDA

const at::TensorOptions kBf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);

TEST(CudaElementwiseTest, RotaryBitIdenticalToTheComposition) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(0);
  at::NoGradGuard no_grad;
  struct Case {
    int64_t b, t, h, d;
  };
  for (const Case c :
       {Case{2, 37, 12, 128}, Case{1, 1, 32, 64}, Case{3, 513, 8, 64}, Case{1, 2048, 2, 128}}) {
    const std::string where = "b=" + std::to_string(c.b) + " t=" + std::to_string(c.t) +
                              " h=" + std::to_string(c.h) + " d=" + std::to_string(c.d);
    // The runtime's layout: [B, T, H, D] projections seen as [B, H, T, D]; angles up to 1e4 rad.
    const at::Tensor x = (4 * at::randn({c.b, c.t, c.h, c.d}, kBf16)).transpose(1, 2);
    const at::Tensor angle = at::rand({c.t, c.d}, kBf16.dtype(at::kFloat)) * 1e4;
    const at::Tensor cos = angle.cos().to(at::kBFloat16), sin = angle.sin().to(at::kBFloat16);
    ASSERT_TRUE(kernels::cuda::RotarySupported(x, cos, sin)) << where;
    const at::Tensor fused = kernels::Rotary(x, cos, sin);
    const at::Tensor ref = kernels::RotaryReference(x, cos, sin);
    EXPECT_TRUE(at::equal(fused, ref))
        << where << ": max |diff| "
        << (fused.to(at::kFloat) - ref.to(at::kFloat)).abs().max().item<float>();
    for (int64_t dim = 0; dim < 4; ++dim) {  // the layout SDPA then reads (size-1 dims aside)
      if (ref.size(dim) > 1)
        EXPECT_EQ(fused.stride(dim), ref.stride(dim)) << where << " dim " << dim;
    }
    const at::Tensor contiguous = x.contiguous();
    EXPECT_TRUE(at::equal(kernels::Rotary(contiguous, cos, sin), ref)) << where << " contiguous";
  }
}

TEST(CudaElementwiseTest, RotaryLeavesOtherInputsToTheReference) {
  HYB_REQUIRE_CUDA_KERNELS();
  const at::Tensor x = at::randn({1, 4, 9, 64}, kBf16);
  const at::Tensor cos = at::randn({9, 64}, kBf16), sin = at::randn({9, 64}, kBf16);
  EXPECT_FALSE(
      kernels::cuda::RotarySupported(x.to(at::kFloat), cos.to(at::kFloat), sin.to(at::kFloat)));
  EXPECT_FALSE(kernels::cuda::RotarySupported(x, cos.unsqueeze(0), sin.unsqueeze(0)));  // per batch
  EXPECT_FALSE(kernels::cuda::RotarySupported(at::randn({1, 4, 9, 66}, kBf16),
                                              at::randn({9, 66}, kBf16),
                                              at::randn({9, 66}, kBf16)));  // D / 2 odd
  EXPECT_FALSE(kernels::cuda::RotarySupported(x.cpu(), cos.cpu(), sin.cpu()));
  // With autograd the reference runs, and gradients reach x.
  const at::Tensor xg = x.clone().requires_grad_(true);
  const at::Tensor y = kernels::Rotary(xg, cos, sin);
  ASSERT_NE(y.grad_fn(), nullptr);
  y.sum().backward();
  EXPECT_TRUE(xg.grad().defined());
}

TEST(CudaElementwiseTest, SiluMulBitIdenticalToTheComposition) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(1);
  at::NoGradGuard no_grad;
  for (const int64_t n : {int64_t{1}, int64_t{7}, int64_t{4096 * 8960 + 5}}) {
    // Gates across silu's whole range, including large negatives (exp overflow) and zeros.
    const at::Tensor gate = 8 * at::randn({n}, kBf16), up = at::randn({n}, kBf16);
    const at::Tensor fused = kernels::SiluMul(gate, up);
    EXPECT_TRUE(at::equal(fused, kernels::SiluMulReference(gate, up))) << "n=" << n;
  }
  // A start 2 bytes off 16: the element-wise path.
  const at::Tensor base = 8 * at::randn({2 * 1000 + 1}, kBf16), up = at::randn({2000}, kBf16);
  const at::Tensor gate = base.narrow(0, 1, 2000);
  ASSERT_TRUE(kernels::cuda::SiluMulSupported(gate, up));
  EXPECT_TRUE(at::equal(kernels::SiluMul(gate, up), kernels::SiluMulReference(gate, up)));
  const at::Tensor special =
      at::tensor({-200.f, -88.f, -10.f, 0.f, 1e-3f, 10.f, 200.f}, kBf16.dtype(at::kFloat))
          .to(at::kBFloat16);
  EXPECT_TRUE(at::equal(kernels::SiluMul(special, at::ones_like(special)),
                        kernels::SiluMulReference(special, at::ones_like(special))));
}

#else  // HYB_WITH_CUDA

TEST(CudaElementwiseTest, NeedsTheCudaBuild) { GTEST_SKIP() << "built without HYB_CUDA"; }

#endif  // HYB_WITH_CUDA

}  // namespace
}  // namespace hyb
