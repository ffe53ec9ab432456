#include "hyb/coordinator/job_runner.h"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <numeric>

#include "hyb/coordinator/greedy_search.h"
#include "hyb/storage/atomic_file.h"
#include "testing/temp_dir.h"

namespace hyb::coordinator {
namespace {

using hyb::testing::TempDir;

// An executor whose scores follow a fixed "damage" per linear layer (a mock: the runner is the
// code under test here; the real executor has its own tests and the CLI integration test).
class FakeExecutor : public SequentialTaskExecutor {
 public:
  std::map<int64_t, double> damage = {{0, 0.3}, {1, 0.02}, {2, 0.1}, {3, 0.05}};
  // Final normalised distillation loss per layer (the distill_loss placement ranks by it).
  std::map<int64_t, double> final_nmse = {{0, 0.1}, {1, 0.3}, {2, 0.2}, {3, 0.4}};
  int distills = 0, evaluations = 0, cache_bases = 0, exports = 0;
  int fail_at_evaluation = -1;  // simulate a crash at the n-th evaluation (1-based)

  Status Validate(const JobSpec&) override { return Status::Ok(); }
  StatusOr<DistillResult> Distill(const DistillTask& task, const ProgressFn& progress) override {
    ++distills;
    DistillResult r;
    r.steps = 4;
    for (int64_t l : task.layers) {
      r.layers.push_back({l, 4, {{1, 1.0, 0.5}, {4, 0.5, final_nmse.at(l)}}});
      if (progress &&
          !progress({{"event", "distill_step"}, {"step", 4}, {"layers", Json::array()}}))
        return Cancelled("stopped");
    }
    return r;
  }
  StatusOr<EvaluateResult> RunEvaluation(const EvaluateTask& task) override {
    if (++evaluations == fail_at_evaluation) return Internal("worker lost");
    // The first evaluation of a new base records it (here: one per round; the real executor
    // promotes the round winner's recording instead).
    int64_t base_passes = 0;
    if (task.prefix_base && *task.prefix_base != last_base) {
      ++cache_bases;
      last_base = *task.prefix_base;
      if (*task.prefix_base != task.linear_layers) base_passes = 10;
    }
    double total = 0;
    for (int64_t l : task.linear_layers) total += damage.at(l);
    EvaluateResult r;
    r.candidate_id = task.candidate_id;
    r.linear_layers = task.linear_layers;
    r.split = task.split;
    r.metric = "exact_match";
    const int n = task.split == "test" ? 50 : 100;
    for (int i = 0; i < n; ++i) r.per_example.push_back(i < total * n - 1e-9 ? 0.0 : 1.0);
    r.score = std::accumulate(r.per_example.begin(), r.per_example.end(), 0.0) / n;
    r.kl = total;
    r.layer_passes = 10 + base_passes;
    return r;
  }
  Status Export(const ExportTask& task) override {
    ++exports;
    return storage::AtomicWriteString(export_root + "/" + task.name,
                                      "exported " + CandidateId(task.linear_layers));
  }
  std::string export_root;
  std::vector<int64_t> last_base = {-1};
};

JobSpec Spec(const TempDir& dir, bool placements = false) {
  std::ofstream(dir.File("config.json")) << R"({"num_hidden_layers": 4, "model_type": "llama"})";
  Json j = {{"job_id", "unit"},
            {"teacher", dir.path()},
            {"distill", {{"data", "data"}}},
            {"task", {{"type", "generate"}, {"validation", "v.jsonl"}, {"test", "t.jsonl"}}},
            {"search", {{"tolerance", 0.2}, {"bootstrap_samples", 100}}}};
  if (placements) j["compare_placements"] = {{"random", 2}};
  auto s = ParseJobSpec(j.dump(), "job.json", "");
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return *s;
}

RunOptions Options(const TempDir& dir, std::vector<std::string>* lines = nullptr) {
  RunOptions o;
  o.storage_root = dir.File("store");
  // The 4-layer teacher the fake executor pretends to run (there are no real input files).
  o.validate = [](const JobSpec&) -> StatusOr<ValidatedJob> {
    ValidatedJob v;
    v.num_layers = 4;
    v.family = "llama";
    return v;
  };
  o.print = [lines](const std::string& l) {
    if (lines) lines->push_back(l);
  };
  return o;
}

TEST(JobRunnerTest, RunsEveryPhaseAndWritesTheReport) {
  TempDir dir;
  FakeExecutor ex;
  ex.export_root = dir.File("store/unit/exports");
  std::vector<std::string> lines;
  JobRunner runner(Spec(dir, true), &ex, Options(dir, &lines));
  auto out = runner.Run();
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  const Json& r = out->report;
  // Same trajectory as the search's own test: layers 1, 3, 2 committed, layer 0 stops it.
  EXPECT_EQ(r["search"]["trajectory"].back()["linear_layers"], Json({1, 2, 3}));
  EXPECT_EQ(r["search"]["rounds"].size(), 4u);
  EXPECT_EQ(ex.distills, 1);
  // 1 teacher + 4 + 3 + 2 + 1 candidates, 3 cache recordings (rounds 2-4), test split for the
  // teacher, M_best and M_opt, and the placements (greedy = M_opt, stored).
  EXPECT_EQ(ex.cache_bases, 1 + 3);
  EXPECT_EQ(ex.exports, 2);
  ASSERT_EQ(r["models"].size(), 3u);
  EXPECT_EQ(r["models"][0]["name"], "teacher");
  // M_best is the best hybrid ({1}: 0.98), not the teacher (1.0).
  EXPECT_EQ(r["models"][1]["name"], "m_best");
  EXPECT_EQ(r["models"][1]["linear_layers"], Json({1}));
  EXPECT_EQ(r["models"][1]["meets_p_min"], true);
  EXPECT_DOUBLE_EQ(r["models"][1]["test"].get<double>(), 0.98);  // 49 of 50
  EXPECT_NEAR(r["models"][1]["test_minus_teacher"].get<double>(), -0.02, 1e-12);
  EXPECT_EQ(r["models"][2]["name"], "m_opt");
  EXPECT_EQ(r["models"][2]["linear_layers"], Json({1, 2, 3}));
  EXPECT_DOUBLE_EQ(r["models"][2]["test"].get<double>(), 0.82);
  // Every changed test example went down (9 of 50): the interval is below zero.
  const Json opt_ci = r["models"][2]["test_minus_teacher_ci95"];
  EXPECT_LT(opt_ci[0].get<double>(), -0.18);
  EXPECT_LT(opt_ci[1].get<double>(), 0.0);
  EXPECT_GT(opt_ci[1].get<double>(), -0.18);
  EXPECT_EQ(r["outcome"], "m_opt has 3 linear layers and meets p_min");
  EXPECT_EQ(r["search"]["criterion"], "point");
  EXPECT_EQ(r["search"]["p_min_count"], 80);  // 100 - floor(0.2 * 100) of 100
  // greedy, distill_loss, sensitivity, uniform, random-1, random-2; all with three layers.
  ASSERT_EQ(r["placements"].size(), 6u);
  EXPECT_EQ(r["placements"][0]["name"], "greedy");
  EXPECT_FALSE(r["placements"][0].contains("minus_greedy"));
  // Lowest final nmse: layers 0 (0.1), 2 (0.2), 1 (0.3): damage 0.42, test 29/50.
  EXPECT_EQ(r["placements"][1]["name"], "distill_loss");
  EXPECT_EQ(r["placements"][1]["linear_layers"], Json({0, 1, 2}));
  EXPECT_DOUBLE_EQ(r["placements"][1]["test"].get<double>(), 0.58);
  EXPECT_NEAR(r["placements"][1]["minus_greedy"].get<double>(), -0.24, 1e-12);
  const Json loss_ci = r["placements"][1]["minus_greedy_ci95"];
  EXPECT_LT(loss_ci[0].get<double>(), -0.24);
  EXPECT_GT(loss_ci[1].get<double>(), -0.24);
  EXPECT_LT(loss_ci[1].get<double>(), 0.0);
  // Round 1's cheapest single swaps: 1 (0.98), 3 (0.95), 2 (0.90): greedy's set here.
  EXPECT_EQ(r["placements"][2]["name"], "sensitivity");
  EXPECT_EQ(r["placements"][2]["linear_layers"], Json({1, 2, 3}));
  EXPECT_DOUBLE_EQ(r["placements"][2]["minus_greedy"].get<double>(), 0.0);
  EXPECT_EQ(r["placements"][2]["minus_greedy_ci95"], Json({0.0, 0.0}));
  EXPECT_EQ(r["placements"][3]["name"], "uniform");
  EXPECT_EQ(r["placements"][3]["linear_layers"], Json({0, 2, 3}));
  EXPECT_EQ(r["placements"][4]["name"], "random-1");
  EXPECT_EQ(r["search"]["layer_passes"], 10 * (1 + 3 + 4 + 3 + 2 + 1));
  const std::string job = dir.File("store/unit");
  EXPECT_TRUE(storage::PathExists(job + "/report.html"));
  EXPECT_TRUE(storage::PathExists(job + "/exports/m_opt"));
  EXPECT_TRUE(storage::PathExists(job + "/eval/validation/linear_1_2_3.json"));
  EXPECT_NE(out->summary.find("m_opt"), std::string::npos) << out->summary;
  auto events = ReadFileToString(job + "/events.jsonl");
  ASSERT_TRUE(events.ok());
  EXPECT_NE(events->find("\"phase\":\"succeeded\""), std::string::npos);
  bool saw_round = false;
  for (const auto& l : lines) saw_round = saw_round || l.find("round 2 [3/3]") != std::string::npos;
  EXPECT_TRUE(saw_round);
}

// A run that dies mid-search resumes from its stored results: the finished job is the same as
// an uninterrupted one, and no stored evaluation runs again.
TEST(JobRunnerTest, ResumesAfterACrashWithoutRepeatingWork) {
  TempDir a, b;
  FakeExecutor whole;
  whole.export_root = a.File("store/unit/exports");
  auto full = JobRunner(Spec(a), &whole, Options(a)).Run();
  ASSERT_TRUE(full.ok());

  FakeExecutor crashing;
  crashing.export_root = b.File("store/unit/exports");
  crashing.fail_at_evaluation = 8;
  auto crashed = JobRunner(Spec(b), &crashing, Options(b)).Run();
  ASSERT_FALSE(crashed.ok());
  EXPECT_NE(crashed.status().message().find("searching"), std::string::npos)
      << crashed.status().ToString();
  FakeExecutor resumed;
  resumed.export_root = b.File("store/unit/exports");
  auto done = JobRunner(Spec(b), &resumed, Options(b)).Run();
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  EXPECT_EQ(resumed.distills, 0);  // distill/result.json was there
  EXPECT_EQ(done->report["search"]["trajectory"], full->report["search"]["trajectory"]);
  // The same decisions and scores; layer passes may differ (which candidate of a round records
  // its base depends on what was stored).
  auto without_costs = [](Json rounds) {
    for (auto& r : rounds) {
      for (auto& c : r["candidates"]) c.erase("layer_passes");
    }
    return rounds;
  };
  EXPECT_EQ(without_costs(done->report["search"]["rounds"]),
            without_costs(full->report["search"]["rounds"]));
  EXPECT_EQ(done->report["models"], full->report["models"]);
  // 7 evaluations were stored before the crash (1 teacher + 4 round-1 + cache + 1 round-2 ...):
  // the resumed run evaluates only the rest.
  EXPECT_LT(resumed.evaluations, whole.evaluations);

  // A third run finds everything stored.
  FakeExecutor again;
  again.export_root = b.File("store/unit/exports");
  auto third = JobRunner(Spec(b), &again, Options(b)).Run();
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(again.evaluations, 0);
  EXPECT_EQ(again.exports, 0);
}

TEST(JobRunnerTest, RefusesAnotherSpecUnderTheSameJobId) {
  TempDir dir;
  FakeExecutor ex;
  ex.export_root = dir.File("store/unit/exports");
  ASSERT_TRUE(JobRunner(Spec(dir), &ex, Options(dir)).Run().ok());
  const auto before = ReadFileToString(dir.File("store/unit/job.json"));
  JobSpec other = Spec(dir);
  other.resolved["search"]["tolerance"] = 0.5;
  FakeExecutor ex2;
  ex2.export_root = dir.File("store/unit/exports");
  auto r = JobRunner(other, &ex2, Options(dir)).Run();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("different spec"), std::string::npos);
  EXPECT_EQ(*ReadFileToString(dir.File("store/unit/job.json")), *before);
  EXPECT_EQ(ex2.evaluations, 0);
}

TEST(JobRunnerTest, RefusesToResumeWhenTheTeacherOrATaskFileChanged) {
  TempDir dir;
  std::ofstream(dir.File("model.safetensors")) << "weights v1";
  std::ofstream(dir.File("README.md")) << "model card";
  auto spec_with_files = [&dir] {
    JobSpec s = Spec(dir);
    s.task.validation = dir.File("v.jsonl");
    return s;
  };
  std::ofstream(dir.File("v.jsonl")) << "{}\n";
  FakeExecutor ex;
  ex.export_root = dir.File("store/unit/exports");
  ASSERT_TRUE(JobRunner(spec_with_files(), &ex, Options(dir)).Run().ok());
  const auto inputs = ReadJsonFile(dir.File("store/unit/inputs.json"));
  ASSERT_TRUE(inputs.ok()) << inputs.status().ToString();
  EXPECT_EQ((*inputs)["teacher"].size(), 2u);  // config.json and the weights, not the card
  EXPECT_TRUE((*inputs)["teacher"].contains("model.safetensors"));
  EXPECT_TRUE((*inputs)["task.validation"].is_string());

  // Editing the model card is not a change of inputs: the job resumes.
  std::ofstream(dir.File("README.md")) << "model card, edited";
  FakeExecutor resumed;
  resumed.export_root = dir.File("store/unit/exports");
  ASSERT_TRUE(JobRunner(spec_with_files(), &resumed, Options(dir)).Run().ok());
  EXPECT_EQ(resumed.evaluations, 0);
  const auto report = ReadFileToString(dir.File("store/unit/report.json"));

  // Retrained weights, or an edited task file: refused, naming what changed; nothing rewritten.
  std::ofstream(dir.File("model.safetensors")) << "weights v2";
  FakeExecutor refused;
  refused.export_root = dir.File("store/unit/exports");
  auto r = JobRunner(spec_with_files(), &refused, Options(dir)).Run();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("changed since it started (teacher/model.safetensors;"),
            std::string::npos)
      << r.status().ToString();
  EXPECT_EQ(refused.evaluations + refused.distills + refused.exports, 0);
  EXPECT_EQ(*ReadJsonFile(dir.File("store/unit/inputs.json")), *inputs);
  EXPECT_EQ(*ReadFileToString(dir.File("store/unit/report.json")), *report);

