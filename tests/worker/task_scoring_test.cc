#include "hyb/worker/task_scoring.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>
#include <string>

#include "testing/temp_dir.h"
#include "worker/test_model.h"

namespace hyb::worker {
namespace {

// Character-level tokenizer: a=0 b=1 c=2 ' '=3 '\n'=4, <s>=5 prepended by the template.
std::shared_ptr<const Tokenizer> CharTokenizer() {
  return *Tokenizer::FromJson(hyb::testing::CharTokenizerJson(), "char.json");
}

// A bigram language model with hand-chosen next-token probabilities (rows: previous token).
const double kTable[6][6] = {
    /* a   */ {0.1, 0.6, 0.1, 0.1, 0.1, 0},
    /* b   */ {0.2, 0.2, 0.4, 0.1, 0.1, 0},
    /* c   */ {0.1, 0.1, 0.1, 0.2, 0.5, 0},
    /* ' ' */ {0.4, 0.3, 0.3, 0, 0, 0},
    /* \n  */ {1.0 / 3, 1.0 / 3, 1.0 / 3, 0, 0, 0},
    /* <s> */ {0.5, 0.25, 0.25, 0, 0, 0},
};

StatusOr<at::Tensor> Bigram(const at::Tensor& ids) {
  const int64_t t = ids.size(1);
  at::Tensor logits = at::empty({1, t, 6}, at::kDouble);
  for (int64_t i = 0; i < t; ++i) {
    const int64_t prev = ids[0][i].item<int64_t>();
    for (int64_t v = 0; v < 6; ++v) logits[0][i][v] = std::log(kTable[prev][v] + 1e-15);
  }
  return logits;
}

StatusOr<at::Tensor> Uniform(const at::Tensor& ids) {
  return at::zeros({1, ids.size(1), 6}, at::kDouble);
}

TEST(TaskScoringTest, LanguageModelLossIsTokenWeighted) {
  auto tok = CharTokenizer();
  std::vector<TaskExample> ex(2);
  ex[0].text = "ab";  // <s> a b: -(ln .5 + ln .6) over 2 tokens
  ex[1].text = "c";   // <s> c: -ln .25 over 1 token
  auto s = ScoreLm(Bigram, *tok, ex);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  const double nll0 = -(std::log(0.5) + std::log(0.6)), nll1 = -std::log(0.25);
  EXPECT_NEAR(s->per_example[0], nll0 / 2, 1e-9);
  EXPECT_NEAR(s->per_example[1], nll1, 1e-9);
  EXPECT_NEAR(s->value, (nll0 + nll1) / 3, 1e-9);
  EXPECT_NEAR(s->details["perplexity"].get<double>(), std::exp((nll0 + nll1) / 3), 1e-9);
  EXPECT_FALSE(s->higher_is_better);
}

TEST(TaskScoringTest, MultipleChoiceFollowsHarnessSemantics) {
  auto tok = CharTokenizer();
  std::vector<TaskExample> ex(2);
  ex[0].context = "a";
  ex[0].choices = {"b", "c"};  // ln .6 vs ln .1
  ex[0].label = 0;
  // The context's trailing space moves into the continuation: " a" vs " cc".
  // Raw: ln(.1*.4) = -3.22 beats ln(.1*.3*.1) = -5.81, so acc picks "a" (wrong);
  // per character: -3.22 / 1 vs -5.81 / 2 = -2.90, so acc_norm picks "cc" (right).
  ex[1].context = "b ";
  ex[1].choices = {"a", "cc"};
  ex[1].label = 1;
  auto s = ScoreMultipleChoice(Bigram, *tok, ex);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->per_example, (std::vector<double>{1, 0}));
  EXPECT_DOUBLE_EQ(s->value, 0.5);
  EXPECT_DOUBLE_EQ(s->details["acc_norm"].get<double>(), 1.0);
}

TEST(TaskScoringTest, GenerateCutsAtStopAndMatchesExactly) {
  auto tok = CharTokenizer();
  std::vector<TaskExample> ex(2);
  ex[0].prompt = "a";  // greedy: b (.6), c (.4), \n (.5) -> "bc"
  ex[0].answer = " bc ";
  ex[0].stop = {"\n"};
  ex[1].prompt = "b";  // greedy: c, \n -> "c"
  ex[1].answer = "x";
  ex[1].stop = {"\n"};
  ScoringOptions o;
  o.max_new_tokens = 5;
  auto s = ScoreGenerate(GreedyByFullForward(Bigram), *tok, ex, o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->per_example, (std::vector<double>{1, 0}));
  EXPECT_DOUBLE_EQ(s->value, 0.5);
  EXPECT_EQ(s->details["samples"][0]["output"], "bc");
}

// task.metric acc_norm: the same two examples, scored by the length-normalised choice; acc
// stays in details. Harness lengths are Python's len (code points), not bytes.
TEST(TaskScoringTest, MultipleChoiceMetricSelectsAccNorm) {
  auto tok = CharTokenizer();
  std::vector<TaskExample> ex(2);
  ex[0].context = "a";
  ex[0].choices = {"b", "c"};
  ex[0].label = 0;
  ex[1].context = "b ";
  ex[1].choices = {"a", "cc"};
  ex[1].label = 1;
  ScoringOptions o;
  o.metric = "acc_norm";
  auto s = ScoreMultipleChoice(Bigram, *tok, ex, o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->metric, "acc_norm");
  EXPECT_EQ(s->per_example, (std::vector<double>{1, 1}));
  EXPECT_DOUBLE_EQ(s->value, 1.0);
  EXPECT_DOUBLE_EQ(s->details["acc"].get<double>(), 0.5);
  o.metric = "f1";
  auto bad = ScoreMultipleChoice(Bigram, *tok, ex, o);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("task.metric: 'f1' is not a metric of multiple_choice"),
            std::string::npos)
      << bad.status().ToString();
  EXPECT_EQ(ChoiceLength(" cc"), 3);
  EXPECT_EQ(ChoiceLength(" na\xc3\xafve"), 6);  // " naïve": 7 bytes, 6 code points
  EXPECT_EQ(ChoiceLength("\xe2\x82\xac"), 1);   // "€"
}

