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
  int distills = 0, evaluations = 0, cache_bases = 0, exports = 0;
  int fail_at_evaluation = -1;  // simulate a crash at the n-th evaluation (1-based)

  Status Validate(const JobSpec&) override { return Status::Ok(); }
  StatusOr<DistillResult> Distill(const DistillTask& task, const ProgressFn& progress) override {
    ++distills;
    DistillResult r;
    r.steps = 4;
    for (int64_t l : task.layers) {
      r.layers.push_back({l, 4, {{1, 1.0, 0.5}, {4, 0.5, 0.25}}});
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
  // teacher, M_best (= teacher) and M_opt, and the placements (greedy = M_opt, stored).
  EXPECT_EQ(ex.cache_bases, 1 + 3);
  EXPECT_EQ(ex.exports, 2);
  EXPECT_EQ(r["models"][0]["name"], "teacher");
  EXPECT_EQ(r["models"][2]["linear_layers"], Json({1, 2, 3}));
  EXPECT_DOUBLE_EQ(r["models"][2]["test"].get<double>(), 0.82);
  ASSERT_EQ(r["placements"].size(), 4u);  // greedy, uniform, random-1, random-2
  EXPECT_EQ(r["placements"][1]["name"], "uniform");
  EXPECT_EQ(r["placements"][1]["linear_layers"], Json({0, 2, 3}));
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

TEST(JobRunnerTest, UniformPlacementSpreadsLayers) {
  EXPECT_EQ(UniformPlacement({0, 1, 2, 3, 4, 5}, 3), (std::vector<int64_t>{1, 3, 5}));
  EXPECT_EQ(UniformPlacement({0, 1, 2, 3, 4, 5}, 2), (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(UniformPlacement({0, 1, 2, 3}, 1), (std::vector<int64_t>{2}));
  EXPECT_EQ(UniformPlacement({2, 5, 7}, 3), (std::vector<int64_t>{2, 5, 7}));
  EXPECT_TRUE(UniformPlacement({1, 2}, 0).empty());
}

}  // namespace
}  // namespace hyb::coordinator