  std::ofstream(dir.File("model.safetensors")) << "weights v1";
  std::ofstream(dir.File("v.jsonl")) << "{}\n{}\n";
  auto r2 = JobRunner(spec_with_files(), &refused, Options(dir)).Run();
  ASSERT_FALSE(r2.ok());
  EXPECT_NE(r2.status().message().find("(task.validation;"), std::string::npos)
      << r2.status().ToString();
}

// When no hybrid meets P_min there is no M_opt: nothing is exported under that name, the
// report and the summary say so, and M_best (the best hybrid) is reported as missing P_min.
TEST(JobRunnerTest, NoHybridMeetsPMinMeansNoMOpt) {
  TempDir dir;
  FakeExecutor ex;
  ex.damage = {{0, 0.5}, {1, 0.3}, {2, 0.4}, {3, 0.6}};
  ex.export_root = dir.File("store/unit/exports");
  JobSpec spec = Spec(dir, true);
  spec.search.criterion = "confident";
  spec.resolved["search"]["criterion"] = "confident";
  auto out = JobRunner(spec, &ex, Options(dir)).Run();
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  const Json& r = out->report;
  EXPECT_EQ(r["search"]["criterion"], "confident");
  EXPECT_EQ(r["search"]["hybrid_meets_p_min"], false);
  EXPECT_EQ(r["outcome"], "no hybrid meets p_min: there is no m_opt");
  ASSERT_EQ(r["models"].size(), 2u);
  EXPECT_EQ(r["models"][1]["name"], "m_best");
  EXPECT_EQ(r["models"][1]["linear_layers"], Json({1}));
  EXPECT_EQ(r["models"][1]["meets_p_min"], false);
  EXPECT_FALSE(r.contains("placements"));  // nothing to compare at M_opt's size
  EXPECT_EQ(ex.exports, 1);
  EXPECT_FALSE(storage::PathExists(dir.File("store/unit/exports/m_opt")));
  EXPECT_NE(out->summary.find("no hybrid meets p_min"), std::string::npos) << out->summary;
  const auto html = ReadFileToString(dir.File("store/unit/report.html"));
  ASSERT_TRUE(html.ok());
  EXPECT_NE(html->find("no hybrid meets p_min: there is no m_opt"), std::string::npos);
}

