// The CPU path of the logits scores: bit-identical to the ATen formulas the scorers used before
// (worker/src/task_scoring.cc), and within rounding of a plain fp64 loop written here.
#include "hyb/kernels/logits.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace hyb::kernels {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Logits with the spread of a language model's: N(0, 3^2) plus a per-row offset.
at::Tensor RandomLogits(int64_t n, int64_t v, at::ScalarType type, uint64_t seed) {
  torch::manual_seed(seed);
  const at::Tensor x = 3 * at::randn({n, v}, at::kDouble) + 5 * at::randn({n, 1}, at::kDouble);
  return x.to(type);
}

at::Tensor RandomTargets(int64_t n, int64_t v, uint64_t seed) {
  torch::manual_seed(seed);
  return at::randint(0, v, {n}, at::kLong);
}

// The formulas as task_scoring.cc wrote them.
at::Tensor TodayLogProbs(const at::Tensor& logits, const at::Tensor& targets) {
  const at::ScalarType math = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor x = logits.to(math);
  return x.gather(1, targets.unsqueeze(1)).squeeze(1) - x.logsumexp(1);
}

at::Tensor TodayKl(const at::Tensor& teacher, const at::Tensor& logits) {
  const at::ScalarType math =
      logits.scalar_type() == at::kDouble || teacher.scalar_type() == at::kDouble ? at::kDouble
                                                                                 : at::kFloat;
  const at::Tensor q = at::log_softmax(logits.to(math), 1);
  const at::Tensor p = at::log_softmax(teacher.to(math), 1);
  return (p.exp() * (p - q)).sum(1);
}

// Independent fp64 loops over the rows' values as doubles.
double LogSumExp(const std::vector<double>& x) {
  double m = -kInf;
  for (double v : x) m = std::max(m, v);
  if (m == -kInf) return -kInf;
  double s = 0;
  for (double v : x) s += std::exp(v - m);
  return m + std::log(s);
}

std::vector<double> Row(const at::Tensor& x, int64_t r) {
  const at::Tensor row = x[r].to(at::kDouble).contiguous();
  return {row.data_ptr<double>(), row.data_ptr<double>() + row.numel()};
}

double LoopLogProb(const at::Tensor& logits, const at::Tensor& targets, int64_t r) {
  const std::vector<double> x = Row(logits, r);
  return x[static_cast<size_t>(targets[r].item<int64_t>())] - LogSumExp(x);
}

double LoopKl(const at::Tensor& teacher, const at::Tensor& logits, int64_t r) {
  const std::vector<double> t = Row(teacher, r), l = Row(logits, r);
  const double lse_t = LogSumExp(t), lse_l = LogSumExp(l);
  double kl = 0;
  for (size_t j = 0; j < t.size(); ++j) {
    if (t[j] == -kInf) continue;
    kl += std::exp(t[j] - lse_t) * ((t[j] - lse_t) - (l[j] - lse_l));
  }
  return kl;
}

TEST(LogitsTest, TokenLogProbsIsTodaysFormulaBitForBit) {
  for (at::ScalarType type : {at::kDouble, at::kFloat, at::kBFloat16, at::kHalf}) {
    for (int64_t v : {1, 7, 8, 33, 1000}) {
      const at::Tensor logits = RandomLogits(5, v, type, 1);
      const at::Tensor targets = RandomTargets(5, v, 2);
      const at::Tensor got = TokenLogProbs(logits, targets);
      EXPECT_EQ(got.scalar_type(), type == at::kDouble ? at::kDouble : at::kFloat);
      EXPECT_TRUE(at::equal(got, TodayLogProbs(logits, targets)))
          << c10::toString(type) << " V=" << v;
    }
  }
}

TEST(LogitsTest, RowKlIsTodaysFormulaBitForBit) {
  for (at::ScalarType type : {at::kDouble, at::kFloat, at::kBFloat16}) {
    for (int64_t v : {1, 7, 33, 1000}) {
      const at::Tensor teacher = RandomLogits(4, v, type, 3);
      const at::Tensor logits = RandomLogits(4, v, type, 4);
      const at::Tensor got = RowKl(teacher, logits);
      EXPECT_EQ(got.scalar_type(), type == at::kDouble ? at::kDouble : at::kFloat);
      EXPECT_TRUE(at::equal(got, TodayKl(teacher, logits))) << c10::toString(type) << " V=" << v;
    }
  }
}

TEST(LogitsTest, MatchesAnFp64LoopWithinRounding) {
  // fp64: a few ulps of |logsumexp|; fp32 math: a few fp32 ulps of it (V = 1000, |lse| ~ 15).
  for (at::ScalarType type : {at::kDouble, at::kFloat}) {
    const double tol = type == at::kDouble ? 1e-12 : 2e-5;
    const int64_t n = 6, v = 1000;
    const at::Tensor logits = RandomLogits(n, v, type, 5);
    const at::Tensor teacher = RandomLogits(n, v, type, 6);
    const at::Tensor targets = RandomTargets(n, v, 7);
    const at::Tensor logp = TokenLogProbs(logits, targets).to(at::kDouble);
    const at::Tensor kl = RowKl(teacher, logits).to(at::kDouble);
    for (int64_t r = 0; r < n; ++r) {
      EXPECT_NEAR(logp[r].item<double>(), LoopLogProb(logits, targets, r), tol);
      const double want = LoopKl(teacher, logits, r);
      EXPECT_GT(want, 0);
      EXPECT_NEAR(kl[r].item<double>(), want, tol);
    }
  }
}

