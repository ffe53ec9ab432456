#include "hyb/worker/candidate_evaluator.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <map>
#include <utility>
#include <vector>

#include "hyb/worker/attention_mixer.h"
#include "hyb/worker/linear_mixer.h"
#include "testing/temp_dir.h"
#include "worker/test_model.h"

namespace hyb::worker {
namespace {

using hyb::testing::TempDir;

// Character tokenizer: a=0 b=1 c=2 ' '=3 '\n'=4, <s>=5 prepended by the template.
std::shared_ptr<const Tokenizer> CharTokenizer() {
  return *Tokenizer::FromJson(hyb::testing::CharTokenizerJson(), "char.json");
}

constexpr int64_t kLayers = 4;

// A greedy round's candidates: for every layer l of `layers` not in `base`, base plus l, sorted.
std::vector<std::pair<int64_t, std::vector<int64_t>>> RoundCandidates(
    const std::vector<int64_t>& base, int64_t layers) {
  std::vector<std::pair<int64_t, std::vector<int64_t>>> out;
  for (int64_t l = 0; l < layers; ++l) {
    if (std::count(base.begin(), base.end(), l)) continue;
    std::vector<int64_t> cand = base;
    cand.push_back(l);
    std::sort(cand.begin(), cand.end());
    out.emplace_back(l, std::move(cand));
  }
  return out;
}

std::unique_ptr<DecoderModel> LoadTeacher(const TempDir& dir, int64_t layers = kLayers) {
  hyb::testing::TinyModelSpec spec;
  spec.vocab = 6;
  spec.layers = layers;
  hyb::testing::WriteTinyModel(dir.path(), spec, 21);
  auto m = DecoderModel::Load(dir.path(), {});
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return std::move(m).value();
}

std::vector<std::shared_ptr<const TokenMixer>> Mixers(const DecoderModel& teacher) {
  std::vector<std::shared_ptr<const TokenMixer>> out;
  LinearMixerOptions o;
  for (int64_t l = 0; l < teacher.num_layers(); ++l) {
    const auto& att = dynamic_cast<const SoftmaxAttentionMixer&>(teacher.mixer(l));
    out.push_back(LinearMixer::Transfer(att.shape(), att.weights(), o));
  }
  return out;
}

std::vector<TaskExample> Examples(TaskKind kind, const DecoderModel& teacher) {
  const std::vector<std::string> texts = {"abc ab", "cab\nba", "a b c",  "bbca",
                                          "ccab a", "ba",      "abcabc", "c c"};
  std::vector<TaskExample> ex;
  for (size_t i = 0; i < texts.size(); ++i) {
    TaskExample e;
    if (kind == TaskKind::kMultipleChoice) {
      e.context = texts[i];
      e.choices = {" a", " bc", "cab"};
      e.label = static_cast<int64_t>(i % 3);
    } else if (kind == TaskKind::kGenerate) {
      e.prompt = texts[i];
      // The answer is the teacher's own greedy continuation for half the examples, so scores
      // are not all zero and candidates lose some.
      const auto prompt = CharTokenizer()->Encode(texts[i], true);
      const auto out = *GreedyOf(teacher)(prompt, 3, {});
      e.answer = i % 2 == 0 ? CharTokenizer()->Decode(out) : "zz";
      e.stop = {"\n"};
    } else {
      e.text = texts[i];
    }
    ex.push_back(e);
  }
  return ex;
}

// Batches of at most 20 tokens (generate: prompt plus 3 new tokens per row): the 8 examples
// (24 sequences for multiple_choice) need several, and padding is exercised. `batch_tokens` 0:
// one sequence at a time (the per-example path).
std::unique_ptr<CandidateEvaluator> Make(const TempDir& dir, TaskKind kind, bool cache,
                                         int64_t batch_tokens = 20,
                                         int64_t cache_bytes = kAutoPrefixCacheBytes,
                                         int64_t layers = kLayers) {
  auto teacher = LoadTeacher(dir, layers);
  auto mixers = Mixers(*teacher);
  auto examples = Examples(kind, *teacher);
  EvaluatorOptions o;
  o.kind = kind;
  o.prefix_cache = cache;
  o.prefix_cache_max_bytes = cache_bytes;
  o.kl_examples = 6;
  o.scoring.max_new_tokens = 3;
  o.scoring.batch_tokens = batch_tokens;
  o.scoring.logits_chunk_bytes = 5 * 6 * 8;  // 5 rows of 6 doubles: batches span chunks
  auto e = CandidateEvaluator::Create(std::move(teacher), std::move(mixers), CharTokenizer(),
                                      std::move(examples), o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return std::move(e).value();
}

void ExpectSame(const CandidateEvaluation& a, const CandidateEvaluation& b,
                const std::string& what) {
  EXPECT_EQ(a.score.value, b.score.value) << what;
  EXPECT_EQ(a.score.per_example, b.score.per_example) << what;
  ASSERT_TRUE(a.kl && b.kl) << what;
  EXPECT_EQ(*a.kl, *b.kl) << what;
}

// Batched against per-example: accuracy-type scores exactly, losses and KL within 1e-6
// relative (floating-point reassociation only).
void ExpectClose(const CandidateEvaluation& batched, const CandidateEvaluation& one,
                 const std::string& what) {
  const bool exact = batched.score.metric != "loss" && batched.score.metric != "kl";
  ASSERT_EQ(batched.score.per_example.size(), one.score.per_example.size()) << what;
  for (size_t i = 0; i < one.score.per_example.size(); ++i) {
    const double want = one.score.per_example[i];
    EXPECT_NEAR(batched.score.per_example[i], want, exact ? 0.0 : 1e-6 * std::abs(want))
        << what << " example " << i;
  }
  EXPECT_NEAR(batched.score.value, one.score.value, exact ? 0.0 : 1e-6 * std::abs(one.score.value))
      << what;
  ASSERT_TRUE(batched.kl && one.kl) << what;
  EXPECT_NEAR(*batched.kl, *one.kl, 1e-6 * std::abs(*one.kl)) << what;
}

// Two greedy rounds with and without prefix caching, batched: identical per-example scores and
// KL, and candidates at layer l run only layers l..L-1 over their batches. Both equal scoring
// one sequence at a time.
TEST(CandidateEvaluatorTest, PrefixCacheGivesIdenticalScoresInFewerLayerPasses) {
  at::set_num_threads(1);
  for (TaskKind kind :
       {TaskKind::kLm, TaskKind::kMultipleChoice, TaskKind::kGenerate, TaskKind::kKlToTeacher}) {
    const std::string name = TaskKindName(kind);
    TempDir dir;
    auto cached = Make(dir, kind, true);
    auto plain = Make(dir, kind, false);
    auto one = Make(dir, kind, false, /*batch_tokens=*/0);
    for (const std::vector<int64_t>& base : {std::vector<int64_t>{}, std::vector<int64_t>{1}}) {
      auto b1 = cached->EvaluateAndCache(base);
      auto b2 = plain->Evaluate(base);
      auto b3 = one->Evaluate(base);
      ASSERT_TRUE(b1.ok() && b2.ok() && b3.ok())
          << b1.status().ToString() << b2.status().ToString() << b3.status().ToString();
      ExpectSame(*b1, *b2, name + " base");
      ExpectClose(*b2, *b3, name + " base, per example");
      // Round 1 records the teacher afresh; round 2's base {1} was recorded as a round-1
      // candidate and is promoted without running anything.
      if (base.empty()) {
        EXPECT_GT(b1->layer_passes, 0);
      } else {
        EXPECT_EQ(b1->layer_passes, 0) << name;
      }
      EXPECT_GT(cached->cache_bytes(), 0);
      int64_t with = 0, without = 0;
      for (const auto& [l, cand] : RoundCandidates(base, kLayers)) {
        auto c1 = cached->Evaluate(cand, /*keep_recording=*/true);
        auto c2 = plain->Evaluate(cand);
        auto c3 = one->Evaluate(cand);
        ASSERT_TRUE(c1.ok() && c2.ok() && c3.ok())
            << c1.status().ToString() << c2.status().ToString() << c3.status().ToString();
        ExpectSame(*c1, *c2, name + " layer " + std::to_string(l));
        ExpectClose(*c2, *c3, name + " layer " + std::to_string(l) + ", per example");
        // Layer passes count per sequence: batching does not change them (generation's
        // finished rows keep running in their batch, so there they may only grow).
        if (kind == TaskKind::kGenerate) {
          EXPECT_GE(c2->layer_passes, c3->layer_passes) << name;
        } else {
          EXPECT_EQ(c2->layer_passes, c3->layer_passes) << name;
        }
        // Round 2 (base {1}): layer 0 on top of {1} equals round 1's candidate {0} below layer
        // 1, whose recording it starts from.
        EXPECT_EQ(c1->first_layer, !base.empty() && l < base[0] ? base[0] : l);
        EXPECT_EQ(c2->first_layer, 0);
        if (l > 0) {
          EXPECT_LT(c1->layer_passes, c2->layer_passes) << name << " layer " << l;
        }
        with += c1->layer_passes;
        without += c2->layer_passes;
      }
      EXPECT_LT(with, without) << name;
    }
  }
}

// The evaluator's uncached scores equal scoring a hybrid built by hand with the library's own
// adapters (KV-cache greedy decoding, full forwards).
TEST(CandidateEvaluatorTest, MatchesHandBuiltHybrid) {
  TempDir dir;
  for (TaskKind kind : {TaskKind::kLm, TaskKind::kGenerate}) {
    auto eval = Make(dir, kind, false);
    TempDir other;
    auto hybrid = LoadTeacher(other);
    const auto examples = Examples(kind, *hybrid);
    const auto mixers = Mixers(*hybrid);
    hybrid->SetMixer(0, mixers[0]);
    hybrid->SetMixer(2, mixers[2]);
    ScoringOptions so;
    so.max_new_tokens = 3;
    so.batch_tokens = 0;
    auto want = kind == TaskKind::kLm
                    ? ScoreLm(LogitsOf(*hybrid), *CharTokenizer(), examples, so)
                    : ScoreGenerate(RowByRow(GreedyOf(*hybrid)), *CharTokenizer(), examples, so);
    auto got = eval->Evaluate({0, 2});
    ASSERT_TRUE(want.ok() && got.ok());
    // The evaluator batches (fp32 reassociation: within 1e-6 relative), the hand-built path
    // scores one sequence at a time.
    for (size_t i = 0; i < want->per_example.size(); ++i) {
      EXPECT_NEAR(got->score.per_example[i], want->per_example[i],
                  1e-6 * std::abs(want->per_example[i]))
          << i;
    }
    // The teacher's KL to itself is zero.
    EXPECT_NEAR(*eval->Evaluate({})->kl, 0.0, 1e-12);
  }
}

// lm and kl_to_teacher tasks take the KL tie-break from their own batches: it equals the KL
// scorer's on the first kl_examples texts (a hand-built hybrid, other batches: within 1e-6
// relative), and an uncached evaluation runs the task's sequences through every layer once,
// with no batches for the KL texts.
TEST(CandidateEvaluatorTest, KlTieBreakComesFromTheTaskPass) {
  at::set_num_threads(1);
  for (TaskKind kind : {TaskKind::kLm, TaskKind::kKlToTeacher}) {
    const std::string name = TaskKindName(kind);
    TempDir dir;
    auto eval = Make(dir, kind, /*cache=*/false);
    TempDir other;
    auto teacher = LoadTeacher(other);
    const auto mixers = Mixers(*teacher);
    auto examples = Examples(kind, *teacher);
    examples.resize(6);  // Make's kl_examples
    TempDir third;
    auto hybrid = LoadTeacher(third);
    hybrid->SetMixer(1, mixers[1]);
    hybrid->SetMixer(3, mixers[3]);
    ScoringOptions so;
    so.batch_tokens = 0;
    const auto want = ScoreKlToTeacher(LogitsOf(*hybrid), LogitsOf(*teacher), *CharTokenizer(),
                                       examples, so);
    ASSERT_TRUE(want.ok()) << want.status().ToString();
    const auto got = eval->Evaluate({1, 3});
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    ASSERT_TRUE(got->kl.has_value()) << name;
    EXPECT_GT(want->value, 1e-4) << name << ": the hybrid differs from the teacher";
    EXPECT_NEAR(*got->kl, want->value, 1e-6 * want->value) << name;
    EXPECT_EQ(got->layer_passes, 8 * kLayers) << name << ": 8 texts through every layer";
    EXPECT_EQ(*eval->Evaluate({})->kl, 0.0) << name;
  }
}

// The examples (and the KL tie-break's texts) are encoded once, in Create: across a search's
// worth of evaluations, cached and uncached, the tokenizer's Encode runs once per text. Every
// evaluation's scores equal the scorers' own from the examples (which encode them afresh) on a
// hand-built hybrid with the same batches, bit for bit.
TEST(CandidateEvaluatorTest, EncodesTheExamplesOnce) {
  at::set_num_threads(1);
  for (TaskKind kind :
       {TaskKind::kLm, TaskKind::kMultipleChoice, TaskKind::kGenerate, TaskKind::kKlToTeacher}) {
    const std::string name = TaskKindName(kind);
    TempDir dir;
    auto eval = Make(dir, kind, true);
    // 8 examples; multiple_choice: the template's prefix, 8 contexts, 24 (context, choice)
    // texts and the 6 KL contexts; the other kinds' KL texts are their encoded examples.
    const int64_t encodes = kind == TaskKind::kMultipleChoice ? 1 + 8 + 24 + 6 : 8;
    EXPECT_EQ(eval->tokenizer_calls(), encodes) << name;
    TempDir other;
    auto teacher = LoadTeacher(other);
    const auto examples = Examples(kind, *teacher);
    const auto mixers = Mixers(*teacher);
    ScoringOptions so;
    so.max_new_tokens = 3;
    so.batch_tokens = 20;
    so.logits_chunk_bytes = 5 * 6 * 8;
    TempDir third;
    auto hybrid = LoadTeacher(third);
    int evaluations = 0;
    // Two greedy rounds: base {}, its candidates, base {1}, its candidates.
    for (const std::vector<int64_t>& base : {std::vector<int64_t>{}, std::vector<int64_t>{1}}) {
      std::vector<std::vector<int64_t>> models = {base};
      for (const auto& [l, cand] : RoundCandidates(base, kLayers)) {
        models.push_back(cand);
      }
      for (size_t m = 0; m < models.size(); ++m) {
        auto got = m == 0 ? eval->EvaluateAndCache(models[m])
                          : eval->Evaluate(models[m], /*keep_recording=*/true);
        ASSERT_TRUE(got.ok()) << got.status().ToString();
        ++evaluations;
        for (int64_t l = 0; l < kLayers; ++l) {
          const bool linear = std::count(models[m].begin(), models[m].end(), l) > 0;
          hybrid->SetMixer(l, linear ? mixers[static_cast<size_t>(l)] : teacher->shared_mixer(l));
        }
        StatusOr<TaskScore> want = InvalidArgument("unset");
        switch (kind) {
          case TaskKind::kLm:
            want = ScoreLm(LogitsOf(*hybrid), *CharTokenizer(), examples, so);
            break;
          case TaskKind::kMultipleChoice:
            want = ScoreMultipleChoice(LogitsOf(*hybrid), *CharTokenizer(), examples, so);
            break;
          case TaskKind::kGenerate:
            want = ScoreGenerate(BatchGreedyOf(*hybrid), *CharTokenizer(), examples, so);
            break;
          case TaskKind::kKlToTeacher:
            want = ScoreKlToTeacher(LogitsOf(*hybrid), LogitsOf(*teacher), *CharTokenizer(),
                                    examples, so);
            break;
        }
        ASSERT_TRUE(want.ok()) << want.status().ToString();
        EXPECT_EQ(got->score.value, want->value) << name << " model " << m;
        EXPECT_EQ(got->score.per_example, want->per_example) << name << " model " << m;
        EXPECT_EQ(got->score.details, want->details) << name << " model " << m;
      }
    }
    EXPECT_EQ(evaluations, 2 + kLayers + kLayers - 1);
    EXPECT_EQ(eval->tokenizer_calls(), encodes) << name << ": encoded again";
  }
}

// An example the scorers cannot score fails Create, naming it, before any evaluation.
TEST(CandidateEvaluatorTest, UnscorableExamplesFailCreate) {
  TempDir dir;
  auto teacher = LoadTeacher(dir);
  auto mixers = Mixers(*teacher);
  auto examples = Examples(TaskKind::kLm, *teacher);
  examples[3].text = "";  // <s> alone: nothing to predict
  auto e = CandidateEvaluator::Create(std::move(teacher), std::move(mixers), CharTokenizer(),
                                      examples, {TaskKind::kLm});
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("lm example 3 has fewer than two tokens"), std::string::npos)
      << e.status().ToString();
}

// The prefix cache's budget: "auto" is 2 GiB on the CPU and half the free memory of a CUDA
// device; an explicit budget is kept, and 0 records nothing without changing any score.
TEST(CandidateEvaluatorTest, PrefixCacheBudget) {
  EXPECT_EQ(AutoPrefixCacheBytes(std::nullopt), int64_t{2} << 30);
  EXPECT_EQ(AutoPrefixCacheBytes(int64_t{100} << 30), int64_t{50} << 30);
  EXPECT_EQ(AutoPrefixCacheBytes(0), 0);
  TempDir dir;
  auto automatic = Make(dir, TaskKind::kLm, true);
  EXPECT_EQ(automatic->prefix_cache_budget(), int64_t{2} << 30);  // this build runs on the CPU
  auto none = Make(dir, TaskKind::kLm, true, 20, /*cache_bytes=*/0);
  EXPECT_EQ(none->prefix_cache_budget(), 0);
  auto a = automatic->EvaluateAndCache({});
  auto b = none->EvaluateAndCache({});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_GT(automatic->cache_bytes(), 0);
  EXPECT_EQ(none->cache_bytes(), 0);
  auto ca = automatic->Evaluate({2});
  auto cb = none->Evaluate({2});
  ASSERT_TRUE(ca.ok() && cb.ok());
  EXPECT_EQ(ca->first_layer, 2);
  EXPECT_EQ(cb->first_layer, 0);  // an empty cache: every batch runs from layer 0
  EXPECT_GT(cb->layer_passes, ca->layer_passes);
  ExpectSame(*ca, *cb, "budget 0");
}

// A whole greedy search of six layers, winners in a fixed order, against the same evaluations
// uncached: identical scores; each round's winner becomes the base without a pass; a candidate
// below the last winner's layer starts at that layer (its previous round's recording equals it up
// to there), any other at its own layer, so it runs exactly (rows of every batch) x (L - start)
// fewer layer passes than uncached. With a budget that holds only part of the recordings the
// scores stay identical and the search costs between the two.
TEST(CandidateEvaluatorTest, GreedySearchReusesEarlierRoundsRecordings) {
  at::set_num_threads(1);
  constexpr int64_t kSix = 6;
  const std::vector<int64_t> winners = {4, 1, 5, 0, 3, 2};
  for (TaskKind kind : {TaskKind::kLm, TaskKind::kGenerate}) {
    const std::string name = TaskKindName(kind);
    TempDir dir;
    auto plain = Make(dir, kind, false, 20, kAutoPrefixCacheBytes, kSix);
    // Every forward's rows (main and KL batches), from the teacher's uncached prefill work: the
    // candidate at layer 1 of round 1 saves exactly one layer per row.
    auto search = [&](CandidateEvaluator& cached, bool exact) -> std::pair<int64_t, int64_t> {
      int64_t with = 0, without = 0, rows = 0;
      std::vector<int64_t> base;
      int64_t last_winner = -1;
      for (int64_t round = 0; round < kSix; ++round) {
        auto b = cached.EvaluateAndCache(base);
        EXPECT_TRUE(b.ok()) << b.status().ToString();
        if (round > 0 && exact) EXPECT_EQ(b->layer_passes, 0) << name << " round " << round;
        with += b->layer_passes;
        without += plain->Evaluate(base)->layer_passes;
        for (const auto& [l, cand] : RoundCandidates(base, kSix)) {
          auto c1 = cached.Evaluate(cand, /*keep_recording=*/true);
          auto c2 = plain->Evaluate(cand);
          EXPECT_TRUE(c1.ok() && c2.ok());
          const std::string what = name + " round " + std::to_string(round) + " layer " +
                                   std::to_string(l);
          ExpectSame(*c1, *c2, what);
          with += c1->layer_passes;
          without += c2->layer_passes;
          if (!exact) {
            EXPECT_LE(c1->layer_passes, c2->layer_passes) << what;
            continue;
          }
          const int64_t start = l < last_winner ? last_winner : l;
          EXPECT_EQ(c1->first_layer, start) << what;
          if (round == 0 && l == 1) rows = c2->layer_passes - c1->layer_passes;
          if (rows > 0) EXPECT_EQ(c2->layer_passes - c1->layer_passes, rows * start) << what;
        }
        last_winner = winners[static_cast<size_t>(round)];
        base.push_back(last_winner);
        std::sort(base.begin(), base.end());
      }
      if (exact) EXPECT_GT(rows, 0) << name;
      return {with, without};
    };
    auto full = Make(dir, kind, true, 20, kAutoPrefixCacheBytes, kSix);
    const auto [with_full, without] = search(*full, true);
    // A budget of two bases: the candidates share one base's worth of boundaries.
    const int64_t base_bytes = [&] {
      auto probe = Make(dir, kind, true, 20, kAutoPrefixCacheBytes, kSix);
      EXPECT_TRUE(probe->EvaluateAndCache({}).ok());
      return probe->cache_bytes();
    }();
    auto tight = Make(dir, kind, true, 20, 2 * base_bytes, kSix);
    const auto [with_tight, without_again] = search(*tight, false);
    EXPECT_EQ(without, without_again);
    EXPECT_LT(with_full, with_tight) << name;
    EXPECT_LT(with_tight, without) << name;
    std::cout << "[search passes] " << name << " cached " << with_full << " tight budget "
              << with_tight << " uncached " << without << "\n";
  }
}

// Under a budget that holds one or two boundaries per candidate, a candidate's recording keeps
// first the boundaries at the remaining layers that scored best in the previous round. Each round
// here commits the previous round's best remaining layer w, so a candidate below w whose pass ran
// through w (it started below w) starts at w next round, as with room for every recording, where
// evenly spaced boundaries would miss w; scores stay identical to uncached ones.
TEST(CandidateEvaluatorTest, TightBudgetKeepsTheLikelyWinnersBoundary) {
  at::set_num_threads(1);
  constexpr int64_t kSix = 6;
  TempDir dir;
  auto plain = Make(dir, TaskKind::kLm, false, 20, kAutoPrefixCacheBytes, kSix);
  const int64_t base_bytes = [&] {
    auto probe = Make(dir, TaskKind::kLm, true, 20, kAutoPrefixCacheBytes, kSix);
    EXPECT_TRUE(probe->EvaluateAndCache({}).ok());
    return probe->cache_bytes();
  }();
  // The base's six boundaries, about five carried ones and one or two for each candidate.
  auto cached = Make(dir, TaskKind::kLm, true, 20, 3 * base_bytes, kSix);
  std::vector<int64_t> base;
  std::map<int64_t, double> previous;  // the last round's scores (loss: lower is better)
  std::map<int64_t, int64_t> started;  // the last round's first layers
  int64_t last_winner = -1, checked = 0;
  for (int64_t round = 0; round < kSix - 1; ++round) {
    ASSERT_TRUE(cached->EvaluateAndCache(base).ok());
    std::map<int64_t, double> scores;
    std::map<int64_t, int64_t> starts;
    for (const auto& [l, cand] : RoundCandidates(base, kSix)) {
      auto c1 = cached->Evaluate(cand, /*keep_recording=*/true);
      auto c2 = plain->Evaluate(cand);
      ASSERT_TRUE(c1.ok() && c2.ok());
      const std::string what = "round " + std::to_string(round) + " layer " + std::to_string(l);
      ExpectSame(*c1, *c2, what);
      ASSERT_FALSE(c1->score.higher_is_better) << what;
      scores[l] = c1->score.value;
      starts[l] = c1->first_layer;
      // From the third round on, the last winner was the previous round's best remaining layer.
      if (round >= 2 && l < last_winner && started.at(l) < last_winner) {
        EXPECT_EQ(c1->first_layer, last_winner) << what;
        ++checked;
      }
    }
    // The winner: the best remaining layer of the previous round (the first round: its own best),
    // ties to the lower layer.
    const std::map<int64_t, double>& rank = round == 0 ? scores : previous;
    int64_t winner = -1;
    for (const auto& [l, v] : scores) {
      if (winner < 0 || rank.at(l) < rank.at(winner)) winner = l;
    }
    previous = scores;
    started = starts;
    last_winner = winner;
    base.push_back(winner);
    std::sort(base.begin(), base.end());
  }
  EXPECT_GT(checked, 0) << "no round had a candidate below the last winner";
}

TEST(CandidateEvaluatorTest, BadCandidatesAreRejected) {
  TempDir dir;
  auto teacher = LoadTeacher(dir);
  auto mixers = Mixers(*teacher);
  mixers[3] = nullptr;
  auto examples = Examples(TaskKind::kLm, *teacher);
  auto e = CandidateEvaluator::Create(std::move(teacher), std::move(mixers), CharTokenizer(),
                                      examples, {TaskKind::kLm});
  ASSERT_TRUE(e.ok());
  EXPECT_NE((*e)->Evaluate({3}).status().message().find("layer 3 has no distilled mixer"),
            std::string::npos);
  EXPECT_EQ((*e)->Evaluate({7}).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace hyb::worker


