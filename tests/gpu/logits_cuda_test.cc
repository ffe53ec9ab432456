// GPU tests of the fused logits-scoring kernels (kernels/cuda/logits_score.cu) against the ATen
// reference run in fp64 on the same inputs (ctest label `gpu`). The kernels compute in fp32 from
// inputs that are exact in fp32 (bf16 or fp32 logits), so their error is fp32 rounding of the
// log-sum-exp: the bound is 1e-4 of max(1, |logsumexp|) per row (the fp32 sum of the <= 300
// terms a thread adds is off by at most ~2e-5 relative; the test prints the largest error seen).
// Index mistakes that fp32 rounding could hide are caught by rows whose one large logit sits at a
// chosen position: missing it moves the result by O(1).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "gpu_test_util.h"
#include "hyb/kernels/logits.h"

namespace hyb {
namespace {

#ifdef HYB_WITH_CUDA

constexpr double kInf = std::numeric_limits<double>::infinity();

at::TensorOptions Cuda(at::ScalarType t) {
  return at::TensorOptions().device(at::kCUDA).dtype(t);
}

// Logits with a language model's spread: N(0, 3^2) plus a per-row offset, rounded to `type`.
at::Tensor RandomLogits(int64_t n, int64_t v, at::ScalarType type) {
  return (3 * at::randn({n, v}, Cuda(at::kFloat)) + 5 * at::randn({n, 1}, Cuda(at::kFloat)))
      .to(type);
}

// Per row: |got - want| / max(1, |scale|), the largest over rows (NaN counts as infinite unless
// both are NaN, infinities must agree exactly).
double MaxScaledError(const at::Tensor& got, const at::Tensor& want, const at::Tensor& scale) {
  const at::Tensor g = got.to(at::kDouble).cpu(), w = want.to(at::kDouble).cpu();
  const at::Tensor s = scale.to(at::kDouble).cpu().abs().clamp_min(1);
  const auto ga = g.accessor<double, 1>(), wa = w.accessor<double, 1>(), sa = s.accessor<double, 1>();
  double worst = 0;
  for (int64_t r = 0; r < g.size(0); ++r) {
    const double a = ga[r], b = wa[r];
    if (std::isnan(a) && std::isnan(b)) continue;
    if (std::isinf(b) || std::isinf(a)) {
      if (a != b) return kInf;
      continue;
    }
    const double e = std::abs(a - b) / sa[r];
    worst = std::isnan(e) ? kInf : std::max(worst, e);
  }
  return worst;
}

constexpr double kTol = 1e-4;

void Report(const std::string& what, double worst) {
  std::cout << "[ logits ] " << what << ": largest error / max(1, |logsumexp|) = " << worst
            << "\n";
}

TEST(CudaLogitsTest, TokenLogProbsMatchesFp64Reference) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(1);
  double worst = 0;
  for (at::ScalarType type : {at::kBFloat16, at::kFloat}) {
    for (int64_t v : {1, 7, 32000, 128256, 151936}) {
      for (int64_t n : {1, 5, 4096}) {
        SCOPED_TRACE(std::string(c10::toString(type)) + " V=" + std::to_string(v) +
                     " N=" + std::to_string(n));
        const at::Tensor logits = RandomLogits(n, v, type);
        const at::Tensor targets = at::randint(0, v, {n}, Cuda(at::kLong));
        ASSERT_TRUE(kernels::cuda::TokenLogProbsSupported(logits, targets));
        const at::Tensor got = kernels::TokenLogProbs(logits, targets);
        ASSERT_EQ(got.scalar_type(), at::kFloat);
        ASSERT_EQ(got.size(0), n);
        const at::Tensor x = logits.to(at::kDouble);
        const at::Tensor want = kernels::TokenLogProbsReference(x, targets);
        const double err = MaxScaledError(got, want, x.logsumexp(1));
        EXPECT_LT(err, kTol);
        EXPECT_TRUE(at::equal(got, kernels::cuda::TokenLogProbs(logits, targets)));
        worst = std::max(worst, err);
      }
    }
  }
  Report("TokenLogProbs", worst);
}

TEST(CudaLogitsTest, RowKlMatchesFp64ReferenceAndIsNonNegative) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(2);
  double worst = 0;
  for (at::ScalarType type : {at::kBFloat16, at::kFloat}) {
    for (int64_t v : {1, 7, 32000, 128256, 151936}) {
      for (int64_t n : {1, 5, 4096}) {
        SCOPED_TRACE(std::string(c10::toString(type)) + " V=" + std::to_string(v) +
                     " N=" + std::to_string(n));
        // A student near the teacher (as after distillation), with its own per-row offset.
        const at::Tensor teacher = RandomLogits(n, v, type);
        const at::Tensor student =
            (teacher.to(at::kFloat) + 0.5 * at::randn({n, v}, Cuda(at::kFloat)) +
             at::randn({n, 1}, Cuda(at::kFloat)))
                .to(type);
        ASSERT_TRUE(kernels::cuda::RowKlSupported(teacher, student));
        const at::Tensor got = kernels::RowKl(teacher, student);
        ASSERT_EQ(got.scalar_type(), at::kFloat);
        const at::Tensor t = teacher.to(at::kDouble);
        const at::Tensor want = kernels::RowKlReference(t, student.to(at::kDouble));
        const double err = MaxScaledError(got, want, t.logsumexp(1));
        EXPECT_LT(err, kTol);
        EXPECT_GE(got.min().item<double>(), -kTol);
        worst = std::max(worst, err);
        // The same distribution gives 0 up to fp32 rounding (the H200 does not give exact zeros:
        // the kernel's sum and its two log-sum-exps round separately).
        EXPECT_LT(kernels::RowKl(teacher, teacher).abs().max().item<double>(), kTol);
      }
    }
  }
  Report("RowKl", worst);
}