TEST(JobRunnerTest, DistillLossAndSensitivityPlacements) {
  const Json distill = {{"layers",
                         {{{"layer", 0}, {"final_nmse", 0.5}},
                          {{"layer", 1}, {"final_nmse", 0.1}},
                          {{"layer", 2}, {"final_nmse", 0.1}},
                          {{"layer", 3}, {"final_nmse", nullptr}}}}};
  EXPECT_EQ(*DistillLossPlacement(distill, {0, 1, 2}, 2), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(*DistillLossPlacement(distill, {0, 2}, 1), (std::vector<int64_t>{2}));
  auto missing = DistillLossPlacement(distill, {0, 3}, 1);
  EXPECT_EQ(missing.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(missing.status().message().find("layer 3"), std::string::npos);

  SearchOptions o;
  o.tolerance = 0.5;
  o.bootstrap_samples = 10;
  GreedySearch s = *GreedySearch::Create(4, o);
  CandidateResult teacher;
  teacher.per_example = {1, 1, 1, 1};
  teacher.score = 1;
  ASSERT_TRUE(s.SetTeacher(teacher).ok());
  const std::map<int64_t, double> round1 = {{0, 0.25}, {1, 0.75}, {2, 0.5}, {3, 0.75}};
  for (const auto& c : s.Pending()) {
    CandidateResult r = teacher;
    r.score = round1.at(c.layer);
    r.kl = c.layer == 3 ? 0.1 : 0.2;  // breaks the 1-vs-3 tie towards 3
    ASSERT_TRUE(s.Report(c.id, r).ok());
  }
  EXPECT_EQ(SensitivityPlacement(s, 1), (std::vector<int64_t>{3}));
  EXPECT_EQ(SensitivityPlacement(s, 3), (std::vector<int64_t>{1, 2, 3}));
}

TEST(JobRunnerTest, UniformPlacementSpreadsLayers) {
  EXPECT_EQ(UniformPlacement({0, 1, 2, 3, 4, 5}, 3), (std::vector<int64_t>{1, 3, 5}));
  EXPECT_EQ(UniformPlacement({0, 1, 2, 3, 4, 5}, 2), (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(UniformPlacement({0, 1, 2, 3}, 1), (std::vector<int64_t>{2}));
  EXPECT_EQ(UniformPlacement({2, 5, 7}, 3), (std::vector<int64_t>{2, 5, 7}));
  EXPECT_TRUE(UniformPlacement({1, 2}, 0).empty());
}

}  // namespace
}  // namespace hyb::coordinator
