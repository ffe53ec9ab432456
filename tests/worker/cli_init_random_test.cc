// `hybridize init-random` as a real process: the directory it writes loads with DecoderModel and
// computes what the independent reference computes from the same files.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>

#include "hyb/storage/checkpoint.h"
#include "hyb/worker/decoder_model.h"
#include "testing/temp_dir.h"
#include "worker/test_model.h"

namespace hyb::worker {
namespace {

using hyb::testing::TempDir;

const std::string kData = HYB_TEST_DATA_DIR;

int RunCli(const std::string& args, const std::string& err_file = "/dev/null") {
  const char* cli = std::getenv("HYB_CLI");
  const std::string cmd = std::string(cli) + " " + args + " > /dev/null 2> " + err_file;
  return WEXITSTATUS(std::system(cmd.c_str()));
}

TEST(CliInitRandomTest, Fp32ModelMatchesTheReferenceForward) {
  if (std::getenv("HYB_CLI") == nullptr) GTEST_SKIP() << "HYB_CLI not set (run through ctest)";
  TempDir tmp;
  const std::string out = tmp.File("m");
  ASSERT_EQ(RunCli("init-random --config " + kData + "/shapes/tiny-llama3.json --tokenizer " + kData +
                "/tokenizers/llama3_style --out " + out + " --dtype fp32 --seed 3 --layers 2"),
            0);
  auto model = DecoderModel::Load(out, {});
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  EXPECT_EQ((*model)->num_layers(), 2);
  EXPECT_TRUE((*model)->config().tie_word_embeddings);
  const at::Tensor ids = at::randint(0, 5000, {2, 7}, at::kLong);
  at::NoGradGuard no_grad;
  auto logits = (*model)->Forward(ids);
  ASSERT_TRUE(logits.ok()) << logits.status().ToString();
  EXPECT_EQ(logits->sizes().vec(), (std::vector<int64_t>{2, 7, 5120}));
  const at::Tensor want = testing::ReferenceLogits(out, ids);
  const double scale = want.abs().max().item<double>();
  EXPECT_GT(scale, 0.0);
  EXPECT_LT((logits->to(at::kDouble) - want).abs().max().item<double>() / scale, 2e-6);
}

TEST(CliInitRandomTest, ShardedBf16QwenLoadsAndRuns) {
  if (std::getenv("HYB_CLI") == nullptr) GTEST_SKIP() << "HYB_CLI not set (run through ctest)";
  TempDir tmp;
  const std::string out = tmp.File("q");
  ASSERT_EQ(RunCli("init-random --config " + kData + "/shapes/tiny-qwen2.json --tokenizer " + kData +
                "/tokenizers/qwen2_style --out " + out + " --shard-bytes 300000 --threads 2"),
            0);
  EXPECT_TRUE(std::filesystem::exists(out + "/model.safetensors.index.json"));
  for (const std::string& dtype : {"bf16", "fp32"}) {
    auto model = DecoderModel::Load(out, {"cpu", dtype});
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    EXPECT_TRUE((*model)->config().qkv_bias);
    at::NoGradGuard no_grad;
    auto logits = (*model)->Forward(at::randint(0, 5000, {1, 5}, at::kLong));
    ASSERT_TRUE(logits.ok()) << logits.status().ToString();
    EXPECT_TRUE(logits->isfinite().all().item<bool>());
    EXPECT_GT(logits->abs().max().item<double>(), 0.0);
  }
}

TEST(CliInitRandomTest, UsageAndInputErrors) {
  if (std::getenv("HYB_CLI") == nullptr) GTEST_SKIP() << "HYB_CLI not set (run through ctest)";
  TempDir tmp;
  const std::string err = tmp.File("err.txt");
  const std::string shape = " --config " + kData + "/shapes/tiny-llama3.json";
  const std::string tok = " --tokenizer " + kData + "/tokenizers/llama3_style";
  EXPECT_EQ(RunCli("init-random" + tok + " --out " + tmp.File("a"), err), 2);
  EXPECT_NE(ReadFileToString(err)->find("--config"), std::string::npos);
  EXPECT_EQ(RunCli("init-random" + shape + tok + " --out " + tmp.File("a") + " --dtype fp16", err),
            1);
  EXPECT_NE(ReadFileToString(err)->find("--dtype"), std::string::npos);
  EXPECT_EQ(RunCli("init-random --config " + tmp.File("none.json") + tok + " --out " + tmp.File("a"),
                err),
            1);
  EXPECT_NE(ReadFileToString(err)->find("none.json"), std::string::npos);
  EXPECT_EQ(RunCli("init-random" + shape + tok + " --out " + tmp.path(), err), 1);
  EXPECT_NE(ReadFileToString(err)->find("already exists"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(tmp.File("a")));
}

}  // namespace
}  // namespace hyb::worker