// Row r's logits are small except a large one at position pos[r] (the first, second, middle and
// last positions, and the ones around a 16-byte vector's end), and the target is there.
TEST(CudaLogitsTest, EveryPositionOfTheRowCounts) {
  HYB_REQUIRE_CUDA_KERNELS();
  for (at::ScalarType type : {at::kBFloat16, at::kFloat, at::kHalf}) {
    for (int64_t v : {7, 9, 1000, 32000, 128256}) {
      SCOPED_TRACE(std::string(c10::toString(type)) + " V=" + std::to_string(v));
      std::vector<int64_t> pos = {0, 1, 3, 4, 7, 8, v / 2, v - 9, v - 8, v - 2, v - 1};
      for (int64_t& p : pos) p = std::clamp<int64_t>(p, 0, v - 1);
      const auto n = static_cast<int64_t>(pos.size());
      const at::Tensor targets = at::tensor(pos, at::kLong).to(at::kCUDA);
      // One row longer than V with an offset of 1, so that the rows start misaligned too.
      at::Tensor wide = 0.1 * at::randn({n, v + 3}, Cuda(at::kFloat));
      at::Tensor logits = wide.narrow(1, 1, v);
      logits.scatter_(1, targets.unsqueeze(1), 12.0);
      for (const at::Tensor& x : {logits.to(type), wide.to(type).narrow(1, 1, v)}) {
        const at::Tensor want = kernels::TokenLogProbsReference(x.to(at::kDouble), targets);
        EXPECT_LT(MaxScaledError(kernels::TokenLogProbs(x, targets), want, at::ones({n})), 5e-5);
        // The teacher's spike where the student has none, and the reverse: KL of O(10).
        const at::Tensor flat = (0.1 * at::randn({n, v}, Cuda(at::kFloat))).to(type);
        for (const auto& [a, b] : {std::pair{x, flat}, std::pair{flat, x}}) {
          const at::Tensor kl_want = kernels::RowKlReference(a.to(at::kDouble), b.to(at::kDouble));
          EXPECT_LT(MaxScaledError(kernels::RowKl(a, b), kl_want, at::ones({n})), 5e-5);
        }
      }
    }
  }
}

