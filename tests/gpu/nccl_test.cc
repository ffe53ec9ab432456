// The NCCL communicator on the one-GPU machine: every collective at world size 1, a peer that
// never joins fails the join within the timeout, and a two-stage pipeline distillation with
// both stages on one device (the in-process backend moving CUDA tensors, the closest one GPU
// allows to two NCCL ranks) trains the same mixers as one process within bf16 tolerance.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <torch/torch.h>

#include <thread>

#include "hyb/storage/token_dataset.h"
#include "hyb/worker/communicator.h"
#include "hyb/worker/distill.h"
#include "testing/temp_dir.h"
#include "worker/test_model.h"

namespace hyb::worker {
namespace {

using std::chrono::milliseconds;

bool HaveGpu() { return torch::cuda::is_available() && NcclAvailable(); }

TEST(NcclTest, CollectivesAtWorldSizeOne) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device or no NCCL in this build";
  auto id = NcclNewUniqueId();
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  auto comm = NcclConnect(*id, 0, 1, 0, milliseconds(60000));
  ASSERT_TRUE(comm.ok()) << comm.status().ToString();
  Communicator& c = **comm;
  EXPECT_EQ(c.backend(), "nccl");
  auto opts = at::TensorOptions().device(at::kCUDA, 0);
  at::Tensor f = at::arange(6, opts.dtype(at::kFloat));
  ASSERT_TRUE(c.AllReduce(f).ok());
  EXPECT_TRUE(f.cpu().equal(at::arange(6, at::kFloat)));
  at::Tensor b = at::full({3}, 2.5, opts.dtype(at::kBFloat16));
  ASSERT_TRUE(c.AllReduce(b, ReduceOp::kMax).ok());
  ASSERT_TRUE(c.Broadcast(b, 0).ok());
  EXPECT_EQ(b.cpu().to(at::kFloat)[1].item<float>(), 2.5f);
  ASSERT_TRUE(c.Barrier().ok());
  std::string s = "{\"op\":\"stop\"}";
  // Strings travel as CPU tensors: the NCCL backend refuses them, naming the device rule.
  Status cpu = c.BroadcastString(&s, 0);
  EXPECT_EQ(cpu.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(cpu.message().find("moves tensors on cuda:0 only"), std::string::npos);
  auto sub = c.Split(0, 0, "sub");
  ASSERT_TRUE(sub.ok()) << sub.status().ToString();
  at::Tensor g = at::ones({4}, opts.dtype(at::kFloat));
  ASSERT_TRUE((*sub)->AllReduce(g).ok());
  EXPECT_EQ(g.sum().item<float>(), 4.0f);
  EXPECT_EQ(c.Send(g, 0).code(), StatusCode::kInvalidArgument);  // itself
}

TEST(NcclTest, APeerThatNeverJoinsFailsTheJoinWithinTheTimeout) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device or no NCCL in this build";
  auto id = NcclNewUniqueId();
  ASSERT_TRUE(id.ok());
  const auto start = std::chrono::steady_clock::now();
  auto comm = NcclConnect(*id, 0, 2, 0, milliseconds(3000), "pipeline");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), StatusCode::kUnavailable) << comm.status().ToString();
  EXPECT_NE(comm.status().message().find("did not join"), std::string::npos);
  EXPECT_LT(seconds, 30.0);
}

TEST(NcclTest, TwoStagePipelineOnOneGpuMatchesOneProcess) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  hyb::testing::TempDir dir;
  hyb::testing::TinyModelSpec spec;
  spec.layers = 4;
  spec.hidden = 64;
  spec.heads = 4;
  spec.kv_heads = 2;
  ::mkdir(dir.File("teacher").c_str(), 0755);
  hyb::testing::WriteTinyModel(dir.File("teacher"), spec, 11);
  hyb::testing::WriteRandomTokenData(dir.File("data"), 41, 40, 200);
  DistillOptions o;
  o.steps = 6;
  o.batch_size = 4;
  o.sequence_length = 64;
  o.lr = 1e-3;
  o.compute_dtype = "bf16";
  RuntimeOptions cuda{"cuda", "bf16"};
  auto data = *storage::TokenDataset::Open(dir.File("data"));
  const std::vector<int64_t> layers = {0, 1, 2, 3};
  auto whole = DecoderModel::Load(dir.File("teacher"), cuda);
  ASSERT_TRUE(whole.ok()) << whole.status().ToString();
  auto ref = BlockwiseDistiller::Create(std::shared_ptr<const DecoderModel>(std::move(*whole)),
                                        layers, LinearMixerOptions{}, o, data, dir.File("ref"));
  ASSERT_TRUE(ref.ok());
  ASSERT_TRUE((*ref)->Run().ok());
  auto world = MakeInProcessWorld(2, milliseconds(60000), "pipeline");
  std::vector<std::unique_ptr<BlockwiseDistiller>> stages(2);
  std::vector<Status> status(2);
  std::vector<std::thread> threads;
  for (int s = 0; s < 2; ++s) {
    threads.emplace_back([&, s] {
      const int64_t first = s * 2, last = first + 2;
      auto part = DecoderModel::LoadRange(dir.File("teacher"), cuda, first, last);
      if (!part.ok()) {
        status[s] = part.status();
        return;
      }
      DistillParallel parallel{world[static_cast<size_t>(s)].get(), nullptr, first, last};
      auto d = BlockwiseDistiller::Create(std::shared_ptr<const DecoderModel>(std::move(*part)),
                                          {first, first + 1}, LinearMixerOptions{}, o, data,
                                          dir.File("pipe"), parallel);
      if (!d.ok()) {
        status[s] = d.status();
        return;
      }
      status[s] = (*d)->Run();
      stages[s] = std::move(*d);
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_TRUE(status[0].ok()) << status[0].ToString();
  ASSERT_TRUE(status[1].ok()) << status[1].ToString();
  for (int64_t l : layers) {
    const auto& stage = stages[static_cast<size_t>(l / 2)];
    const auto got = stage->mixer(l)->NamedTensors();
    const auto want = (*ref)->mixer(l)->NamedTensors();
    ASSERT_EQ(got.size(), want.size());
    for (size_t k = 0; k < got.size(); ++k) {
      // Same device, same kernels, same inputs: the stages see exactly the stream one process
      // computes, so the fp32 masters agree to rounding.
      const double diff = (got[k].second - want[k].second).abs().max().item<double>();
      EXPECT_LT(diff, 1e-4) << "layer " << l << " " << got[k].first;
    }
  }
}

}  // namespace
}  // namespace hyb::worker
