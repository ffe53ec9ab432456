// Pipeline- and data-parallel distillation over the in-process communicator: stages that hold
// only their layers, replicas that split each batch, and the same mixers as one process.
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

using hyb::testing::TempDir;
using std::chrono::milliseconds;

constexpr int kLayers = 4;

void WriteTeacher(const TempDir& dir) {
  hyb::testing::TinyModelSpec spec;
  spec.layers = kLayers;
  ::mkdir(dir.File("teacher").c_str(), 0755);
  hyb::testing::WriteTinyModel(dir.File("teacher"), spec, 11);
  hyb::testing::WriteRandomTokenData(dir.File("data"), 41, 40, 60);
}

DistillOptions Options() {
  DistillOptions o;
  o.steps = 8;
  o.batch_size = 4;
  o.sequence_length = 16;
  o.checkpoint_every = 3;
  o.log_every = 2;
  o.lr = 3e-3;
  o.warmup_steps = 2;
  return o;
}

std::vector<int64_t> AllLayers() { return {0, 1, 2, 3}; }

// One process, the whole teacher: the reference.
std::map<std::string, at::Tensor> Reference(const TempDir& dir, const std::string& ckpt) {
  auto teacher = DecoderModel::Load(dir.File("teacher"), {});
  EXPECT_TRUE(teacher.ok());
  auto data = *storage::TokenDataset::Open(dir.File("data"));
  auto d = BlockwiseDistiller::Create(std::shared_ptr<const DecoderModel>(std::move(*teacher)),
                                      AllLayers(), LinearMixerOptions{}, Options(), data, ckpt);
  EXPECT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_TRUE((*d)->Run().ok());
  std::map<std::string, at::Tensor> out;
  for (int64_t l : AllLayers()) {
    for (auto& [name, t] : (*d)->mixer(l)->NamedTensors()) {
      out[std::to_string(l) + "." + name] = t.detach().clone();
    }
  }
  return out;
}

struct GangRun {
  std::vector<Status> status;                     // per rank
  std::map<std::string, at::Tensor> mixers;       // from replica 0 of each stage
  std::vector<std::pair<int64_t, int64_t>> held;  // per rank: the teacher layers it loaded
};

