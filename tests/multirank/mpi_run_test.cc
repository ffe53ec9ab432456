// `mpirun -np N hybridize run job.json --mpi` on the CPU with real ranks (OpenMPI,
// --oversubscribe): the same mixers and report as one process for pipeline 2 and pipeline 2 x
// data 2, and a hung rank makes the others fail within the timeout, naming it; a rerun resumes.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <dirent.h>
#include <fstream>
#include <thread>

#include "hyb/worker/tensor_io.h"
#include "testing/temp_dir.h"
#include "worker/test_model.h"

namespace hyb::worker {
namespace {

using hyb::testing::TempDir;

std::string Cli() { return std::getenv("HYB_CLI") != nullptr ? std::getenv("HYB_CLI") : ""; }

// The environment every rank gets: root may run mpirun here (CI containers), one thread each.
const char* kEnv =
    "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 "
    "OMPI_MCA_rmaps_base_oversubscribe=1 ";

struct Result {
  int rc = 0;
  std::string output;
  double seconds = 0;
};

Result Shell(const std::string& cmd) {
  const auto start = std::chrono::steady_clock::now();
  Result r;
  FILE* p = ::popen((std::string(kEnv) + cmd + " 2>&1").c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  r.rc = WEXITSTATUS(::pclose(p));
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

std::string Mpirun(int ranks) {
  return "mpirun -np " + std::to_string(ranks) + " --oversubscribe --bind-to none " + Cli();
}

// Every distilled layer's tensors equal (fp32: the ranks' reduction order differs).
void ExpectSameCheckpoints(const std::string& a, const std::string& b, int layers) {
  for (int l = 0; l < layers; ++l) {
    const std::string file = "/distill/layer_" + std::to_string(l) + ".safetensors";
    auto ta = LoadTensors(a + file);
    auto tb = LoadTensors(b + file);
    ASSERT_TRUE(ta.ok()) << ta.status().ToString();
    ASSERT_TRUE(tb.ok()) << tb.status().ToString();
    ASSERT_EQ(ta->size(), tb->size());
    for (const auto& [name, t] : *ta) {
      ASSERT_TRUE(tb->count(name)) << name;
      const double diff = (tb->at(name) - t).abs().max().item<double>();
      EXPECT_LT(diff, 2e-5) << "layer " << l << " " << name;
    }
  }
}

// The report's decisions and scores equal; timings and pass counts may differ.
void ExpectSameReport(const std::string& a, const std::string& b) {
  auto ra = ReadJsonFile(a + "/report.json");
  auto rb = ReadJsonFile(b + "/report.json");
  ASSERT_TRUE(ra.ok()) << ra.status().ToString();
  ASSERT_TRUE(rb.ok()) << rb.status().ToString();
  EXPECT_EQ((*ra)["outcome"], (*rb)["outcome"]);
  EXPECT_EQ((*ra)["search"]["stop_reason"], (*rb)["search"]["stop_reason"]);
  const Json& ta = (*ra)["search"]["trajectory"];
  const Json& tb = (*rb)["search"]["trajectory"];
  ASSERT_EQ(ta.size(), tb.size());
  for (size_t i = 0; i < ta.size(); ++i) {
    EXPECT_EQ(ta[i]["linear_layers"], tb[i]["linear_layers"]);
    EXPECT_NEAR(ta[i]["score"].get<double>(), tb[i]["score"].get<double>(), 1e-6);
  }
  const Json& rounds_a = (*ra)["search"]["rounds"];
  const Json& rounds_b = (*rb)["search"]["rounds"];
  ASSERT_EQ(rounds_a.size(), rounds_b.size());
  for (size_t i = 0; i < rounds_a.size(); ++i) {
    EXPECT_EQ(rounds_a[i]["best_layer"], rounds_b[i]["best_layer"]);
    ASSERT_EQ(rounds_a[i]["candidates"].size(), rounds_b[i]["candidates"].size());
    for (size_t k = 0; k < rounds_a[i]["candidates"].size(); ++k) {
      const Json& ca = rounds_a[i]["candidates"][k];
      const Json& cb = rounds_b[i]["candidates"][k];
      EXPECT_EQ(ca["id"], cb["id"]);
      EXPECT_NEAR(ca["score"].get<double>(), cb["score"].get<double>(), 1e-6) << ca["id"];
      if (ca.contains("kl")) {
        EXPECT_NEAR(ca["kl"].get<double>(), cb["kl"].get<double>(), 1e-5) << ca["id"];
      }
    }
  }
  const Json& ma = (*ra)["models"];
  const Json& mb = (*rb)["models"];
  ASSERT_EQ(ma.size(), mb.size());
  for (size_t i = 0; i < ma.size(); ++i) {
    EXPECT_EQ(ma[i]["name"], mb[i]["name"]);
    EXPECT_EQ(ma[i]["linear_layers"], mb[i]["linear_layers"]);
    EXPECT_NEAR(ma[i]["validation"].get<double>(), mb[i]["validation"].get<double>(), 1e-6);
    EXPECT_NEAR(ma[i]["test"].get<double>(), mb[i]["test"].get<double>(), 1e-6);
  }
}

class MpiRunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (Cli().empty()) GTEST_SKIP() << "HYB_CLI not set (run through ctest)";
    if (Shell("mpirun --version").rc != 0) GTEST_SKIP() << "no mpirun on this machine";
  }
};

TEST_F(MpiRunTest, PipelineTwoEqualsOneProcess) {
  TempDir dir;
  hyb::testing::WriteTinyJob(dir.path(), {{"distill", {{"parallel", {{"pipeline", 2}}}}}});
  Result one = Shell(Cli() + " run " + dir.File("job.json") + " --storage " + dir.File("one"));
  ASSERT_EQ(one.rc, 0) << one.output;
  Result two = Shell(Mpirun(2) + " run " + dir.File("job.json") + " --mpi --storage " +
                     dir.File("two"));
  ASSERT_EQ(two.rc, 0) << two.output;
  EXPECT_NE(two.output.find("mpi: 2 ranks, distillation tensors over mpi"), std::string::npos)
      << two.output;
  EXPECT_NE(two.output.find("pipeline 2 x data 1, stages [0, 2), [2, 3)"), std::string::npos)
      << two.output;
  ExpectSameCheckpoints(dir.File("one/tiny"), dir.File("two/tiny"), 3);
  ExpectSameReport(dir.File("one/tiny"), dir.File("two/tiny"));
  // The exported hybrids hold the same weights.
  auto ea = LoadTensors(dir.File("one/tiny/exports/m_opt/model.safetensors"));
  auto eb = LoadTensors(dir.File("two/tiny/exports/m_opt/model.safetensors"));
  ASSERT_TRUE(ea.ok() && eb.ok());
  EXPECT_EQ(ea->size(), eb->size());
}

TEST_F(MpiRunTest, PipelineTwoTimesDataTwoEqualsOneProcess) {
  TempDir dir;
  hyb::testing::WriteTinyJob(dir.path(),
                             {{"distill", {{"parallel", {{"pipeline", 2}, {"data", 2}}}}}});
  Result one = Shell(Cli() + " run " + dir.File("job.json") + " --storage " + dir.File("one"));
  ASSERT_EQ(one.rc, 0) << one.output;
  Result four = Shell(Mpirun(4) + " run " + dir.File("job.json") + " --mpi --storage " +
                      dir.File("four"));
  ASSERT_EQ(four.rc, 0) << four.output;
  EXPECT_NE(four.output.find("pipeline 2 x data 2"), std::string::npos) << four.output;
  ExpectSameCheckpoints(dir.File("one/tiny"), dir.File("four/tiny"), 3);
  ExpectSameReport(dir.File("one/tiny"), dir.File("four/tiny"));
}

TEST_F(MpiRunTest, ShapeThatDoesNotFitTheRanksIsRefusedNamingTheField) {
  TempDir dir;
  hyb::testing::WriteTinyJob(dir.path(), {{"distill", {{"parallel", {{"pipeline", 2}}}}}});
  Result three = Shell(Mpirun(3) + " run " + dir.File("job.json") + " --mpi --storage " +
                       dir.File("s"));
  EXPECT_NE(three.rc, 0);
  EXPECT_NE(three.output.find("distill.parallel: pipeline 2"), std::string::npos) << three.output;
  EXPECT_NE(three.output.find("does not equal the 3 ranks"), std::string::npos) << three.output;
}

// The pids of mpirun's ranks with their OMPI_COMM_WORLD_RANK.
std::map<int, pid_t> RankPids(const std::string& marker) {
  std::map<int, pid_t> out;
  DIR* proc = ::opendir("/proc");
  while (dirent* e = ::readdir(proc)) {
    const pid_t pid = std::atoi(e->d_name);
    if (pid <= 0) continue;
    std::ifstream env("/proc/" + std::to_string(pid) + "/environ");
    std::string all((std::istreambuf_iterator<char>(env)), std::istreambuf_iterator<char>());
    std::ifstream cmd("/proc/" + std::to_string(pid) + "/cmdline");
    std::string line((std::istreambuf_iterator<char>(cmd)), std::istreambuf_iterator<char>());
    if (line.find(marker) == std::string::npos || line.rfind("mpirun", 0) == 0) continue;
    const auto at = all.find("OMPI_COMM_WORLD_RANK=");
    if (at == std::string::npos) continue;
    out[std::atoi(all.c_str() + at + 21)] = pid;
  }
  ::closedir(proc);
  return out;
}

// Rank 1 (the second stage) stops mid-distillation: hung (SIGSTOP) -> rank 0 gives up on it
// after --comm-timeout and says so; killed (SIGKILL) -> mpirun notices and ends the gang. Either
// way the job ends within the bound and a rerun resumes from the checkpoints and finishes.
class MpiRankLossTest : public MpiRunTest, public ::testing::WithParamInterface<int> {};

TEST_P(MpiRankLossTest, OthersFailWithinTheBoundAndARerunResumes) {
  const int sig = GetParam();
  TempDir dir;
  hyb::testing::WriteTinyJob(
      dir.path(), {{"distill",
                    {{"parallel", {{"pipeline", 2}}}, {"steps", 1500}, {"checkpoint_every", 5}}}});
  const std::string store = dir.File("store");
  const std::string cmd = Mpirun(2) + " run " + dir.File("job.json") + " --mpi --storage " +
                          store + " --comm-timeout 3";
  Result run;
  std::thread runner([&] { run = Shell(cmd); });
  // Wait for stage 1 (rank 1, layer 2) to publish a checkpoint, then stop rank 1 mid-step.
  const std::string ckpt = store + "/tiny/distill/layer_2.safetensors";
  std::map<int, pid_t> pids;
  for (int i = 0; i < 600; ++i) {
    struct stat st {};
    if (::stat(ckpt.c_str(), &st) == 0) {
      pids = RankPids(dir.path());
      if (pids.count(1)) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(pids.count(1)) << "rank 1 never checkpointed";
  const auto stopped_at = std::chrono::steady_clock::now();
  ASSERT_EQ(::kill(pids[1], sig), 0);
  runner.join();
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - stopped_at).count();
  ::kill(pids[1], SIGKILL);  // in case mpirun left it behind
  EXPECT_NE(run.rc, 0) << run.output;
  if (sig == SIGSTOP) {
    // Rank 0 (stage 0) gave up on rank 1 after the 3 s bound and said so.
    EXPECT_NE(run.output.find("timed out after 3 s"), std::string::npos) << run.output;
    EXPECT_NE(run.output.find("rank 1"), std::string::npos) << run.output;
  } else {
    EXPECT_NE(run.output.find("rank 1"), std::string::npos) << run.output;
    EXPECT_NE(run.output.find("signal 9"), std::string::npos) << run.output;
  }
  EXPECT_LT(waited, 3 + 30.0) << run.output;
  // The rerun resumes from the checkpoints and finishes.
  Result again = Shell(cmd);
  ASSERT_EQ(again.rc, 0) << again.output;
  EXPECT_NE(again.output.find("resuming job tiny"), std::string::npos) << again.output;
  EXPECT_NE(again.output.find("distill step 1500/1500"), std::string::npos) << again.output;
}

INSTANTIATE_TEST_SUITE_P(Signals, MpiRankLossTest, ::testing::Values(SIGSTOP, SIGKILL),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::string(info.param == SIGSTOP ? "Hung" : "Killed");
                         });

}  // namespace
}  // namespace hyb::worker
