#include "hyb/worker/task_scoring.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <map>
#include <random>
#include <set>
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

// ids [B, T] -> logits [B, T, 6] in double: the log of kTable's row of each token.
StatusOr<at::Tensor> Bigram(const at::Tensor& ids) {
  at::Tensor table = at::empty({6, 6}, at::kDouble);
  for (int64_t p = 0; p < 6; ++p) {
    for (int64_t v = 0; v < 6; ++v) table[p][v] = std::log(kTable[p][v] + 1e-15);
  }
  return table.index_select(0, ids.reshape({-1})).view({ids.size(0), ids.size(1), 6});
}

StatusOr<at::Tensor> Uniform(const at::Tensor& ids) {
  return at::zeros({ids.size(0), ids.size(1), 6}, at::kDouble);
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
  auto s = ScoreGenerate(RowByRow(GreedyByFullForward(Bigram)), *tok, ex, o);
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
    auto s = ScoreGenerate(RowByRow(GreedyByFullForward(Bigram)), *tok, ex, o);
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
  EXPECT_EQ(ScoreGenerate(RowByRow(GreedyByFullForward(Bigram)), *tok, ex, o).status().code(),
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

namespace hyb::worker {
namespace {

TEST(TaskScoringTest, PlanBatchesRespectsBudgetSizeAndLengths) {
  ScoringOptions o;
  o.batch_tokens = 14;
  o.max_batch_size = 3;
  const std::vector<int64_t> lengths = {3, 7, 5, 7, 2, 1};
  // Longest first; rows x longest <= 14.
  EXPECT_EQ(PlanBatches(lengths, o), (std::vector<std::vector<size_t>>{{1, 3}, {2, 0}, {4, 5}}));
  o.max_batch_size = 1;
  EXPECT_EQ(PlanBatches(lengths, o),
            (std::vector<std::vector<size_t>>{{1}, {3}, {2}, {0}, {4}, {5}}));
  o.max_batch_size = 3;
  o.batch_tokens = 0;  // the per-example path
  EXPECT_EQ(PlanBatches(lengths, o).size(), 6u);
  // Generation: only equal lengths share a batch, each row counting its new tokens too.
  o.batch_tokens = 100;
  EXPECT_EQ(PlanBatches({3, 7, 5, 7, 2, 3}, o, 2, /*same_length=*/true),
            (std::vector<std::vector<size_t>>{{1, 3}, {2}, {0, 5}, {4}}));
  o.batch_tokens = 10;
  EXPECT_EQ(PlanBatches({3, 3, 3}, o, 2, true), (std::vector<std::vector<size_t>>{{0, 1}, {2}}));
  // A sequence over the budget is a batch of its own.
  EXPECT_EQ(PlanBatches({50, 1}, o), (std::vector<std::vector<size_t>>{{0}, {1}}));
  const at::Tensor ids = PaddedIds({{1, 2, 3}, {4}, {5, 6}}, {0, 2, 1});
  EXPECT_TRUE(at::equal(ids, torch::tensor({1, 2, 3, 5, 6, 0, 4, 0, 0}, at::kLong).view({3, 3})));
}

// Texts of 1..max_len characters over the tokenizer's alphabet (seeded): batches pad.
std::vector<std::string> RandomTexts(int n, int max_len, uint32_t seed) {
  std::mt19937 rng(seed);
  const std::string alphabet = "abc \n";
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    const int len = 1 + static_cast<int>(rng() % static_cast<uint32_t>(max_len));
    std::string t;
    for (int k = 0; k < len; ++k) t += alphabet[rng() % alphabet.size()];
    out.push_back(t);
  }
  return out;
}

// Several sequences per batch, several batches per split, and log-softmax chunks of 7 rows
// (of 6 doubles): every batch spans several chunks.
ScoringOptions SmallBatches() {
  ScoringOptions o;
  o.batch_tokens = 40;
  o.max_batch_size = 4;
  o.logits_chunk_bytes = 7 * 6 * 8;
  return o;
}

ScoringOptions PerExample() {
  ScoringOptions o;
  o.batch_tokens = 0;
  return o;
}

void ExpectClose(const TaskScore& got, const TaskScore& want, double rel, const std::string& what) {
  ASSERT_EQ(got.per_example.size(), want.per_example.size()) << what;
  for (size_t i = 0; i < want.per_example.size(); ++i) {
    EXPECT_NEAR(got.per_example[i], want.per_example[i], rel * std::abs(want.per_example[i]))
        << what << " example " << i;
  }
  EXPECT_NEAR(got.value, want.value, rel * std::abs(want.value)) << what;
}

std::unique_ptr<DecoderModel> TinyModel(const hyb::testing::TempDir& dir, uint64_t seed) {
  hyb::testing::TinyModelSpec spec;
  spec.vocab = 6;
  spec.layers = 3;
  hyb::testing::WriteTinyModel(dir.path(), spec, seed);
  auto model = DecoderModel::Load(dir.path(), {});
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  return std::move(model).value();
}

// log-probabilities [T, V] in double of one sequence by its own forward: the per-example
// computation scoring did before batching, as an independent reference.
at::Tensor ReferenceLogProbs(const DecoderModel& model, const std::vector<int64_t>& ids) {
  at::NoGradGuard no_grad;
  const at::Tensor logits =
      *model.Forward(torch::tensor(ids, at::kLong).view({1, static_cast<int64_t>(ids.size())}));
  return at::log_softmax(logits[0].to(at::kDouble), -1);
}

// Counts the batches a LogitsFn sees and their largest row count.
struct BatchCounter {
  int64_t calls = 0, max_rows = 0;
  LogitsFn Wrap(LogitsFn fn) {
    return [this, fn = std::move(fn)](const at::Tensor& ids) {
      ++calls;
      max_rows = std::max(max_rows, ids.size(0));
      return fn(ids);
    };
  }
};

// lm and kl_to_teacher: batched scores (padding, several batches, chunked log-softmax) equal
// the per-example path's and a plain per-sequence reference within 1e-6 relative.
TEST(TaskScoringTest, BatchedTokenScoresEqualPerExample) {
  at::set_num_threads(1);
  hyb::testing::TempDir dir_a, dir_b;
  auto model = TinyModel(dir_a, 40);
  auto teacher = TinyModel(dir_b, 41);
  auto tok = CharTokenizer();
  std::vector<TaskExample> ex;
  for (const auto& t : RandomTexts(17, 12, 5)) {
    TaskExample e;
    e.text = t;
    ex.push_back(e);
  }
  BatchCounter counter;
  auto lm = ScoreLm(counter.Wrap(LogitsOf(*model)), *tok, ex, SmallBatches());
  auto lm_one = ScoreLm(LogitsOf(*model), *tok, ex, PerExample());
  ASSERT_TRUE(lm.ok() && lm_one.ok()) << lm.status().ToString() << lm_one.status().ToString();
  EXPECT_GT(counter.calls, 4);  // 17 sequences, at most 4 per batch
  EXPECT_LT(counter.calls, 17);
  EXPECT_GT(counter.max_rows, 1);
  ExpectClose(*lm, *lm_one, 1e-6, "lm");
  EXPECT_EQ(lm->details["tokens"], lm_one->details["tokens"]);
  double total = 0;
  int64_t count = 0;
  for (size_t i = 0; i < ex.size(); ++i) {
    const auto ids = tok->Encode(ex[i].text, true);
    const at::Tensor logp = ReferenceLogProbs(*model, ids);
    double s = 0;
    for (size_t k = 1; k < ids.size(); ++k) {
      s -= logp[static_cast<int64_t>(k) - 1][ids[k]].item<double>();
    }
    EXPECT_NEAR(lm->per_example[i], s / static_cast<double>(ids.size() - 1),
                1e-6 * s / static_cast<double>(ids.size() - 1))
        << i;
    total += s;
    count += static_cast<int64_t>(ids.size()) - 1;
  }
  EXPECT_NEAR(lm->value, total / static_cast<double>(count), 1e-6 * total / count);

  auto kl = ScoreKlToTeacher(LogitsOf(*model), LogitsOf(*teacher), *tok, ex, SmallBatches());
  auto kl_one = ScoreKlToTeacher(LogitsOf(*model), LogitsOf(*teacher), *tok, ex, PerExample());
  ASSERT_TRUE(kl.ok() && kl_one.ok()) << kl.status().ToString() << kl_one.status().ToString();
  ExpectClose(*kl, *kl_one, 1e-6, "kl");
  for (size_t i = 0; i < ex.size(); ++i) {
    const auto ids = tok->Encode(ex[i].text, true);
    const at::Tensor q = ReferenceLogProbs(*model, ids), p = ReferenceLogProbs(*teacher, ids);
    const auto n = static_cast<int64_t>(ids.size()) - 1;
    const double want = (p.exp() * (p - q)).sum(-1).narrow(0, 0, n).sum().item<double>() / n;
    EXPECT_GT(want, 0);
    EXPECT_NEAR(kl->per_example[i], want, 1e-6 * want) << i;
  }
}

// multiple_choice: every (example, choice) of many examples batched together; the choices'
// log-likelihoods, and so acc and acc_norm, equal the per-example path's.
TEST(TaskScoringTest, BatchedMultipleChoiceEqualsPerExample) {
  at::set_num_threads(1);
  hyb::testing::TempDir dir;
  auto model = TinyModel(dir, 40);
  auto tok = CharTokenizer();
  const auto contexts = RandomTexts(11, 9, 7), choices = RandomTexts(40, 5, 8);
  std::vector<TaskExample> ex;
  for (size_t i = 0; i < contexts.size(); ++i) {
    TaskExample e;
    e.context = contexts[i];
    for (size_t j = 0; j < 2 + i % 3; ++j) {
      // Choices start with a letter so that each adds a token after the moved whitespace.
      e.choices.push_back("a" + choices[(i * 3 + j) % choices.size()]);
    }
    e.label = static_cast<int64_t>(i % e.choices.size());
    ex.push_back(e);
  }
  for (const std::string metric : {"acc", "acc_norm"}) {
    ScoringOptions batched = SmallBatches(), one = PerExample();
    batched.metric = one.metric = metric;
    BatchCounter counter;
    auto s = ScoreMultipleChoice(counter.Wrap(LogitsOf(*model)), *tok, ex, batched);
    auto s_one = ScoreMultipleChoice(LogitsOf(*model), *tok, ex, one);
    ASSERT_TRUE(s.ok() && s_one.ok()) << s.status().ToString() << s_one.status().ToString();
    EXPECT_GT(counter.max_rows, 1);
    EXPECT_GT(counter.calls, 1);
    EXPECT_EQ(s->per_example, s_one->per_example) << metric;
    EXPECT_EQ(s->value, s_one->value) << metric;
    EXPECT_EQ(s->details, s_one->details) << metric;
  }
}

// generate: prompts of equal length decode together, each row cut at its own first stop id;
// outputs equal decoding each prompt alone.
TEST(TaskScoringTest, BatchedGenerationEqualsPerExample) {
  at::set_num_threads(1);
  hyb::testing::TempDir dir;
  auto model = TinyModel(dir, 40);
  auto tok = CharTokenizer();
  ScoringOptions one = PerExample();
  one.max_new_tokens = 6;
  one.stop_ids = {4};
  one.cut_ids = {3};
  one.metric = "f1";
  ScoringOptions batched = one;
  batched.batch_tokens = 30;  // 3 rows of 4 + 6 tokens
  batched.max_batch_size = 0;
  std::vector<TaskExample> ex;
  std::set<size_t> output_lengths;
  const auto prompts = RandomTexts(14, 4, 9);
  for (size_t i = 0; i < prompts.size(); ++i) {
    TaskExample e;
    e.prompt = prompts[i];
    e.stop = {" "};
    const auto out = *GreedyOf(*model)(tok->Encode(e.prompt, true), one.max_new_tokens, {4, 3});
    output_lengths.insert(out.size());
    e.answer = i % 2 == 0 ? tok->Decode(out) : "a b";
    ex.push_back(e);
  }
  // Rows end at different steps, so finished rows are padded in their batch.
  EXPECT_GT(output_lengths.size(), 1u);
  auto s = ScoreGenerate(BatchGreedyOf(*model), *tok, ex, batched);
  auto s_one = ScoreGenerate(RowByRow(GreedyOf(*model)), *tok, ex, one);
  ASSERT_TRUE(s.ok() && s_one.ok()) << s.status().ToString() << s_one.status().ToString();
  EXPECT_EQ(s->per_example, s_one->per_example);
  EXPECT_EQ(s->details, s_one->details);
  EXPECT_GT(s->details["exact_match"].get<double>(), 0);
}

}  // namespace
}  // namespace hyb::worker

namespace hyb::worker {
namespace {

// A causal stand-in for a model over a real tokenizer's vocabulary: each position's logits are
// a fixed row of a seeded table chosen by its own token, [B, T, vocab] in double.
LogitsFn TableModel(int64_t vocab, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const at::Tensor table =
      at::normal(0.0, 3.0, {61, vocab}, gen, at::TensorOptions().dtype(at::kDouble));  // [61, V]
  return [table](const at::Tensor& ids) -> StatusOr<at::Tensor> {
    return table.index_select(0, ids.reshape({-1}).remainder(61))
        .view({ids.size(0), ids.size(1), table.size(1)});
  };
}

// Texts of the llama3-style tokenizer's fixtures (code, prose, Unicode).
std::vector<std::string> FixtureTexts(size_t n) {
  std::ifstream in(std::string(HYB_TEST_DATA_DIR) + "/tokenizers/llama3_style/fixtures.jsonl");
  std::vector<std::string> texts;
  std::string line;
  while (texts.size() < n && std::getline(in, line)) {
    const std::string t = Json::parse(line)["text"];
    if (t.size() > 8) texts.push_back(t);
  }
  return texts;
}

void ExpectIdentical(const StatusOr<TaskScore>& a, const StatusOr<TaskScore>& b,
                     const std::string& what) {
  ASSERT_TRUE(a.ok() && b.ok()) << what << ": " << a.status().ToString() << b.status().ToString();
  EXPECT_EQ(a->metric, b->metric) << what;
  EXPECT_EQ(a->value, b->value) << what;
  EXPECT_EQ(a->per_example, b->per_example) << what;
  EXPECT_EQ(a->details, b->details) << what;
}

// EncodeExamples holds exactly the ids the scorers score (each text with the template; a
// multiple-choice sequence is the template, then context + choice, scored from the end of the
// context without its trailing whitespace), costs one Encode per text, and the scorers give
// bit-identical scores from it, however often it is reused, for every task type.
TEST(TaskScoringTest, EncodedExamplesScoreLikeTheExamples) {
  at::set_num_threads(1);
  auto tok = *Tokenizer::FromFile(std::string(HYB_TEST_DATA_DIR) +
                                  "/tokenizers/llama3_style/tokenizer.json");
  const auto texts = FixtureTexts(12);
  ASSERT_EQ(texts.size(), 12u);
  std::vector<TaskExample> lm, mc, gen;
  int64_t n_choices = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    TaskExample t;
    t.text = texts[i];
    lm.push_back(t);
    TaskExample m;
    const size_t cut = texts[i].size() / 2;
    m.context = texts[i].substr(0, cut) + (i % 2 == 1 ? " " : "");
    m.choices = {texts[i].substr(cut), texts[(i + 1) % texts.size()].substr(0, 7),
                 " x" + std::to_string(i)};
    m.label = static_cast<int64_t>(i % 3);
    n_choices += 3;
    mc.push_back(m);
    TaskExample g;
    g.prompt = texts[i];
    g.answer = i % 4 == 0 ? "" : "abc";
    g.stop = {"\n"};
    gen.push_back(g);
  }
  const LogitsFn model = TableModel(tok->vocab_size(), 1);
  const LogitsFn teacher = TableModel(tok->vocab_size(), 2);
  ScoringOptions o;
  o.batch_tokens = 300;  // several batches of several rows
  o.max_new_tokens = 3;

  auto text_enc = EncodeExamples(*tok, TaskKind::kLm, lm, o);
  ASSERT_TRUE(text_enc.ok()) << text_enc.status().ToString();
  EXPECT_EQ(text_enc->tokenizer_calls, 12);
  for (size_t i = 0; i < lm.size(); ++i) {
    EXPECT_EQ(text_enc->sequences[i], tok->Encode(lm[i].text, true)) << i;
  }
  for (int round = 0; round < 2; ++round) {  // reuse changes nothing
    ExpectIdentical(ScoreLm(model, *text_enc, o), ScoreLm(model, *tok, lm, o), "lm");
    ExpectIdentical(ScoreKlToTeacher(model, teacher, *text_enc, o),
                    ScoreKlToTeacher(model, teacher, *tok, lm, o), "kl_to_teacher");
  }

  auto mc_enc = EncodeExamples(*tok, TaskKind::kMultipleChoice, mc, o);
  ASSERT_TRUE(mc_enc.ok()) << mc_enc.status().ToString();
  EXPECT_EQ(mc_enc->tokenizer_calls, 1 + 12 + n_choices);  // the template, contexts, texts
  const std::vector<int64_t> prefix = tok->Encode("", true);
  ASSERT_EQ(mc_enc->sequences.size(), static_cast<size_t>(n_choices));
  size_t k = 0;
  for (const TaskExample& e : mc) {
    const size_t keep = e.context.find_last_not_of(" \t\n\r") + 1;  // npos + 1 = 0
    std::vector<int64_t> ctx = prefix, whole = prefix;
    for (int64_t id : tok->Encode(e.context.substr(0, keep))) ctx.push_back(id);
    for (const std::string& choice : e.choices) {
      whole.resize(prefix.size());
      for (int64_t id : tok->Encode(e.context + choice)) whole.push_back(id);
      EXPECT_EQ(mc_enc->sequences[k], whole) << k;
      EXPECT_EQ(mc_enc->from[k], static_cast<int64_t>(ctx.size())) << k;
      ++k;
    }
  }
  for (const std::string metric : {"acc", "acc_norm"}) {
    ScoringOptions m = o;
    m.metric = metric;
    for (int round = 0; round < 2; ++round) {
      ExpectIdentical(ScoreMultipleChoice(model, mc, *mc_enc, m),
                      ScoreMultipleChoice(model, *tok, mc, m), metric);
    }
  }

  auto gen_enc = EncodeExamples(*tok, TaskKind::kGenerate, gen, o);
  ASSERT_TRUE(gen_enc.ok()) << gen_enc.status().ToString();
  EXPECT_EQ(gen_enc->tokenizer_calls, 12);
  const BatchGenerateFn greedy = RowByRow(GreedyByFullForward(model));
  for (int round = 0; round < 2; ++round) {
    ExpectIdentical(ScoreGenerate(greedy, *tok, gen, *gen_enc, o),
                    ScoreGenerate(greedy, *tok, gen, o), "generate");
  }

  // An encoding of another kind, or of other examples, is refused.
  EXPECT_EQ(ScoreLm(model, *mc_enc, o).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ScoreGenerate(greedy, *tok, gen, *text_enc, o).status().code(),
            StatusCode::kInvalidArgument);
  const std::vector<TaskExample> fewer(mc.begin(), mc.begin() + 5);  // 15 choices
  auto wrong = ScoreMultipleChoice(model, fewer, *mc_enc, o);
  EXPECT_EQ(wrong.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.status().message().find("36 encoded sequences for examples that make 15"),
            std::string::npos)
      << wrong.status().ToString();
  // What the scorers reject at encoding, EncodeExamples rejects, naming the example.
  std::vector<TaskExample> short_text(2);
  short_text[0].text = "hello world";
  auto bad = EncodeExamples(*tok, TaskKind::kKlToTeacher, short_text, o);
  EXPECT_NE(bad.status().message().find("kl_to_teacher example 1 has fewer than two tokens"),
            std::string::npos)
      << bad.status().ToString();
}

}  // namespace
}  // namespace hyb::worker
