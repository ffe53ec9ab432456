// `hybridize run` end to end on a tiny model: a real process, real files, every phase.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>

#include "hyb/storage/token_dataset.h"
#include "hyb/storage/tokenizer.h"
#include "hyb/worker/decoder_model.h"
#include "hyb/worker/task_scoring.h"
#include "testing/temp_dir.h"
#include "worker/test_model.h"

namespace hyb::worker {
namespace {

using hyb::testing::TempDir;

const Json kCharTokenizer = hyb::testing::CharTokenizerJson();

struct CliResult {
  int rc;
  std::string output;
};

CliResult RunCli(const std::string& args) {
  const std::string cmd = std::string(std::getenv("HYB_CLI")) + " " + args + " 2>&1";
  CliResult r{0, ""};
  FILE* p = ::popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.output.append(buf, n);
  r.rc = WEXITSTATUS(::pclose(p));
  return r;
}

void WriteJob(const TempDir& dir, const Json& overrides = Json::object()) {
  hyb::testing::WriteTinyJob(dir.path(), overrides);
}

TEST(CliRunTest, RunsAJobEndToEndAndResumes) {
  if (std::getenv("HYB_CLI") == nullptr) GTEST_SKIP() << "HYB_CLI not set (run through ctest)";
  TempDir dir;
  WriteJob(dir);
  const std::string store = dir.File("store");
  CliResult first = RunCli("run " + dir.File("job.json") + " --storage " + store);
  ASSERT_EQ(first.rc, 0) << first.output;
  for (const char* want : {"distill step 6/6", "teacher: validation exact_match", "round 1 [3/3]",
                           "search stopped", "exported m_opt", "placement uniform", "m_opt "}) {
    EXPECT_NE(first.output.find(want), std::string::npos) << want << "\n" << first.output;
  }
  const std::string job = store + "/tiny";
  auto report = ReadJsonFile(job + "/report.json");
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  const Json& models = (*report)["models"];
  ASSERT_EQ(models.size(), 3u);
  EXPECT_DOUBLE_EQ(models[0]["validation"].get<double>(), 0.5);  // the teacher: half its own
  EXPECT_EQ((*report)["distill"]["layers"].size(), 3u);
  EXPECT_EQ((*report)["distill"]["layers"][0]["curve"].size(), 4u);  // steps 1, 2, 4, 6
  // The exported M_opt loads and has exactly its linear layers.
  auto m_opt = DecoderModel::Load(job + "/exports/m_opt", {});
  ASSERT_TRUE(m_opt.ok()) << m_opt.status().ToString();
  const auto linear = models[2]["linear_layers"].get<std::vector<int64_t>>();
  for (int64_t l = 0; l < 3; ++l) {
    const bool is_linear = std::count(linear.begin(), linear.end(), l) > 0;
    EXPECT_EQ((*m_opt)->mixer(l).LayerType(), is_linear ? "linear_attention" : "full_attention");
  }
  struct stat st {};
  EXPECT_EQ(::stat((job + "/report.html").c_str(), &st), 0);
  EXPECT_GT(st.st_size, 2000);

  // Re-running the same spec reuses every stored result and reports the same models.
  CliResult again = RunCli("run " + dir.File("job.json") + " --storage " + store);
  ASSERT_EQ(again.rc, 0) << again.output;
  EXPECT_NE(again.output.find("resuming job tiny"), std::string::npos) << again.output;
  EXPECT_NE(again.output.find("distillation: finished earlier"), std::string::npos);
  EXPECT_NE(again.output.find(", stored"), std::string::npos);
  EXPECT_EQ(again.output.find("exported"), std::string::npos);  // exports were kept
  auto report2 = ReadJsonFile(job + "/report.json");
  EXPECT_EQ((*report2)["models"], models);
  EXPECT_EQ((*report2)["search"]["rounds"], (*report)["search"]["rounds"]);

  // A retrained teacher under the same job_id: refused, the stored results are kept.
  hyb::testing::TinyModelSpec spec;
  spec.vocab = 6;
  spec.layers = 3;
  hyb::testing::WriteTinyModel(dir.File("teacher"), spec, 6);
  CliResult changed = RunCli("run " + dir.File("job.json") + " --storage " + store);
  EXPECT_EQ(changed.rc, 1) << changed.output;
  EXPECT_NE(changed.output.find("changed since it started (teacher/model.safetensors;"),
            std::string::npos)
      << changed.output;
  EXPECT_EQ((*ReadJsonFile(job + "/report.json"))["models"], models);
}

TEST(CliRunTest, BadSpecsFailBeforeAnyWork) {
  if (std::getenv("HYB_CLI") == nullptr) GTEST_SKIP() << "HYB_CLI not set (run through ctest)";
  TempDir dir;
  const std::string store = dir.File("store");
  struct Case {
    Json patch;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {{{"distill", {{"lr", -1}}}}, "distill.lr: must be > 0, got -1"},
      {{{"searhc", 1}}, "unknown field 'searhc'"},
      {{{"teacher", "missing-dir"}}, "teacher: "},
      {{{"task", {{"validation", "nope.jsonl"}}}}, "task.validation: "},
      {{{"mixer", {{"type", "mamba"}}}}, "mixer.type: must be one of"},
      {{{"search", {{"layers", {7}}}}}, "search.layers: layer 7 does not exist"},
  };
  for (const auto& c : cases) {
    TempDir d;
    WriteJob(d, c.patch);
    CliResult r = RunCli("run " + d.File("job.json") + " --storage " + store);
    EXPECT_EQ(r.rc, 1) << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << c.expect << "\n" << r.output;
    // Nothing was created for the job.
    struct stat st {};
    EXPECT_NE(::stat((store + "/tiny/job.json").c_str(), &st), 0) << c.expect;
  }
  {
    // Distillation data tokenized with another tokenizer (its fingerprint, recorded by
    // `hybridize prepare`, differs from the teacher's tokenizer.json).
    TempDir d;
    WriteJob(d);
    auto meta = ReadJsonFile(d.File("data/meta.json"));
    ASSERT_TRUE(meta.ok());
    (*meta)["tokenizer"] = "other/tokenizer.json";
    (*meta)["tokenizer_fingerprint"] = "12:0123456789abcdef";
    std::ofstream(d.File("data/meta.json")) << meta->dump();
    CliResult r = RunCli("run " + d.File("job.json") + " --storage " + store);
    EXPECT_EQ(r.rc, 1) << r.output;
    EXPECT_NE(r.output.find("distill.data: " + d.File("data") +
                            " was tokenized with other/tokenizer.json"),
              std::string::npos)
        << r.output;
    struct stat st {};
    EXPECT_NE(::stat((store + "/tiny/job.json").c_str(), &st), 0);
  }
  CliResult help = RunCli("run --help");
  EXPECT_EQ(help.rc, 0);
  EXPECT_NE(help.output.find("--storage DIR"), std::string::npos);
  EXPECT_EQ(RunCli("run").rc, 1);
}

// `run --validate-only` runs the same checks as `run` (coordinator::ValidateJob, then the
// teacher loading): it used to call specs valid that `run` then refused.
TEST(CliRunTest, ValidateOnlyRejectsWhatRunRejects) {
  if (std::getenv("HYB_CLI") == nullptr) GTEST_SKIP() << "HYB_CLI not set (run through ctest)";
  TempDir dir;
  const std::string store = dir.File("store");
  {
    TempDir d;
    WriteJob(d);
    CliResult r = RunCli("run " + d.File("job.json") + " --storage " + store + " --validate-only");
    EXPECT_EQ(r.rc, 0) << r.output;
    EXPECT_NE(r.output.find("job tiny: valid"), std::string::npos) << r.output;
  }
  {
    TempDir d;
    WriteJob(d, {{"search", {{"layers", {0, 3}}}}});
    CliResult r = RunCli("run " + d.File("job.json") + " --storage " + store + " --validate-only");
    EXPECT_EQ(r.rc, 1) << r.output;
    EXPECT_NE(r.output.find("search.layers: layer 3 does not exist (the teacher has 3 layers)"),
              std::string::npos)
        << r.output;
    EXPECT_EQ(r.output.find("job tiny: valid"), std::string::npos) << r.output;
  }
  {
    // kl_to_teacher scores the teacher 0, so the spec's relative tolerance admits nothing.
    TempDir d;
    WriteJob(d, {{"task", {{"type", "kl_to_teacher"}, {"validation", "text.jsonl"}}}});
    std::ofstream(d.File("text.jsonl")) << "{\"text\": \"abc ab\"}\n";
    std::ofstream(d.File("test.jsonl")) << "{\"text\": \"cab\"}\n";
    CliResult r = RunCli("run " + d.File("job.json") + " --storage " + store + " --validate-only");
    EXPECT_EQ(r.rc, 1) << r.output;
    EXPECT_NE(r.output.find("kl_to_teacher"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("give search.p_min"), std::string::npos) << r.output;
  }
  struct stat st {};
  EXPECT_NE(::stat(store.c_str(), &st), 0);  // validation writes nothing
}

}  // namespace
}  // namespace hyb::worker
