#include "hyb/coordinator/greedy_search.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <string>

namespace hyb::coordinator {
namespace {

// A synthetic task of n examples: the model with linear layers S gets example i right unless i
// falls below the summed "damage" of its layers; so score = 1 - min(1, sum damage).
CandidateResult Evaluate(const std::vector<int64_t>& layers,
                         const std::map<int64_t, double>& damage, int n = 100) {
  double total = 0;
  for (int64_t l : layers) total += damage.at(l);
  CandidateResult r;
  for (int i = 0; i < n; ++i) r.per_example.push_back(i < total * n - 1e-9 ? 0.0 : 1.0);
  r.score = std::accumulate(r.per_example.begin(), r.per_example.end(), 0.0) / n;
  r.layer_passes = 1;
  return r;
}

GreedySearch RunSearch(GreedySearch s, const std::map<int64_t, double>& damage, int* evaluations) {
  EXPECT_TRUE(s.SetTeacher(Evaluate({}, damage)).ok());
  *evaluations = 0;
  while (!s.done()) {
    auto pending = s.Pending();
    EXPECT_FALSE(pending.empty());
    // Report in reverse order: the outcome must not depend on arrival order.
    std::reverse(pending.begin(), pending.end());
    for (const auto& c : pending) {
      EXPECT_EQ(c.id, CandidateId(c.linear_layers));
      EXPECT_TRUE(s.Report(c.id, Evaluate(c.linear_layers, damage)).ok());
      ++*evaluations;
    }
  }
  return s;
}

SearchOptions Tolerance(double t) {
  SearchOptions o;
  o.tolerance = t;
  o.bootstrap_samples = 200;
  return o;
}

TEST(GreedySearchTest, CommitsCheapestSwapsUntilPMin) {
  const std::map<int64_t, double> damage = {{0, 0.30}, {1, 0.02}, {2, 0.10}, {3, 0.05}};
  int evals = 0;
  GreedySearch s = RunSearch(*GreedySearch::Create(4, Tolerance(0.2)), damage, &evals);
  EXPECT_DOUBLE_EQ(s.p_full(), 1.0);
  EXPECT_DOUBLE_EQ(s.p_min(), 0.8);
  // Round 1 commits layer 1 (0.98), round 2 layer 3 (0.93), round 3 layer 2 (0.83); round 4's
  // only candidate (layer 0, 0.53) misses P_min.
  ASSERT_EQ(s.trajectory().size(), 4u);
  EXPECT_EQ(s.trajectory()[1].linear_layers, (std::vector<int64_t>{1}));
  EXPECT_EQ(s.trajectory()[2].linear_layers, (std::vector<int64_t>{1, 3}));
  ASSERT_TRUE(s.optimal().has_value());
  EXPECT_EQ(s.optimal()->linear_layers, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_NEAR(s.optimal()->score, 0.83, 1e-12);
  // M_best is the best hybrid, not the teacher: layer 1 alone (0.98).
  ASSERT_TRUE(s.best().has_value());
  EXPECT_EQ(s.best()->linear_layers, (std::vector<int64_t>{1}));
  EXPECT_NEAR(s.best()->score, 0.98, 1e-12);
  ASSERT_EQ(s.rounds().size(), 4u);
  EXPECT_EQ(s.rounds()[0].candidates.size(), 4u);
  EXPECT_EQ(s.rounds()[3].candidates.size(), 1u);
  EXPECT_FALSE(s.rounds()[3].committed);
  EXPECT_EQ(s.rounds()[3].best_layer, 0);
  EXPECT_EQ(evals, 4 + 3 + 2 + 1);  // L(L+1)/2 at most
  EXPECT_NE(s.stop_reason().find("misses p_min"), std::string::npos) << s.stop_reason();
  EXPECT_TRUE(s.Pending().empty());
  // Deltas are against the round's base model, not the teacher.
  const auto& r2 = s.rounds()[1];
  EXPECT_DOUBLE_EQ(r2.base_score, 0.98);
  for (const auto& c : r2.candidates) EXPECT_NEAR(c.delta, c.result.score - 0.98, 1e-12);
}

TEST(GreedySearchTest, BestTracksAnImprovementAndOptimalTheMostLinear) {
  // The teacher misses the first 10 examples; swapping layer 2 fixes them, layer 0 costs
  // examples 0-3 (invisible until layer 2 is linear), layers 1 and 3 cost half the task.
  const std::map<int64_t, double> d = {{0, 0.04}, {1, 0.5}, {2, 0.0}, {3, 0.6}};
  GreedySearch s = *GreedySearch::Create(4, Tolerance(0.1));
  CandidateResult teacher = Evaluate({}, d);
  for (int i = 0; i < 10; ++i) teacher.per_example[static_cast<size_t>(i)] = 0;
  teacher.score = 0.9;
  ASSERT_TRUE(s.SetTeacher(teacher).ok());
  auto eval = [&](const std::vector<int64_t>& layers) {
    CandidateResult r = Evaluate(layers, d);
    const bool has2 = std::count(layers.begin(), layers.end(), 2) > 0;
    // Without layer 2 linear, the first 10 examples stay wrong.
    if (!has2) {
      for (int i = 0; i < 10; ++i) r.per_example[static_cast<size_t>(i)] = 0;
    }
    r.score = std::accumulate(r.per_example.begin(), r.per_example.end(), 0.0) / 100;
    return r;
  };
  while (!s.done()) {
    for (const auto& c : s.Pending()) {
      ASSERT_TRUE(s.Report(c.id, eval(c.linear_layers)).ok());
    }
  }
  EXPECT_EQ(s.trajectory()[1].linear_layers, (std::vector<int64_t>{2}));
  EXPECT_DOUBLE_EQ(s.trajectory()[1].score, 1.0);
  EXPECT_EQ(s.best()->linear_layers, (std::vector<int64_t>{2}));
  EXPECT_EQ(s.optimal()->linear_layers, (std::vector<int64_t>{0, 2}));  // 0.96 >= 0.81
  // The improving swap's interval excludes zero: all 10 changed examples went up.
  EXPECT_GT(s.trajectory()[1].delta_ci_low, 0.0);
}

TEST(GreedySearchTest, TiesBreakByKlThenLayerIndex) {
  GreedySearch s = *GreedySearch::Create(3, Tolerance(0.5));
  CandidateResult flat;
  flat.per_example.assign(10, 1.0);
  flat.score = 1.0;
  ASSERT_TRUE(s.SetTeacher(flat).ok());
  for (const auto& c : s.Pending()) {
    CandidateResult r = flat;
    r.kl = c.layer == 0 ? 0.5 : 0.2;  // layers 1 and 2 tie on KL too
    ASSERT_TRUE(s.Report(c.id, r).ok());
  }
  EXPECT_EQ(s.rounds()[0].best_layer, 1);
  // Round 2: no KL reported for layer 0, so layer 2 (with KL) wins the score tie.
  for (const auto& c : s.Pending()) {
    CandidateResult r = flat;
    if (c.layer == 2) r.kl = 9.0;
    ASSERT_TRUE(s.Report(c.id, r).ok());
  }
  EXPECT_EQ(s.rounds()[1].best_layer, 2);
}

TEST(GreedySearchTest, StopsAtMaxLinearLayersAndHonoursEligibleLayers) {
  const std::map<int64_t, double> damage = {{0, 0.0}, {1, 0.0}, {2, 0.0}, {3, 0.0}, {4, 0.0}};
  SearchOptions o = Tolerance(0.0);
  o.max_linear_layers = 2;
  o.eligible_layers = {4, 1, 3, 1};
  int evals = 0;
  GreedySearch s = RunSearch(*GreedySearch::Create(5, o), damage, &evals);
  EXPECT_EQ(s.options().eligible_layers, (std::vector<int64_t>{1, 3, 4}));
  EXPECT_EQ(s.optimal()->linear_layers, (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(evals, 3 + 2);
  EXPECT_EQ(s.stop_reason(), "reached max_linear_layers (2)");
  for (const auto& r : s.rounds()) {
    for (const auto& c : r.candidates) EXPECT_NE(c.candidate.layer, 0);
  }
}

TEST(GreedySearchTest, LowerIsBetterUsesRelativeToleranceUpwards) {
  SearchOptions o = Tolerance(0.1);
  o.higher_is_better = false;
  GreedySearch s = *GreedySearch::Create(2, o);
  CandidateResult teacher;
  teacher.per_example = {2.0, 2.0};
  teacher.score = 2.0;
  ASSERT_TRUE(s.SetTeacher(teacher).ok());
  EXPECT_DOUBLE_EQ(s.p_min(), 2.2);
  auto loss = [](double v) {
    CandidateResult r;
    r.per_example = {v, v};
    r.score = v;
    return r;
  };
  ASSERT_TRUE(s.Report("linear_0", loss(2.3)).ok());
  ASSERT_TRUE(s.Report("linear_1", loss(2.1)).ok());
  EXPECT_EQ(s.trajectory().back().linear_layers, (std::vector<int64_t>{1}));
  ASSERT_TRUE(s.Report("linear_0_1", loss(2.25)).ok());
  EXPECT_TRUE(s.done());
  EXPECT_EQ(s.optimal()->linear_layers, (std::vector<int64_t>{1}));
  EXPECT_EQ(s.best()->linear_layers, (std::vector<int64_t>{1}));  // 2.1, the best hybrid
}

TEST(GreedySearchTest, ToleranceKeepsItsDirectionForNonPositiveScores) {
  GreedySearch s = *GreedySearch::Create(2, Tolerance(0.1));
  CandidateResult teacher;
  teacher.per_example = {-2.0};
  teacher.score = -2.0;  // e.g. a mean log-likelihood: higher is better, negative
  ASSERT_TRUE(s.SetTeacher(teacher).ok());
  EXPECT_DOUBLE_EQ(s.p_min(), -2.2);
  CandidateResult nan_result;
  nan_result.per_example = {0.0};
  nan_result.score = std::nan("");
  CandidateResult ok = teacher;
  ok.score = -2.1;
  ASSERT_TRUE(s.Report("linear_0", nan_result).ok());  // a NaN never wins a round
  ASSERT_TRUE(s.Report("linear_1", ok).ok());
  EXPECT_EQ(s.rounds()[0].best_layer, 1);
  EXPECT_TRUE(s.rounds()[0].committed);
}

TEST(GreedySearchTest, BadReportsAndOptionsAreRejected) {
  SearchOptions none;
  EXPECT_EQ(GreedySearch::Create(4, none).status().code(), StatusCode::kInvalidArgument);
  SearchOptions both = Tolerance(0.1);
  both.p_min = 0.5;
  EXPECT_EQ(GreedySearch::Create(4, both).status().code(), StatusCode::kInvalidArgument);
  SearchOptions bad_layer = Tolerance(0.1);
  bad_layer.eligible_layers = {4};
  auto st = GreedySearch::Create(4, bad_layer).status();
  EXPECT_NE(st.message().find("layer 4"), std::string::npos) << st.ToString();
  EXPECT_EQ(GreedySearch::Create(4, Tolerance(-0.1)).status().code(), StatusCode::kInvalidArgument);

  SearchOptions abs;
  abs.p_min = 0.5;
  GreedySearch s = *GreedySearch::Create(2, abs);
  CandidateResult r;
  r.per_example = {1, 0};
  r.score = 0.5;
  EXPECT_EQ(s.Report("linear_0", r).code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(s.SetTeacher(r).ok());
  EXPECT_EQ(s.SetTeacher(r).code(), StatusCode::kFailedPrecondition);
  EXPECT_DOUBLE_EQ(s.p_min(), 0.5);
  EXPECT_EQ(s.Report("linear_0_1", r).code(), StatusCode::kNotFound);
  CandidateResult short_r = r;
  short_r.per_example = {1};
  EXPECT_EQ(s.Report("linear_0", short_r).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(s.Report("linear_0", r).ok());
  CandidateResult other = r;
  other.score = 0.0;
  ASSERT_TRUE(s.Report("linear_0", other).ok());  // duplicate: ignored
  EXPECT_EQ(s.Pending().size(), 1u);
  ASSERT_TRUE(s.Report("linear_1", r).ok());
  EXPECT_EQ(s.rounds()[0].candidates[0].result.score, 0.5);
  ASSERT_TRUE(s.Report("linear_1", r).ok());  // late duplicate of a decided round
}

TEST(PairedBootstrapTest, IntervalsAreDeterministicAndCoverTheMean) {
  std::vector<double> base(200), cand(200);
  for (int i = 0; i < 200; ++i) {
    base[static_cast<size_t>(i)] = (i % 3 == 0) ? 1 : 0;
    cand[static_cast<size_t>(i)] = (i % 4 == 0) ? 1 : 0;
  }
  const double mean = (std::accumulate(cand.begin(), cand.end(), 0.0) -
                       std::accumulate(base.begin(), base.end(), 0.0)) /
                      200;
  auto a = *PairedBootstrapInterval(cand, base, 2000, 7);
  auto b = *PairedBootstrapInterval(cand, base, 2000, 7);
  EXPECT_EQ(a, b);
  EXPECT_LT(a.first, mean);
  EXPECT_GT(a.second, mean);
  // Normal approximation: sd of the mean difference is sd(d) / sqrt(n).
  double var = 0;
  for (int i = 0; i < 200; ++i) {
    const double d = cand[static_cast<size_t>(i)] - base[static_cast<size_t>(i)] - mean;
    var += d * d / 200;
  }
  const double half = 1.96 * std::sqrt(var / 200);
  EXPECT_NEAR(a.second - a.first, 2 * half, 0.2 * 2 * half);
  // Identical per-example changes: a zero-width interval at the change.
  auto c =
      *PairedBootstrapInterval(std::vector<double>(5, 0.75), std::vector<double>(5, 0.5), 100, 1);
  EXPECT_DOUBLE_EQ(c.first, 0.25);
  EXPECT_DOUBLE_EQ(c.second, 0.25);
  EXPECT_FALSE(PairedBootstrapInterval({1, 2}, {1}, 10, 0).ok());
}

TEST(GreedySearchTest, JsonHasTheReportFields) {
  const std::map<int64_t, double> damage = {{0, 0.3}, {1, 0.01}};
  int evals = 0;
  GreedySearch s = RunSearch(*GreedySearch::Create(2, Tolerance(0.05)), damage, &evals);
  const Json j = s.ToJson();
  EXPECT_EQ(j["rounds"].size(), 2u);
  EXPECT_EQ(j["rounds"][0]["best_layer"], 1);
  EXPECT_EQ(j["rounds"][0]["committed"], true);
  EXPECT_EQ(j["rounds"][1]["committed"], false);
  EXPECT_EQ(j["trajectory"].size(), 2u);
  EXPECT_EQ(j["trajectory"][1]["linear_layers"], Json({1}));
  EXPECT_EQ(j["tolerance"]["relative"], 0.05);
  EXPECT_EQ(j["rounds"][0]["candidates"][0]["delta_ci95"].size(), 2u);
}


// n examples, the first `correct` of them right: a proportion score of correct / n.
CandidateResult Hits(int64_t correct, int64_t n) {
  CandidateResult r;
  for (int64_t i = 0; i < n; ++i) r.per_example.push_back(i < correct ? 1.0 : 0.0);
  r.score = static_cast<double>(correct) / static_cast<double>(n);
  return r;
}

SearchOptions Proportion(double tolerance) {
  SearchOptions o = Tolerance(tolerance);
  o.proportion = true;
  return o;
}

// The case: teacher 110/200, tolerance 0.1, so P_min is exactly 99/200. In doubles
// (1 - 0.1) * 0.55 = 0.49500000000000005 > 0.495, and a candidate at 99/200 used to be rejected.
TEST(GreedySearchThresholdTest, NinetyNineOfTwoHundredMeetsTolerancePointOne) {
  ASSERT_GT(0.55 - 0.1 * 0.55, 99.0 / 200);  // the double arithmetic that misled the old rule
  GreedySearch s = *GreedySearch::Create(2, Proportion(0.1));
  ASSERT_TRUE(s.SetTeacher(Hits(110, 200)).ok());
  EXPECT_EQ(s.p_min_count(), 99);
  EXPECT_TRUE(s.Meets(99.0 / 200));
  EXPECT_FALSE(s.Meets(98.0 / 200));
  ASSERT_TRUE(s.Report("linear_0", Hits(99, 200)).ok());
  ASSERT_TRUE(s.Report("linear_1", Hits(98, 200)).ok());
  EXPECT_TRUE(s.rounds()[0].committed);
  ASSERT_TRUE(s.optimal().has_value());
  EXPECT_EQ(s.optimal()->linear_layers, (std::vector<int64_t>{0}));
}

// Every teacher count and tolerance (in hundredths and thousandths) against the rule in exact
// rational arithmetic: c meets P_min iff c * D >= (D - T) * c_t for tolerance T / D.
TEST(GreedySearchThresholdTest, CountsMatchExactRationalArithmeticInASweep) {
  int64_t checked = 0, boundary_hits = 0;
  for (const int64_t den : {100, 1000}) {
    for (const int64_t n : {7, 50, 200, 300, 1000}) {
      for (int64_t teacher = 0; teacher <= n; teacher += (n > 200 ? 7 : 1)) {
        for (int64_t tol = 0; tol <= den; tol += (den == 100 ? 1 : 37)) {
          const double tolerance = std::stod(std::to_string(tol) + "e-" +
                                             std::to_string(den == 100 ? 2 : 3));
          GreedySearch s = *GreedySearch::Create(1, Proportion(tolerance));
          ASSERT_TRUE(s.SetTeacher(Hits(teacher, n)).ok());
          // Least c with c * den >= (den - tol) * teacher.
          const int64_t need = ((den - tol) * teacher + den - 1) / den;
          ASSERT_EQ(s.p_min_count(), need) << teacher << "/" << n << " tolerance " << tolerance;
          ASSERT_TRUE(s.Meets(static_cast<double>(need) / static_cast<double>(n)));
          if (need > 0) {
            ASSERT_FALSE(s.Meets(static_cast<double>(need - 1) / static_cast<double>(n)));
          }
          if (need * den == (den - tol) * teacher) ++boundary_hits;  // P_min is exactly c/n
          ++checked;
        }
      }
    }
  }
  EXPECT_GT(checked, 10000);
  EXPECT_GT(boundary_hits, 500);  // the sweep exercises many exact-boundary cases
}

TEST(GreedySearchThresholdTest, AbsolutePMinInCountsAndAboveTheTeacher) {
  SearchOptions o;
  o.p_min = 0.495;
  o.proportion = true;
  GreedySearch s = *GreedySearch::Create(2, o);
  ASSERT_TRUE(s.SetTeacher(Hits(110, 200)).ok());
  EXPECT_EQ(s.p_min_count(), 99);  // 0.495 * 200 = 99 exactly, although 0.495 is no double
  // An absolute p_min above P_full, and no hybrid reaches it: M_opt is unset, not the teacher,
  // and the stop reason says so; M_best is still the best hybrid, reported as missing P_min.
  o.p_min = 0.6;
  GreedySearch high = *GreedySearch::Create(2, o);
  ASSERT_TRUE(high.SetTeacher(Hits(110, 200)).ok());
  EXPECT_EQ(high.p_min_count(), 120);
  EXPECT_FALSE(high.Meets(high.p_full()));
  ASSERT_TRUE(high.Report("linear_0", Hits(108, 200)).ok());
  ASSERT_TRUE(high.Report("linear_1", Hits(100, 200)).ok());
  EXPECT_TRUE(high.done());
  EXPECT_FALSE(high.optimal().has_value());
  ASSERT_TRUE(high.best().has_value());
  EXPECT_EQ(high.best()->linear_layers, (std::vector<int64_t>{0}));
  EXPECT_NE(high.stop_reason().find("no hybrid meets p_min"), std::string::npos)
      << high.stop_reason();
  const Json j = high.ToJson();
  EXPECT_EQ(j["hybrid_meets_p_min"], false);
  EXPECT_EQ(j["teacher_meets_p_min"], false);
  EXPECT_EQ(j["p_min_count"], 120);
  // Above 1 and below 0.
  o.p_min = 1.5;
  GreedySearch never = *GreedySearch::Create(1, o);
  ASSERT_TRUE(never.SetTeacher(Hits(200, 200)).ok());
  EXPECT_EQ(never.p_min_count(), 201);
  EXPECT_FALSE(never.Meets(1.0));
  o.p_min = -0.5;
  GreedySearch always = *GreedySearch::Create(1, o);
  ASSERT_TRUE(always.SetTeacher(Hits(3, 200)).ok());
  EXPECT_EQ(always.p_min_count(), 0);
  EXPECT_TRUE(always.Meets(0.0));
}

TEST(GreedySearchThresholdTest, ProportionValuesAreChecked) {
  GreedySearch s = *GreedySearch::Create(2, Proportion(0.1));
  CandidateResult half = Hits(1, 2);
  half.per_example[1] = 0.5;
  half.score = 0.75;
  auto st = s.SetTeacher(half);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("value 1 is 0.5"), std::string::npos) << st.ToString();
  CandidateResult wrong = Hits(1, 2);
  wrong.score = 1.0;
  EXPECT_EQ(s.SetTeacher(wrong).code(), StatusCode::kInvalidArgument);
  SearchOptions lower = Proportion(0.1);
  lower.higher_is_better = false;
  EXPECT_EQ(GreedySearch::Create(2, lower).status().code(), StatusCode::kInvalidArgument);
}

// Non-proportion scores: a score equal to P_min up to rounding meets it, one a part in 10^6
// below does not.
TEST(GreedySearchThresholdTest, NonProportionScoresMeetPMinUpToRounding) {
  GreedySearch s = *GreedySearch::Create(1, Tolerance(0.1));
  CandidateResult teacher;
  teacher.per_example = {0.3, 0.25};
  teacher.score = 0.55;  // e.g. a mean token F1
  ASSERT_TRUE(s.SetTeacher(teacher).ok());
  EXPECT_GT(s.p_min(), 0.495);  // 0.49500000000000005
  EXPECT_TRUE(s.Meets(0.495));
  EXPECT_TRUE(s.Meets(0.2 + 0.295));  // 0.49499999999999994
  EXPECT_FALSE(s.Meets(0.495 - 1e-6));
  SearchOptions loss = Tolerance(0.1);
  loss.higher_is_better = false;
  GreedySearch l = *GreedySearch::Create(1, loss);
  teacher.score = 2.0;
  ASSERT_TRUE(l.SetTeacher(teacher).ok());
  EXPECT_TRUE(l.Meets(2.2));
  EXPECT_TRUE(l.Meets(2.2 + 1e-15));
  EXPECT_FALSE(l.Meets(2.2 + 1e-6));
  EXPECT_FALSE(l.Meets(std::nan("")));
}

// Criterion confident: the same candidates, but a swap is committed only when the 95% lower
// bound of its change against the teacher stays within the tolerance.
TEST(GreedySearchCriterionTest, ConfidentStopsWhereThePointRuleWouldGoOn) {
  // 200 examples, teacher 180 right; P_min = 0.9 * 180 = 162 correct (tolerance 0.1). Layer 0
  // loses 4 examples (176: change -0.02), layer 1 loses 16 (164: meets P_min by points, but its
  // lower bound, about -0.08 - 1.96 * 0.0192 = -0.118, is beyond the allowed -0.09).
  auto eval = [](const std::vector<int64_t>& layers) {
    int64_t lost = 0;
    for (int64_t l : layers) lost += l == 0 ? 4 : 16;
    return Hits(180 - lost, 200);
  };
  for (const auto criterion : {SearchCriterion::kPoint, SearchCriterion::kConfident}) {
    SearchOptions o = Proportion(0.1);
    o.criterion = criterion;
    o.bootstrap_samples = 2000;
    GreedySearch s = *GreedySearch::Create(2, o);
    ASSERT_TRUE(s.SetTeacher(Hits(180, 200)).ok());
    while (!s.done()) {
      for (const auto& c : s.Pending()) ASSERT_TRUE(s.Report(c.id, eval(c.linear_layers)).ok());
    }
    ASSERT_TRUE(s.optimal().has_value());
    const auto& r2 = s.rounds()[1].candidates[0];
    EXPECT_EQ(r2.candidate.linear_layers, (std::vector<int64_t>{0, 1}));
    EXPECT_NEAR(r2.result.score, 160.0 / 200, 1e-12);  // misses P_min (162) either way
    EXPECT_EQ(s.optimal()->linear_layers, (std::vector<int64_t>{0}));
    // Round 1's best (layer 0, -0.02: every changed example lost, lower bound about -0.04)
    // passes both rules.
    EXPECT_TRUE(s.rounds()[0].committed);
    EXPECT_LT(s.rounds()[0].candidates[0].teacher_ci_low, -0.02);
    EXPECT_GT(s.rounds()[0].candidates[0].teacher_ci_low, -0.09);
  }
  // Only layer 1 eligible: point commits it (164 >= 162), confident does not.
  for (const auto criterion : {SearchCriterion::kPoint, SearchCriterion::kConfident}) {
    SearchOptions o = Proportion(0.1);
    o.criterion = criterion;
    o.eligible_layers = {1};
    GreedySearch s = *GreedySearch::Create(2, o);
    ASSERT_TRUE(s.SetTeacher(Hits(180, 200)).ok());
    ASSERT_TRUE(s.Report("linear_1", eval({1})).ok());
    const auto& c = s.rounds()[0].candidates[0];
    EXPECT_LT(c.teacher_ci_low, -0.09);
    EXPECT_TRUE(s.Meets(c.result.score));
    EXPECT_EQ(s.rounds()[0].committed, criterion == SearchCriterion::kPoint);
    EXPECT_EQ(s.optimal().has_value(), criterion == SearchCriterion::kPoint);
    if (criterion == SearchCriterion::kConfident) {
      EXPECT_NE(s.stop_reason().find("criterion confident"), std::string::npos)
          << s.stop_reason();
      EXPECT_NE(s.stop_reason().find("no hybrid meets p_min"), std::string::npos);
      EXPECT_EQ(s.ToJson()["criterion"], "confident");
    }
  }
  SearchOptions no_intervals = Tolerance(0.1);
  no_intervals.criterion = SearchCriterion::kConfident;
  no_intervals.bootstrap_samples = 0;
  auto st = GreedySearch::Create(2, no_intervals).status();
  EXPECT_NE(st.message().find("bootstrap_samples"), std::string::npos) << st.ToString();
  EXPECT_EQ(*ParseSearchCriterion("confident"), SearchCriterion::kConfident);
  auto bad = ParseSearchCriterion("strict").status();
  EXPECT_NE(bad.message().find("search.criterion"), std::string::npos) << bad.ToString();
}

}  // namespace
}  // namespace hyb::coordinator
