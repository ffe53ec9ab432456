// GPU tests (ctest label `gpu`): the CUDA kernels against the CPU reference, and the model
// runtime on CUDA against CPU. Each skips with a reason when no CUDA device is present.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <cmath>
#include <cstdlib>

#include "hyb/kernels/attention.h"
#include "hyb/kernels/cuda_ops.h"
#include "hyb/kernels/linear_attention.h"
#include "hyb/kernels/norm.h"
#include "hyb/worker/attention_mixer.h"
#include "hyb/worker/linear_mixer.h"
#include "hyb/worker/decoder_model.h"
#include "hyb/worker/distill.h"
#include "hyb/storage/token_dataset.h"
#include "testing/temp_dir.h"
#include "worker/test_model.h"

namespace hyb {
namespace {

#define HYB_REQUIRE_CUDA()                                                   \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device present"

TEST(CudaRmsNormTest, MatchesReferenceAcrossShapesAndTypes) {
  HYB_REQUIRE_CUDA();
#ifndef HYB_WITH_CUDA
  GTEST_SKIP() << "built without HYB_CUDA";
#else
  torch::manual_seed(0);
  for (auto type : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{
             {1, 7}, {3, 64}, {129, 1000}, {17, 4096}, {2, 8192}}) {
      const auto opts = at::TensorOptions().device(at::kCUDA).dtype(type);
      const at::Tensor x = (at::randn({rows, cols}, opts.dtype(at::kFloat)) * 3).to(type);
      const at::Tensor w = (1 + 0.1 * at::randn({cols}, opts.dtype(at::kFloat))).to(type);
      ASSERT_TRUE(kernels::cuda::RmsNormSupported(x, w));
      const at::Tensor got = kernels::cuda::RmsNorm(x, w, 1e-5).to(at::kFloat);
      const at::Tensor want = kernels::RmsNormReference(x, w, 1e-5).to(at::kFloat);
      // fp32: reduction order only. bf16/fp16: at most one rounding step of the output type
      // apart (the fp32 inverse norm may differ in its last bit).
      const double ulp = type == at::kFloat ? 1e-6 : (type == at::kBFloat16 ? 1.0 / 128 : 1.0 / 1024);
      const double err = ((got - want).abs() / (want.abs() + 1e-3)).max().item<double>();
      EXPECT_LE(err, 2 * ulp) << c10::toString(type) << " " << rows << "x" << cols;
    }
  }
#endif
}

TEST(CudaRmsNormTest, BlockSizeCoversRow) {
#ifndef HYB_WITH_CUDA
  GTEST_SKIP() << "built without HYB_CUDA";
#else
  EXPECT_EQ(kernels::cuda::RmsNormBlockSize(1), 32);
  EXPECT_EQ(kernels::cuda::RmsNormBlockSize(33), 64);
  EXPECT_EQ(kernels::cuda::RmsNormBlockSize(4096), 1024);
#endif
}

TEST(CudaAttentionTest, FusedMatchesMathPath) {
  HYB_REQUIRE_CUDA();
  torch::manual_seed(1);
  const auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  for (int64_t window : {0, 5}) {
    for (auto [tq, tk] : std::vector<std::pair<int64_t, int64_t>>{{33, 33}, {1, 40}, {6, 40}}) {
      const at::Tensor q = at::randn({2, 8, tq, 64}, opts);
      const at::Tensor k = at::randn({2, 2, tk, 64}, opts);
      const at::Tensor v = at::randn({2, 2, tk, 64}, opts);
      kernels::AttentionOptions o;
      o.q_offset = tk - tq;
      o.sliding_window = window;
      o.scale = 0.125;
      const at::Tensor fused = kernels::SoftmaxAttention(q, k, v, o);
      o.force_math = true;
      const at::Tensor math = kernels::SoftmaxAttention(q, k, v, o);
      EXPECT_LT((fused - math).abs().max().item<double>(), 1e-4) << tq << " " << tk << " " << window;
    }
  }
}

// Causal grouped-query attention over a fresh bf16 sequence, as the teacher forward calls it
// (q, k, v views of [B, T, H, D] projections): SDPA reads each key/value head in place
// (enable_gqa) and agrees with the math path on the repeated heads.
TEST(CudaAttentionTest, GroupedQueryInPlaceMatchesMathPath) {
  HYB_REQUIRE_CUDA();
  torch::manual_seed(2);
  const auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  for (int64_t t : {1, 77, 300}) {
    const at::Tensor q = at::randn({2, t, 12, 128}, opts).transpose(1, 2);
    const at::Tensor k = at::randn({2, t, 2, 128}, opts).transpose(1, 2);
    const at::Tensor v = at::randn({2, t, 2, 128}, opts).transpose(1, 2);
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5)
    // The case the in-place path is for: a fused backend takes it.
    if (t > 1) EXPECT_GE(at::_fused_sdp_choice(q, k, v, {}, 0.0, true, 0.088, true), 1) << t;
#endif
    kernels::AttentionOptions o;
    o.scale = 0.088;
    const at::Tensor fused = kernels::SoftmaxAttention(q, k, v, o);
    o.force_math = true;
    const at::Tensor math = kernels::SoftmaxAttention(q, k, v, o);
    ASSERT_EQ(fused.sizes(), math.sizes());
    // bf16 outputs: one rounding of values of magnitude ~1 apart at most.
    EXPECT_LT((fused.to(at::kFloat) - math.to(at::kFloat)).abs().max().item<double>(), 2e-2) << t;
  }
}