// SQuAD's normalize_answer and compute_f1 on hand-made strings (values worked by hand).
TEST(TaskScoringTest, GenerationMetricsOnHandMadeStrings) {
  EXPECT_EQ(SquadTokens("The  Cat's, an apple!"), (std::vector<std::string>{"cats", "apple"}));
  EXPECT_EQ(SquadTokens("theory of a-b"), (std::vector<std::string>{"theory", "of", "ab"}));
  // pred {cat, sat}, gold {cat, sat, on, mat}: P = 1, R = 1/2, F1 = 2/3.
  EXPECT_NEAR(TokenF1("The cat sat.", "a cat sat on the mat"), 2.0 / 3, 1e-15);
  // Multiset overlap: pred {b, b, c}, gold {b, c, c}: 2 shared, P = R = 2/3.
  EXPECT_NEAR(TokenF1("b b c", "b c c"), 2.0 / 3, 1e-15);
  EXPECT_DOUBLE_EQ(TokenF1("Paris", "paris."), 1.0);
  EXPECT_DOUBLE_EQ(TokenF1("", ""), 1.0);
  EXPECT_DOUBLE_EQ(TokenF1("the", ""), 1.0);  // both normalise to nothing
  EXPECT_DOUBLE_EQ(TokenF1("x", ""), 0.0);
  EXPECT_DOUBLE_EQ(TokenF1("x y", "z"), 0.0);
  EXPECT_DOUBLE_EQ(ExactMatch("Paris", "Paris"), 1.0);
  EXPECT_DOUBLE_EQ(ExactMatch("Paris", "paris"), 0.0);  // exact: case counts
  EXPECT_DOUBLE_EQ(Contains("It is Paris, France", "Paris"), 1.0);
  EXPECT_DOUBLE_EQ(Contains("It is Paris", "Paris, France"), 0.0);
  EXPECT_DOUBLE_EQ(Contains("anything", ""), 1.0);
}

