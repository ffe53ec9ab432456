// Distillation on several GPUs of one machine (NCCL between the ranks), against one GPU: pipeline
// 2 on 2 GPUs, pipeline 2 x data 2 and pipeline 4 on 4 GPUs give the same losses as one GPU
// within bf16 tolerance. Skips with the reason when the machine has fewer GPUs or no mpirun.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>

#include "hyb/common/json_util.h"
#include "testing/temp_dir.h"
#include "worker/test_model.h"

namespace hyb {
namespace {

std::pair<int, std::string> Shell(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(("NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " +
                     cmd + " 2>&1")
                        .c_str(),
                    "r");
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// Runs the tiny job on `gpus` ranks with the given shape; returns the per-layer final losses.
std::vector<double> Losses(const hyb::testing::TempDir& dir, int gpus, int pipeline, int data,
                           const std::string& store) {
  Json job = Json::parse(std::ifstream(dir.File("job.json")));
  job["distill"]["parallel"] = {{"pipeline", pipeline}, {"data", data}};
  const std::string path = dir.File("job-" + store + ".json");
  std::ofstream(path) << job.dump(1);
  const std::string cli = std::getenv("HYB_CLI");
  const std::string cmd =
      gpus == 1 ? cli + " run " + path + " --storage " + dir.File(store)
                : "mpirun -np " + std::to_string(gpus) + " --bind-to none " + cli + " run " + path +
                      " --mpi --storage " + dir.File(store);
  auto [rc, out] = Shell(cmd);
  EXPECT_EQ(rc, 0) << out;
  auto report = ReadJsonFile(dir.File(store + "/tiny/report.json"));
  EXPECT_TRUE(report.ok()) << out;
  std::vector<double> losses;
  if (report.ok()) {
    for (const auto& l : (*report)["distill"]["layers"]) losses.push_back(l["final_mse"]);
  }
  return losses;
}

class MultiGpuTest : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

TEST_P(MultiGpuTest, SameLossesAsOneGpu) {
  const auto [gpus, pipeline, data] = GetParam();
  if (std::getenv("HYB_CLI") == nullptr) GTEST_SKIP() << "HYB_CLI not set (run through ctest)";
  if (!torch::cuda::is_available() || torch::cuda::device_count() < static_cast<size_t>(gpus)) {
    GTEST_SKIP() << "needs " << gpus << " GPUs, this machine has "
                 << (torch::cuda::is_available() ? torch::cuda::device_count() : 0);
  }
  if (Shell("mpirun --version").first != 0) GTEST_SKIP() << "no mpirun";
  hyb::testing::TempDir dir;
  hyb::testing::WriteTinyJob(dir.path(), {{"device", "cuda"},
                                          {"distill", {{"steps", 40}, {"batch_size", 4}}}});
  // Four layers, so that pipeline 4 has a layer per stage.
  hyb::testing::TinyModelSpec spec;
  spec.vocab = 6;
  spec.layers = 4;
  hyb::testing::WriteTinyModel(dir.File("teacher"), spec, 5);
  const auto one = Losses(dir, 1, 1, 1, "one");
  const auto many = Losses(dir, gpus, pipeline, data, "many");
  ASSERT_EQ(one.size(), many.size());
  for (size_t l = 0; l < one.size(); ++l) {
    // bf16 compute: the replicas' sums and the stages' streams round differently.
    EXPECT_NEAR(many[l], one[l], 0.02 * std::abs(one[l]) + 1e-3) << "layer " << l;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, MultiGpuTest,
                         ::testing::Values(std::make_tuple(2, 2, 1), std::make_tuple(4, 2, 2),
                                           std::make_tuple(4, 4, 1)));

}  // namespace
}  // namespace hyb
