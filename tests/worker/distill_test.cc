#include "hyb/worker/distill.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sys/stat.h>

#include <fstream>

#include "hyb/storage/token_dataset.h"
#include "hyb/worker/attention_mixer.h"
#include "testing/temp_dir.h"
#include "worker/test_model.h"

namespace hyb::worker {
namespace {

using hyb::testing::TempDir;

std::shared_ptr<const DecoderModel> Teacher(const TempDir& dir) {
  hyb::testing::TinyModelSpec spec;
  spec.layers = 3;
  ::mkdir(dir.File("teacher").c_str(), 0755);
  hyb::testing::WriteTinyModel(dir.File("teacher"), spec, 11);
  auto m = DecoderModel::Load(dir.File("teacher"), {});
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return std::shared_ptr<const DecoderModel>(std::move(m).value());
}

std::shared_ptr<const storage::TokenDataset> Data(const TempDir& dir) {
  if (auto existing = storage::TokenDataset::Open(dir.File("data")); existing.ok()) {
    return *existing;
  }
  hyb::testing::WriteRandomTokenData(dir.File("data"), 41, 40, 60);
  return *storage::TokenDataset::Open(dir.File("data"));
}

DistillOptions Small() {
  DistillOptions o;
  o.steps = 10;
  o.batch_size = 2;
  o.sequence_length = 16;
  o.checkpoint_every = 3;
  o.log_every = 2;
  o.lr = 3e-3;
  o.warmup_steps = 2;
  return o;
}

std::unique_ptr<BlockwiseDistiller> Make(const TempDir& dir, const std::string& ckpt,
                                         const DistillOptions& o = Small()) {
  LinearMixerOptions mixer;
  auto d = BlockwiseDistiller::Create(Teacher(dir), {0, 1, 2}, mixer, o, Data(dir), ckpt);
  EXPECT_TRUE(d.ok()) << d.status().ToString();
  return std::move(d).value();
}

void ExpectSameTraining(const BlockwiseDistiller& a, const BlockwiseDistiller& b) {
  ASSERT_EQ(a.states().size(), b.states().size());
  for (size_t i = 0; i < a.states().size(); ++i) {
    const auto& sa = a.states()[i];
    const auto& sb = b.states()[i];
    EXPECT_EQ(sa.step, sb.step);
    EXPECT_EQ(sa.cursor.ToJson(), sb.cursor.ToJson());
    ASSERT_EQ(sa.curve.size(), sb.curve.size()) << "layer " << sa.layer;
    for (size_t k = 0; k < sa.curve.size(); ++k) {
      EXPECT_EQ(sa.curve[k].step, sb.curve[k].step);
      EXPECT_EQ(sa.curve[k].mse, sb.curve[k].mse) << "layer " << sa.layer << " point " << k;
      EXPECT_EQ(sa.curve[k].nmse, sb.curve[k].nmse);
    }
    const auto ta = a.mixer(sa.layer)->NamedTensors();
    const auto tb = b.mixer(sb.layer)->NamedTensors();
    ASSERT_EQ(ta.size(), tb.size());
    for (size_t k = 0; k < ta.size(); ++k) {
      EXPECT_TRUE(at::equal(ta[k].second, tb[k].second)) << ta[k].first << " layer " << sa.layer;
    }
  }
}

void CopyFile(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  std::ofstream out(to, std::ios::binary);
  out << in.rdbuf();
}

// A run that crashes and resumes, even with one layer's checkpoint older than the others',
// ends with the same losses and bitwise the same weights as an uninterrupted run.
TEST(DistillTest, ResumedRunEqualsUninterruptedRun) {
  at::set_num_threads(1);
  TempDir dir;
  auto whole = Make(dir, dir.File("whole"));
  ASSERT_TRUE(whole->Run().ok());
  for (const auto& s : whole->states()) {
    EXPECT_EQ(s.step, 10);
    EXPECT_EQ(s.curve.size(), 6u);  // steps 1, 2, 4, 6, 8, 10
  }

  const std::string ckpt = dir.File("resumed");
  {
    auto first = Make(dir, ckpt);
    ASSERT_TRUE(first->Run(nullptr, /*stop_after_step=*/4).ok());  // checkpoint at 3 only
  }
  CopyFile(ckpt + "/layer_0.safetensors", dir.File("layer_0_step3"));
  EXPECT_EQ((*ReadDistillCheckpointInfo(ckpt + "/layer_0.safetensors"))["step"], 3);
  {
    auto second = Make(dir, ckpt);
    EXPECT_EQ(second->states()[0].step, 3);
    ASSERT_TRUE(second->Run(nullptr, 7).ok());  // checkpoint at 6; steps 7 lost
  }
  // Layer 0 falls back to step 3: the stream restarts there and layers 1 and 2 wait for it.
  CopyFile(dir.File("layer_0_step3"), ckpt + "/layer_0.safetensors");
  auto third = Make(dir, ckpt);
  EXPECT_EQ(third->states()[0].step, 3);
  EXPECT_EQ(third->states()[1].step, 6);
  int64_t progress_calls = 0;
  ASSERT_TRUE(third->Run([&](int64_t, const auto&) { return ++progress_calls > 0; }).ok());
  EXPECT_EQ(progress_calls, 7);  // steps 4..10
  ExpectSameTraining(*whole, *third);
  // The published files hold the final state.
  auto reloaded = Make(dir, ckpt);
  ExpectSameTraining(*whole, *reloaded);
}

// Distillation lowers every layer's loss and leaves the teacher untouched; fp32 and bf16
// compute both train. Checkpointed mixers reload with identical outputs.
TEST(DistillTest, TrainsEveryLayerAndFreezesTheTeacher) {
  TempDir dir;
  auto teacher = Teacher(dir);
  const at::Tensor ids = torch::randint(0, 41, {1, 9}, at::kLong);
  const at::Tensor before = teacher->Forward(ids)->clone();
  for (const std::string dtype : {"fp32", "bf16"}) {
    DistillOptions o = Small();
    o.steps = 60;
    o.checkpoint_every = 60;
    o.lr = 1e-2;
    o.batch_size = 4;
    o.compute_dtype = dtype;
    LinearMixerOptions mixer;
    auto d = BlockwiseDistiller::Create(teacher, {0, 1, 2}, mixer, o, Data(dir),
                                        dir.File("ckpt_" + dtype));
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    ASSERT_TRUE((*d)->Run().ok());
    for (const auto& s : (*d)->states()) {
      // Average of the last three logged points against the first: a clear drop.
      const auto& c = s.curve;
      const double late = (c[c.size() - 1].nmse + c[c.size() - 2].nmse + c[c.size() - 3].nmse) / 3;
      EXPECT_LT(late, 0.8 * c.front().nmse) << dtype << " layer " << s.layer;
      EXPECT_GT(c.front().mse, 0);
    }
    const auto* att = dynamic_cast<const SoftmaxAttentionMixer*>(&teacher->mixer(1));
    auto loaded = LoadDistilledMixer(dir.File("ckpt_" + dtype) + "/layer_1.safetensors",
                                     att->shape(), teacher->placement());
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    at::NoGradGuard no_grad;
    const at::Tensor x = torch::randn({1, 7, 32});
    EXPECT_TRUE(
        at::equal((*loaded)->Forward(x, {}, nullptr), (*d)->mixer(1)->Forward(x, {}, nullptr)));
  }
  EXPECT_TRUE(at::equal(*teacher->Forward(ids), before));
}

TEST(DistillTest, BadCheckpointsAndOptionsAreClearErrors) {
  TempDir dir;
  const std::string ckpt = dir.File("ckpt");
  {
    auto d = Make(dir, ckpt);
    ASSERT_TRUE(d->Run(nullptr, 3).ok());
  }
  // Other mixer options than the checkpoint's.
  LinearMixerOptions gla;
  gla.type = LinearMixerType::kGla;
  auto other = BlockwiseDistiller::Create(Teacher(dir), {0, 1, 2}, gla, Small(), Data(dir), ckpt);
  ASSERT_FALSE(other.ok());
  EXPECT_NE(other.status().message().find("layer_0.safetensors"), std::string::npos)
      << other.status().ToString();
  // A truncated checkpoint.
  {
    std::ofstream f(ckpt + "/layer_2.safetensors", std::ios::binary | std::ios::trunc);
    f << "garbage";
  }
  auto corrupt = BlockwiseDistiller::Create(Teacher(dir), {0, 1, 2}, LinearMixerOptions{}, Small(),
                                            Data(dir), ckpt);
  ASSERT_FALSE(corrupt.ok());
  EXPECT_NE(corrupt.status().message().find("layer_2.safetensors"), std::string::npos)
      << corrupt.status().ToString();
  // Bad options and layers.
  DistillOptions bad = Small();
  bad.lr = 0;
  EXPECT_EQ(BlockwiseDistiller::Create(Teacher(dir), {0}, {}, bad, Data(dir), dir.File("x"))
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  auto out_of_range =
      BlockwiseDistiller::Create(Teacher(dir), {3}, {}, Small(), Data(dir), dir.File("y"));
  EXPECT_NE(out_of_range.status().message().find("layer 3"), std::string::npos);
}

}  // namespace
}  // namespace hyb::worker