TEST(CudaModelTest, CudaForwardMatchesCpu) {
  HYB_REQUIRE_CUDA();
  testing::TempDir dir;
  testing::TinyModelSpec spec;
  spec.family = "qwen3";
  spec.head_dim = 16;
  testing::WriteTinyModel(dir.path(), spec, 21);
  auto cpu = worker::DecoderModel::Load(dir.path(), {"cpu", "fp32"});
  auto gpu = worker::DecoderModel::Load(dir.path(), {"cuda", "fp32"});
  ASSERT_TRUE(cpu.ok() && gpu.ok());
  at::NoGradGuard no_grad;
  const at::Tensor ids = at::randint(0, spec.vocab, {2, 24}, at::kLong);
  const at::Tensor a = *(*cpu)->Forward(ids);
  const at::Tensor b = (*(*gpu)->Forward(ids)).to(at::kCPU);
  EXPECT_LT((a - b).abs().max().item<double>(), 1e-4);
  // Incremental decoding on the GPU equals its full forward.
  worker::DecodeState state = (*gpu)->NewDecodeState();
  std::vector<at::Tensor> parts;
  parts.push_back(*(*gpu)->Forward(ids.narrow(1, 0, 20), &state));
  for (int64_t t = 20; t < 24; ++t) parts.push_back(*(*gpu)->Forward(ids.narrow(1, t, 1), &state));
  EXPECT_LT((at::cat(parts, 1).to(at::kCPU) - b).abs().max().item<double>(), 1e-4);
}

}  // namespace
}  // namespace hyb