// P stages x D replicas on threads; rank r is stage r / D, replica r % D. `stop_at`: rank 0's
// progress asks to stop after that step.
GangRun RunGang(const TempDir& dir, const std::string& ckpt, int pipeline, int data,
                int64_t stop_at = -1) {
  const int n = pipeline * data;
  auto world = MakeInProcessWorld(n, milliseconds(20000));
  auto stages = BalanceStages(std::vector<int64_t>(kLayers, 100), 10, 10, pipeline);
  EXPECT_TRUE(stages.ok());
  GangRun run;
  run.status.resize(static_cast<size_t>(n));
  run.held.resize(static_cast<size_t>(n));
  std::mutex mu;
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      const int stage = r / data, replica = r % data;
      Communicator& w = *world[static_cast<size_t>(r)];
      std::unique_ptr<Communicator> pipe, rep;
      if (pipeline > 1) pipe = std::move(w.Split(replica, stage, "pipeline")).value();
      if (data > 1) rep = std::move(w.Split(stage, replica, "replicas")).value();
      const auto [first, last] = (*stages)[static_cast<size_t>(stage)];
      auto teacher = DecoderModel::LoadRange(dir.File("teacher"), {}, first, last);
      if (!teacher.ok()) {
        run.status[static_cast<size_t>(r)] = teacher.status();
        return;
      }
      run.held[static_cast<size_t>(r)] = {(*teacher)->first_layer(), (*teacher)->last_layer()};
      std::vector<int64_t> layers;
      for (int64_t l = first; l < last; ++l) layers.push_back(l);
      DistillParallel parallel{pipe.get(), rep.get(), first, last};
      auto d = BlockwiseDistiller::Create(std::shared_ptr<const DecoderModel>(std::move(*teacher)),
                                          layers, LinearMixerOptions{}, Options(),
                                          *storage::TokenDataset::Open(dir.File("data")), ckpt,
                                          parallel);
      if (!d.ok()) {
        run.status[static_cast<size_t>(r)] = d.status();
        return;
      }
      run.status[static_cast<size_t>(r)] =
          (*d)->Run([&](int64_t step, const std::vector<LayerDistillState>&) {
            return stop_at < 0 || step < stop_at;
          });
      if (replica == 0) {
        std::lock_guard<std::mutex> lock(mu);
        for (int64_t l : layers) {
          for (auto& [name, t] : (*d)->mixer(l)->NamedTensors()) {
            run.mixers[std::to_string(l) + "." + name] = t.detach().clone();
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  return run;
}

void ExpectSameMixers(const std::map<std::string, at::Tensor>& want,
                      const std::map<std::string, at::Tensor>& got) {
  ASSERT_EQ(want.size(), got.size());
  for (const auto& [name, t] : want) {
    ASSERT_TRUE(got.count(name)) << name;
    const double diff = (got.at(name) - t).abs().max().item<double>();
    // fp32: the replicas' reduction order and the batch split differ from one process's.
    EXPECT_LT(diff, 2e-5) << name;
  }
}

TEST(PipelineDistillTest, BalanceStagesEvensOutParameters) {
  auto two = BalanceStages({10, 10, 10, 10}, 0, 0, 2);
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(*two, (std::vector<std::pair<int64_t, int64_t>>{{0, 2}, {2, 4}}));
  // Heavy embeddings push layers off the first stage.
  auto skewed = BalanceStages({10, 10, 10, 10}, 25, 0, 2);
  ASSERT_TRUE(skewed.ok());
  EXPECT_EQ(*skewed, (std::vector<std::pair<int64_t, int64_t>>{{0, 1}, {1, 4}}));
  EXPECT_EQ(BalanceStages({10, 10}, 0, 0, 3).status().code(), StatusCode::kInvalidArgument);
}

TEST(PipelineDistillTest, StageLoadsOnlyItsLayers) {
  TempDir dir;
  WriteTeacher(dir);
  auto full = DecoderModel::Load(dir.File("teacher"), {});
  auto a = DecoderModel::LoadRange(dir.File("teacher"), {}, 0, 2);
  auto b = DecoderModel::LoadRange(dir.File("teacher"), {}, 2, -1);
  ASSERT_TRUE(full.ok() && a.ok() && b.ok());
  EXPECT_TRUE((*a)->HasLayer(1));
  EXPECT_FALSE((*a)->HasLayer(2));
  EXPECT_EQ((*b)->first_layer(), 2);
  EXPECT_EQ((*b)->last_layer(), kLayers);
  const at::Tensor ids = at::tensor(std::vector<int64_t>{1, 5, 9, 2, 40}).view({1, 5});
  // Two stages chained give the whole model's logits.
  auto h0 = (*a)->Embed(ids);
  ASSERT_TRUE(h0.ok());
  auto h2 = (*a)->ForwardRange(0, 2, *h0);
  ASSERT_TRUE(h2.ok());
  auto h4 = (*b)->ForwardRange(2, kLayers, *h2);
  ASSERT_TRUE(h4.ok());
  auto logits = (*b)->Head(*h4);
  ASSERT_TRUE(logits.ok());
  auto want = (*full)->Forward(ids);
  ASSERT_TRUE(want.ok());
  EXPECT_TRUE(logits->allclose(*want, 1e-5, 1e-5));
  // What a stage cannot do says so.
  EXPECT_EQ((*a)->Forward(ids).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ((*b)->Embed(ids).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ((*a)->Head(*h2).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ((*a)->ForwardRange(1, 3, *h0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(DecoderModel::LoadRange(dir.File("teacher"), {}, 3, 2).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(PipelineDistillTest, TwoStagesEqualOneProcess) {
  TempDir dir;
  WriteTeacher(dir);
  const auto want = Reference(dir, dir.File("ref"));
  GangRun run = RunGang(dir, dir.File("p2"), 2, 1);
  for (const auto& s : run.status) ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(run.held[0], (std::pair<int64_t, int64_t>{0, 2}));
  EXPECT_EQ(run.held[1], (std::pair<int64_t, int64_t>{2, 4}));
  ExpectSameMixers(want, run.mixers);
}

TEST(PipelineDistillTest, TwoStagesTimesTwoReplicasEqualOneProcess) {
  TempDir dir;
  WriteTeacher(dir);
  const auto want = Reference(dir, dir.File("ref"));
  GangRun run = RunGang(dir, dir.File("p2d2"), 2, 2);
  for (const auto& s : run.status) ASSERT_TRUE(s.ok()) << s.ToString();
  ExpectSameMixers(want, run.mixers);
}

TEST(PipelineDistillTest, StopTravelsDownThePipelineAndAResumeFinishesTheSame) {
  TempDir dir;
  WriteTeacher(dir);
  const auto want = Reference(dir, dir.File("ref"));
  GangRun stopped = RunGang(dir, dir.File("ckpt"), 2, 2, /*stop_at=*/4);
  for (const auto& s : stopped.status) {
    EXPECT_EQ(s.code(), StatusCode::kCancelled) << s.ToString();
    EXPECT_NE(s.message().find("stopped at step 4"), std::string::npos) << s.ToString();
  }
  for (int64_t l : AllLayers()) {
    auto info = ReadDistillCheckpointInfo(dir.File("ckpt/layer_" + std::to_string(l) +
                                                   ".safetensors"));
    ASSERT_TRUE(info.ok()) << info.status().ToString();
    EXPECT_EQ((*info)["step"], 4) << "layer " << l;
  }
  // Resumed under another shape: the per-layer checkpoints do not care.
  GangRun resumed = RunGang(dir, dir.File("ckpt"), 2, 1);
  for (const auto& s : resumed.status) ASSERT_TRUE(s.ok()) << s.ToString();
  ExpectSameMixers(want, resumed.mixers);
}

TEST(PipelineDistillTest, AMissingStageFailsWithinTheTimeoutNamingIt) {
  TempDir dir;
  WriteTeacher(dir);
  auto world = MakeInProcessWorld(2, milliseconds(300), "pipeline");
  auto teacher = DecoderModel::LoadRange(dir.File("teacher"), {}, 0, 2);
  ASSERT_TRUE(teacher.ok());
  DistillParallel parallel{world[0].get(), nullptr, 0, 2};
  auto d = BlockwiseDistiller::Create(std::shared_ptr<const DecoderModel>(std::move(*teacher)),
                                      {0, 1}, LinearMixerOptions{}, Options(),
                                      *storage::TokenDataset::Open(dir.File("data")),
                                      dir.File("ckpt"), parallel);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  const auto start = std::chrono::steady_clock::now();
  Status s = (*d)->Run();  // rank 1 never comes
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  EXPECT_NE(s.message().find("waiting for rank 1"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("timed out after 0.3 s"), std::string::npos) << s.ToString();
  EXPECT_LT(seconds, 5.0);
  // A stage's distiller refuses layers outside its range and batches replicas cannot split.
  auto partial = DecoderModel::LoadRange(dir.File("teacher"), {}, 0, 2);
  auto outside = BlockwiseDistiller::Create(
      std::shared_ptr<const DecoderModel>(std::move(*partial)), {2}, LinearMixerOptions{},
      Options(), *storage::TokenDataset::Open(dir.File("data")), dir.File("x"), parallel);
  EXPECT_EQ(outside.status().code(), StatusCode::kInvalidArgument);
  auto three = MakeInProcessWorld(3, milliseconds(300));
  DistillParallel uneven{nullptr, three[0].get(), 0, -1};
  auto whole = DecoderModel::Load(dir.File("teacher"), {});
  auto bad = BlockwiseDistiller::Create(std::shared_ptr<const DecoderModel>(std::move(*whole)),
                                        {0}, LinearMixerOptions{}, Options(),
                                        *storage::TokenDataset::Open(dir.File("data")),
                                        dir.File("y"), uneven);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("batch_size 4 does not split evenly over 3"),
            std::string::npos)
      << bad.status().ToString();
}

}  // namespace
}  // namespace hyb::worker