// task.metric for generate: the same outputs scored three ways.
TEST(TaskScoringTest, GenerateMetricSelectsExactContainsOrF1) {
  auto tok = CharTokenizer();
  std::vector<TaskExample> ex(3);
  ex[0].prompt = "a";  // -> "bc"
  ex[0].answer = " bc ";
  ex[1].prompt = "b";  // -> "c"
  ex[1].answer = "c b";
  ex[2].prompt = "a";  // -> "bc"
  ex[2].answer = "b";
  for (auto& e : ex) e.stop = {"\n"};
  const std::map<std::string, std::vector<double>> expected = {
      {"exact_match", {1, 0, 0}}, {"contains", {1, 0, 1}}, {"f1", {1, 2.0 / 3, 0}}};
  for (const auto& [metric, values] : expected) {
    ScoringOptions o;
    o.max_new_tokens = 5;
    o.metric = metric;
    auto s = ScoreGenerate(GreedyByFullForward(Bigram), *tok, ex, o);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ(s->metric, metric);
    ASSERT_EQ(s->per_example.size(), 3u);
    for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(s->per_example[i], values[i], 1e-15) << metric;
    const double mean = (values[0] + values[1] + values[2]) / 3;
    EXPECT_NEAR(s->value, mean, 1e-15);
    EXPECT_NEAR(s->details[metric].get<double>(), mean, 1e-15);
  }
  ScoringOptions o;
  o.metric = "acc";
  EXPECT_EQ(ScoreGenerate(GreedyByFullForward(Bigram), *tok, ex, o).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(TaskScoringTest, KlToTeacherAgainstUniformModel) {
  auto tok = CharTokenizer();
  std::vector<TaskExample> ex(1);
  ex[0].text = "ab";  // positions after <s> and after a
  auto s = ScoreKlToTeacher(Uniform, Bigram, *tok, ex);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  auto row_kl = [](const double* p) {
    double kl = 0;
    for (int v = 0; v < 6; ++v) {
      if (p[v] > 0) kl += p[v] * std::log(p[v] * 6);
    }
    return kl;
  };
  EXPECT_NEAR(s->value, (row_kl(kTable[5]) + row_kl(kTable[0])) / 2, 1e-9);
  // A model equal to the teacher has zero KL.
  EXPECT_NEAR(ScoreKlToTeacher(Bigram, Bigram, *tok, ex)->value, 0.0, 1e-12);
}

}  // namespace
}  // namespace hyb::worker

namespace hyb::worker {
namespace {

// The DecoderModel adapters: KV-cache greedy decoding agrees with greedy decoding by full
// forwards, and lm scoring of a real model matches its own log-softmax.
TEST(TaskScoringTest, DecoderModelAdapters) {
  hyb::testing::TempDir dir;
  hyb::testing::TinyModelSpec spec;
  spec.vocab = 6;
  hyb::testing::WriteTinyModel(dir.path(), spec, 40);
  auto model = DecoderModel::Load(dir.path(), {});
  ASSERT_TRUE(model.ok());
  const std::vector<int64_t> prompt = {5, 0, 1};
  auto cached = GreedyOf(**model)(prompt, 6, {});
  auto full = GreedyByFullForward(LogitsOf(**model))(prompt, 6, {});
  ASSERT_TRUE(cached.ok() && full.ok());
  EXPECT_EQ(*cached, *full);
  auto tok = CharTokenizer();
  std::vector<TaskExample> ex(1);
  ex[0].text = "abc";
  auto s = ScoreLm(LogitsOf(**model), *tok, ex);
  ASSERT_TRUE(s.ok());
  at::NoGradGuard no_grad;
  const at::Tensor logp = at::log_softmax(
      (*(*model)->Forward(torch::tensor({5, 0, 1, 2}, at::kLong).view({1, 4})))[0].to(at::kDouble),
      -1);
  const double want =
      -(logp[0][0].item<double>() + logp[1][1].item<double>() + logp[2][2].item<double>()) / 3;
  EXPECT_NEAR(s->value, want, 1e-9);
}

}  // namespace
}  // namespace hyb::worker