TEST(CudaLogitsTest, StridedAndMisalignedRows) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(3);
  const int64_t n = 37, v = 32000;
  for (at::ScalarType type : {at::kBFloat16, at::kFloat}) {
    const at::Tensor wide = RandomLogits(n, v + 40, type);
    const at::Tensor other_wide =
        (wide.to(at::kFloat) + 0.5 * at::randn({n, v + 40}, Cuda(at::kFloat))).to(type);
    const at::Tensor targets = at::randint(0, v, {n}, Cuda(at::kLong));
    for (int64_t offset : {0, 1, 3, 8}) {
      SCOPED_TRACE(std::string(c10::toString(type)) + " offset " + std::to_string(offset));
      const at::Tensor view = wide.narrow(1, offset, v);  // row stride v + 40
      ASSERT_FALSE(view.is_contiguous());
      ASSERT_TRUE(kernels::cuda::TokenLogProbsSupported(view, targets));
      const at::Tensor contiguous = view.contiguous();
      const at::Tensor got = kernels::TokenLogProbs(view, targets);
      const at::Tensor want = kernels::TokenLogProbsReference(view.to(at::kDouble), targets);
      EXPECT_LT(MaxScaledError(got, want, view.to(at::kDouble).logsumexp(1)), kTol);
      EXPECT_LT((got - kernels::TokenLogProbs(contiguous, targets)).abs().max().item<double>(),
                1e-4);
      // Teacher and student misaligned against each other (single-element loads) and alike.
      for (int64_t student_offset : {offset, offset + 1}) {
        const at::Tensor student = other_wide.narrow(1, student_offset, v);
        const at::Tensor kl = kernels::RowKl(view, student);
        const at::Tensor kl_want =
            kernels::RowKlReference(view.to(at::kDouble), student.to(at::kDouble));
        EXPECT_LT(MaxScaledError(kl, kl_want, view.to(at::kDouble).logsumexp(1)), kTol);
      }
    }
  }
}

TEST(CudaLogitsTest, MixedDtypesAndHalf) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(4);
  const int64_t n = 9, v = 1003;
  const at::Tensor base = RandomLogits(n, v, at::kFloat);
  const at::Tensor other = base + 0.3 * at::randn({n, v}, Cuda(at::kFloat));
  for (at::ScalarType tt : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (at::ScalarType lt : {at::kFloat, at::kBFloat16, at::kHalf}) {
      SCOPED_TRACE(std::string(c10::toString(tt)) + " teacher, " + c10::toString(lt) + " student");
      const at::Tensor t = base.to(tt), l = other.to(lt);
      ASSERT_TRUE(kernels::cuda::RowKlSupported(t, l));
      const at::Tensor want = kernels::RowKlReference(t.to(at::kDouble), l.to(at::kDouble));
      EXPECT_LT(MaxScaledError(kernels::RowKl(t, l), want, t.to(at::kDouble).logsumexp(1)),
                kTol);
    }
  }
  const at::Tensor half = base.to(at::kHalf);
  const at::Tensor targets = at::randint(0, v, {n}, Cuda(at::kLong));
  EXPECT_LT(MaxScaledError(kernels::TokenLogProbs(half, targets),
                           kernels::TokenLogProbsReference(half.to(at::kDouble), targets),
                           half.to(at::kDouble).logsumexp(1)),
            kTol);
  // fp64 logits stay on the ATen path, in fp64.
  EXPECT_FALSE(kernels::cuda::TokenLogProbsSupported(base.to(at::kDouble), targets));
  EXPECT_EQ(kernels::TokenLogProbs(base.to(at::kDouble), targets).scalar_type(), at::kDouble);
  EXPECT_EQ(kernels::RowKl(base, other.to(at::kDouble)).scalar_type(), at::kDouble);
}