TEST(LogitsTest, PrecisionFollowsTheWiderInput) {
  const at::Tensor bf = RandomLogits(2, 9, at::kBFloat16, 8);
  EXPECT_EQ(RowKl(bf, bf.to(at::kDouble)).scalar_type(), at::kDouble);
  EXPECT_EQ(RowKl(bf.to(at::kHalf), bf).scalar_type(), at::kFloat);
  EXPECT_EQ(RowKl(bf, bf.to(at::kFloat)).scalar_type(), at::kFloat);
}

TEST(LogitsTest, OneTokenVocabularyAndIdenticalRows) {
  const at::Tensor one = RandomLogits(3, 1, at::kFloat, 9);
  EXPECT_TRUE(at::equal(TokenLogProbs(one, at::zeros({3}, at::kLong)), at::zeros({3})));
  EXPECT_TRUE(at::equal(RowKl(one, one + 4), at::zeros({3})));
  const at::Tensor x = RandomLogits(2, 50, at::kFloat, 10);
  // Shift invariance: the same distribution up to an offset per row has (almost) no divergence.
  EXPECT_LT(RowKl(x, x + 7).abs().max().item<double>(), 1e-5);
  EXPECT_TRUE(at::equal(RowKl(x, x), at::zeros({2})));
}

TEST(LogitsTest, OneRowAndNoRows) {
  const at::Tensor x = RandomLogits(1, 13, at::kFloat, 11);
  const at::Tensor t = at::tensor({int64_t{12}});
  EXPECT_NEAR(TokenLogProbs(x, t)[0].item<double>(), LoopLogProb(x, t, 0), 2e-6);
  EXPECT_EQ(TokenLogProbs(x.narrow(0, 0, 0), t.narrow(0, 0, 0)).numel(), 0);
  EXPECT_EQ(RowKl(x.narrow(0, 0, 0), x.narrow(0, 0, 0)).numel(), 0);
}

TEST(LogitsTest, MinusInfinityLogits) {
  // Row 0: some tokens masked; row 1: the target is masked; row 2: every token masked.
  at::Tensor x = RandomLogits(3, 11, at::kFloat, 12);
  x[0][1] = -kInf;
  x[0][5] = -kInf;
  x[1][3] = -kInf;
  x[2].fill_(-kInf);
  const at::Tensor t = at::tensor({int64_t{2}, int64_t{3}, int64_t{0}});
  const at::Tensor logp = TokenLogProbs(x, t);
  EXPECT_NEAR(logp[0].item<double>(), LoopLogProb(x, t, 0), 2e-6);
  EXPECT_EQ(logp[1].item<double>(), -kInf);
  EXPECT_TRUE(std::isnan(logp[2].item<double>()));

  // A token the teacher rules out counts 0 (today's formula gave NaN there); one the student
  // rules out while the teacher does not makes the divergence infinite.
  at::Tensor teacher = RandomLogits(3, 11, at::kFloat, 13);
  teacher[0][4] = -kInf;
  at::Tensor student = RandomLogits(3, 11, at::kFloat, 14);
  student[0][4] = -kInf;  // both rule it out
  student[1][6] = -kInf;  // only the student does
  const at::Tensor kl = RowKl(teacher, student);
  EXPECT_NEAR(kl[0].item<double>(), LoopKl(teacher, student, 0), 2e-6);
  EXPECT_EQ(kl[1].item<double>(), kInf);
  EXPECT_NEAR(kl[2].item<double>(), LoopKl(teacher, student, 2), 2e-6);
  EXPECT_TRUE(std::isnan(RowKl(x, student)[2].item<double>()));  // no teacher distribution
}

TEST(LogitsTest, StridedRowsEqualContiguousOnes) {
  const at::Tensor wide = RandomLogits(4, 40, at::kFloat, 15);
  const at::Tensor view = wide.narrow(1, 3, 29);  // row stride 40, offset 3
  ASSERT_FALSE(view.is_contiguous());
  const at::Tensor targets = RandomTargets(4, 29, 16);
  EXPECT_TRUE(at::allclose(TokenLogProbs(view, targets),
                           TokenLogProbs(view.contiguous(), targets), 1e-6, 1e-6));
  const at::Tensor teacher = RandomLogits(4, 29, at::kFloat, 17);
  EXPECT_TRUE(
      at::allclose(RowKl(teacher, view), RowKl(teacher, view.contiguous()), 1e-6, 1e-6));
}

TEST(LogitsTest, TargetsOutsideTheVocabularyThrowWithTheRow) {
  const at::Tensor x = RandomLogits(3, 10, at::kFloat, 18);
  for (int64_t bad : {int64_t{10}, int64_t{-1}}) {
    try {
      (void)TokenLogProbs(x, at::tensor({int64_t{0}, bad, int64_t{9}}));
      ADD_FAILURE() << "no error for target " << bad;
    } catch (const c10::Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("target " + std::to_string(bad) + " of row 1 is outside the vocabulary"),
                std::string::npos)
          << what;
    }
  }
}

TEST(LogitsTest, ShapeMismatchesThrow) {
  const at::Tensor x = RandomLogits(3, 10, at::kFloat, 19);
  EXPECT_THROW((void)TokenLogProbs(x, at::zeros({2}, at::kLong)), c10::Error);
  EXPECT_THROW((void)TokenLogProbs(x.view({30}), at::zeros({30}, at::kLong)), c10::Error);
  EXPECT_THROW((void)RowKl(x, x.narrow(1, 0, 9)), c10::Error);
  EXPECT_THROW((void)TokenLogProbs(x.narrow(1, 0, 0), at::zeros({3}, at::kLong)), c10::Error);
}

}  // namespace
}  // namespace hyb::kernels