namespace hyb {
namespace {

TEST(CudaLinearAttentionTest, ChunkedMatchesCpu) {
  HYB_REQUIRE_CUDA();
  torch::manual_seed(4);
  const auto o = at::TensorOptions().dtype(at::kFloat);
  at::Tensor q = at::randn({2, 4, 77, 32}, o), k = at::randn({2, 4, 77, 32}, o);
  k = k / k.norm(2, -1, true);
  const at::Tensor v = at::randn({2, 4, 77, 16}, o), g = -at::rand({2, 4, 77, 32}, o);
  const at::Tensor gh = -at::rand({2, 4, 77}, o), beta = at::rand({2, 4, 77}, o);
  auto cpu = kernels::GatedDeltaChunked(q, k, v, gh, beta, 0.2, {}, 32);
  auto gpu = kernels::GatedDeltaChunked(q.cuda(), k.cuda(), v.cuda(), gh.cuda(), beta.cuda(), 0.2,
                                        {}, 32);
  EXPECT_LT((gpu.output.cpu() - cpu.output).abs().max().item<double>(), 1e-4);
  auto cpu_gla = kernels::GlaChunked(q, k, v, g, 0.2, {}, 32);
  auto gpu_gla = kernels::GlaChunked(q.cuda(), k.cuda(), v.cuda(), g.cuda(), 0.2, {}, 32);
  EXPECT_LT((gpu_gla.output.cpu() - cpu_gla.output).abs().max().item<double>(), 1e-4);
}

TEST(CudaHybridTest, HybridOnCudaMatchesCpuAndDecodes) {
  HYB_REQUIRE_CUDA();
  testing::TempDir dir;
  testing::TinyModelSpec spec;
  spec.layers = 3;
  testing::WriteTinyModel(dir.path(), spec, 30);
  for (const char* mixer : {"gated_deltanet", "gla", "linear_elu"}) {
    Json config = *ReadJsonFile(dir.File("config.json"));
    auto cpu = worker::DecoderModel::Load(dir.path(), {"cpu", "fp32"});
    ASSERT_TRUE(cpu.ok());
    worker::LinearMixerOptions options =
        *worker::ParseLinearMixerOptions(Json{{"mixer", mixer}}, "test");
    const auto& teacher = dynamic_cast<const worker::SoftmaxAttentionMixer&>((*cpu)->mixer(1));
    (*cpu)->SetMixer(1, worker::LinearMixer::Transfer(teacher.shape(), teacher.weights(), options));
    const std::string hybrid = dir.File(std::string("hybrid_") + mixer);
    ASSERT_TRUE((*cpu)->Save(hybrid).ok());
    auto gpu = worker::DecoderModel::Load(hybrid, {"cuda", "fp32"});
    ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
    at::NoGradGuard no_grad;
    const at::Tensor ids = at::randint(0, spec.vocab, {2, 40}, at::kLong);
    const at::Tensor a = *(*cpu)->Forward(ids);
    const at::Tensor b = (*(*gpu)->Forward(ids)).cpu();
    EXPECT_LT((a - b).abs().max().item<double>(), 1e-4) << mixer;
    worker::DecodeState state = (*gpu)->NewDecodeState();
    std::vector<at::Tensor> parts = {*(*gpu)->Forward(ids.narrow(1, 0, 33), &state)};
    for (int64_t t = 33; t < 40; ++t) parts.push_back(*(*gpu)->Forward(ids.narrow(1, t, 1), &state));
    EXPECT_LT((at::cat(parts, 1).cpu() - b).abs().max().item<double>(), 1e-4) << mixer;
  }
}

// Greedy generation on CUDA: captured as a CUDA graph (the default) it produces exactly the
// tokens of the same positioned steps run op by op (HYB_CUDA_GRAPHS=0), for the teacher and for
// hybrids with every mixer type in fp32 and GLA in bf16, batch 3, with a GQA teacher; and in
// fp32 the same tokens as the CPU.
TEST(CudaGenerationTest, GraphCapturedDecodingEqualsEagerAndCpu) {
  HYB_REQUIRE_CUDA();
  testing::TempDir dir;
  testing::TinyModelSpec spec;
  spec.layers = 3;
  testing::WriteTinyModel(dir.path(), spec, 31);
  for (const char* dtype : {"fp32", "bf16"}) {
    for (const char* mixer : {"none", "gated_deltanet", "gla", "linear_elu"}) {
      if (std::string(dtype) == "bf16" && std::string(mixer) != "gla" &&
          std::string(mixer) != "none") {
        continue;
      }
      auto gpu = worker::DecoderModel::Load(dir.path(), {"cuda", dtype});
      auto cpu = worker::DecoderModel::Load(dir.path(), {"cpu", "fp32"});
      ASSERT_TRUE(gpu.ok() && cpu.ok());
      if (std::string(mixer) != "none") {
        const auto options = *worker::ParseLinearMixerOptions(Json{{"mixer", mixer}}, "test");
        for (auto* m : {gpu->get(), cpu->get()}) {
          const auto& att = dynamic_cast<const worker::SoftmaxAttentionMixer&>(m->mixer(1));
          m->SetMixer(1, worker::LinearMixer::Transfer(att.shape(), att.weights(), options));
        }
      }
      at::NoGradGuard no_grad;
      const at::Tensor prompt = at::randint(0, spec.vocab, {3, 70}, at::kLong);
      ::setenv("HYB_CUDA_GRAPHS", "0", 1);
      auto eager = (*gpu)->GenerateGreedy(prompt, 24, {});
      ::unsetenv("HYB_CUDA_GRAPHS");
      auto graphed = (*gpu)->GenerateGreedy(prompt, 24, {});
      ASSERT_TRUE(eager.ok() && graphed.ok()) << eager.status().ToString() << " "
                                              << graphed.status().ToString();
      EXPECT_TRUE(at::equal(*eager, *graphed)) << dtype << " " << mixer;
      if (std::string(dtype) == "fp32") {
        auto on_cpu = (*cpu)->GenerateGreedy(prompt, 24, {});
        ASSERT_TRUE(on_cpu.ok());
        // Equal, unless a near tie of two logits (fp32 rounding on either device) flips one.
        for (int64_t r = 0; r < 3; ++r) {
          for (int64_t t = 70; t < 94; ++t) {
            const int64_t a = (*on_cpu)[r][t].item<int64_t>(), b = (*graphed)[r][t].item<int64_t>();
            if (a == b) continue;
            const at::Tensor l = (*(*cpu)->Forward(graphed->narrow(1, 0, t)))[r][t - 1];
            EXPECT_LT(std::abs(l[a].item<double>() - l[b].item<double>()), 1e-3)
                << mixer << " row " << r << " token " << t;
            break;
          }
        }
      }
      // Stop ids end rows early under the graph as well: row 0's first new token that it had not
      // generated before (an earlier copy would stop the row there instead).
      const at::Tensor row0 = graphed->select(0, 0).cpu();
      auto seen_before = [&](int64_t t) {
        for (int64_t s = 70; s < t; ++s) {
          if (row0[s].item<int64_t>() == row0[t].item<int64_t>()) return true;
        }
        return false;
      };
      int64_t at_t = 71;
      while (at_t < 93 && seen_before(at_t)) ++at_t;
      if (seen_before(at_t)) continue;  // row 0 repeats one token: no stop id to test with
      const int64_t stop = (*graphed)[0][at_t].item<int64_t>();
      auto stopped = (*gpu)->GenerateGreedy(prompt, 24, {stop});
      ASSERT_TRUE(stopped.ok());
      EXPECT_EQ((*stopped)[0][at_t].item<int64_t>(), stop);
      EXPECT_TRUE(at::equal(stopped->narrow(1, 0, at_t).select(0, 0),
                            graphed->narrow(1, 0, at_t).select(0, 0)))
          << dtype << " " << mixer;
    }
  }
}

// Blockwise distillation as `hybridize run` does it on a GPU: bf16 teacher, bf16 compute from
// fp32 masters. Losses are finite and fall, the checkpoints reload on the device, and a resumed
// run ends where an uninterrupted one does (within bf16 noise: GPU kernels are not bitwise
// deterministic).
TEST(CudaDistillTest, Bf16DistillationTrainsAndResumes) {
  HYB_REQUIRE_CUDA();
  testing::TempDir dir;
  testing::TinyModelSpec spec;
  spec.layers = 3;
  spec.hidden = 64;
  spec.heads = 4;
  spec.kv_heads = 2;
  testing::WriteTinyModel(dir.path(), spec, 31);
  storage::TokenDatasetWriter w(dir.File("data"), spec.vocab, {});
  for (int d = 0; d < 64; ++d) {
    std::vector<int64_t> doc;
    for (int i = 0; i < 80; ++i) doc.push_back((d * 13 + i * 7 + i * i) % spec.vocab);
    ASSERT_TRUE(w.AddDocument(doc).ok());
  }
  ASSERT_TRUE(w.Finish().ok());
  auto data = *storage::TokenDataset::Open(dir.File("data"));
  auto teacher = std::shared_ptr<const worker::DecoderModel>(
      std::move(worker::DecoderModel::Load(dir.path(), {"cuda", "bf16"})).value());
  worker::DistillOptions o;
  o.steps = 60;
  o.batch_size = 8;
  o.sequence_length = 32;
  o.lr = 3e-3;
  o.checkpoint_every = 20;
  o.log_every = 5;
  o.compute_dtype = "bf16";
  auto run = [&](const std::string& ckpt, int64_t stop) {
    auto d = worker::BlockwiseDistiller::Create(teacher, {0, 1, 2}, {}, o, data, ckpt);
    EXPECT_TRUE(d.ok()) << d.status().ToString();
    EXPECT_TRUE((*d)->Run(nullptr, stop).ok());
    return std::move(d).value();
  };
  auto whole = run(dir.File("whole"), -1);
  for (const auto& s : whole->states()) {
    const auto& c = s.curve;
    EXPECT_TRUE(std::isfinite(c.back().mse));
    EXPECT_LT(c.back().nmse, 0.8 * c.front().nmse) << "layer " << s.layer;
  }
  run(dir.File("resumed"), 30);  // checkpoint at 20, steps 21-30 lost
  auto resumed = run(dir.File("resumed"), -1);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(resumed->states()[i].step, 60);
    EXPECT_NEAR(resumed->states()[i].curve.back().nmse, whole->states()[i].curve.back().nmse,
                0.05 * whole->states()[i].curve.back().nmse + 1e-3);
  }
  const auto& att = dynamic_cast<const worker::SoftmaxAttentionMixer&>(teacher->mixer(1));
  auto mixer = worker::LoadDistilledMixer(dir.File("whole/layer_1.safetensors"), att.shape(),
                                          teacher->placement());
  ASSERT_TRUE(mixer.ok()) << mixer.status().ToString();
  EXPECT_TRUE((*mixer)->Parameters()[0].is_cuda());
}

}  // namespace
}  // namespace hyb