TEST(CudaLogitsTest, MinusInfinityLogits) {
  HYB_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(5);
  const int64_t v = 4099;
  at::Tensor x = RandomLogits(4, v, at::kFloat);
  x.narrow(1, 100, 2000).select(0, 0).fill_(-kInf);  // row 0: a masked range
  x[1][17] = -kInf;                                   // row 1: the target masked
  x[2].fill_(-kInf);                                  // row 2: everything masked
  x[3][0] = -kInf;                                    // row 3: the first element masked
  const at::Tensor targets = at::tensor({int64_t{5}, int64_t{17}, int64_t{0}, int64_t{9}})
                                 .to(at::kCUDA);
  for (at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(type));
    const at::Tensor xt = x.to(type);
    const at::Tensor got = kernels::TokenLogProbs(xt, targets).cpu();
    const at::Tensor want =
        kernels::TokenLogProbsReference(xt.to(at::kDouble), targets).cpu();
    EXPECT_NEAR(got[0].item<double>(), want[0].item<double>(), 1e-4);
    EXPECT_EQ(got[1].item<double>(), -kInf);
    EXPECT_TRUE(std::isnan(got[2].item<double>()));
    EXPECT_NEAR(got[3].item<double>(), want[3].item<double>(), 1e-4);

    // Teacher x: masked tokens count 0; a student that masks what the teacher does not: +inf.
    at::Tensor student = (x + 0.5 * at::randn({4, v}, Cuda(at::kFloat)));
    student[3][0] = 1.0;
    student[1][17] = -kInf;
    student[0][3000] = -kInf;
    const at::Tensor kl = kernels::RowKl(xt, student.to(type)).cpu();
    const at::Tensor kl_want =
        kernels::RowKlReference(xt.to(at::kDouble), student.to(type).to(at::kDouble)).cpu();
    EXPECT_EQ(kl[0].item<double>(), kInf);
    EXPECT_NEAR(kl[1].item<double>(), kl_want[1].item<double>(), 1e-4);
    EXPECT_TRUE(std::isnan(kl[2].item<double>()));
    EXPECT_NEAR(kl[3].item<double>(), kl_want[3].item<double>(), 1e-4);
  }
}

TEST(CudaLogitsTest, TargetsOutsideTheVocabulary) {
  HYB_REQUIRE_CUDA_KERNELS();
  const at::Tensor x = RandomLogits(3, 100, at::kBFloat16);
  // On the device: NaN for that row only, no error and no sync.
  const at::Tensor got =
      kernels::TokenLogProbs(x, at::tensor({int64_t{0}, int64_t{100}, int64_t{-1}}).to(at::kCUDA))
          .cpu();
  EXPECT_FALSE(std::isnan(got[0].item<double>()));
  EXPECT_TRUE(std::isnan(got[1].item<double>()));
  EXPECT_TRUE(std::isnan(got[2].item<double>()));
  // On the host: checked before the launch.
  EXPECT_THROW((void)kernels::TokenLogProbs(x, at::tensor({int64_t{0}, int64_t{1}, int64_t{100}})),
               c10::Error);
  // Host targets in range are copied and used.
  const at::Tensor host = at::tensor({int64_t{4}, int64_t{5}, int64_t{99}});
  EXPECT_TRUE(
      at::equal(kernels::TokenLogProbs(x, host), kernels::TokenLogProbs(x, host.to(at::kCUDA))));
}

TEST(CudaLogitsTest, BlockSizeCoversTheRow) {
  EXPECT_EQ(kernels::cuda::LogitsScoreBlockSize(1), 32);
  EXPECT_EQ(kernels::cuda::LogitsScoreBlockSize(7), 32);
  EXPECT_EQ(kernels::cuda::LogitsScoreBlockSize(2048), 64);
  EXPECT_EQ(kernels::cuda::LogitsScoreBlockSize(128256), 512);
}

#else  // HYB_WITH_CUDA

// The kernels (kernels/cuda/) exist only in a -DHYB_CUDA=ON build.
TEST(CudaLogitsTest, NeedsTheCudaBuild) { GTEST_SKIP() << "built without HYB_CUDA"; }

#endif  // HYB_WITH_CUDA

}  // namespace
}  // namespace hyb
