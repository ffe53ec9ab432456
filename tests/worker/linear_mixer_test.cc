#include "hyb/worker/linear_mixer.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sys/stat.h>

#include <algorithm>

#include "hyb/storage/atomic_file.h"
#include "hyb/worker/decoder_model.h"
#include "hyb/worker/tensor_io.h"
#include "testing/temp_dir.h"
#include "worker/test_model.h"

namespace hyb::worker {
namespace {

using hyb::testing::TempDir;

const std::vector<LinearMixerType> kTypes = {LinearMixerType::kGatedDeltaNet,
                                             LinearMixerType::kGla, LinearMixerType::kLinearElu};

LinearMixerOptions Options(LinearMixerType type, int64_t chunk = 4) {
  LinearMixerOptions o;
  o.type = type;
  o.chunk_size = chunk;
  o.gate_rank = 4;
  return o;
}

testing::TinyModelSpec Spec() {
  testing::TinyModelSpec s;  // llama, GQA 4 heads over 2, head dim 8
  s.layers = 3;
  return s;
}

const SoftmaxAttentionMixer& Teacher(const DecoderModel& m, int64_t l) {
  return dynamic_cast<const SoftmaxAttentionMixer&>(m.mixer(l));
}

std::unique_ptr<DecoderModel> LoadTiny(const TempDir& dir, uint64_t seed,
                                       testing::TinyModelSpec spec = Spec()) {
  testing::WriteTinyModel(dir.path(), spec, seed);
  auto m = DecoderModel::Load(dir.path(), {});
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return std::move(m).value();
}

// Largest difference relative to the reference's scale (at least 1). Chunked, recurrent and
// step forms sum in different orders, so fp32 results differ by rounding that grows with depth
// and varies with the CPU's vector width; a wrong state or decay is off by orders more.
double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>() / std::max(1.0, b.abs().max().item<double>());
}

TEST(LinearMixerTest, IncrementalEqualsFullForEveryType) {
  TempDir dir;
  auto model = LoadTiny(dir, 1);
  at::NoGradGuard no_grad;
  torch::manual_seed(2);
  const at::Tensor x = at::randn({2, 11, 32});
  for (auto type : kTypes) {
    auto mixer = LinearMixer::Transfer(Teacher(*model, 0).shape(), Teacher(*model, 0).weights(),
                                       Options(type));
    const at::Tensor full = mixer->Forward(x, {}, nullptr);
    auto state = mixer->NewState();
    std::vector<at::Tensor> parts;
    parts.push_back(mixer->Forward(x.narrow(1, 0, 6), {}, state.get()));  // chunked prefill
    for (int64_t t = 6; t < 11; ++t) parts.push_back(mixer->Forward(x.narrow(1, t, 1), {}, state.get()));
    EXPECT_LT(MaxDiff(at::cat(parts, 1), full), 1e-5) << LinearMixerTypeName(type);
    EXPECT_GT(state->Bytes(), 0);
    // Chunk size does not change the result.
    auto other = LinearMixer::Transfer(Teacher(*model, 0).shape(), Teacher(*model, 0).weights(),
                                       Options(type, 64));
    EXPECT_LT(MaxDiff(other->Forward(x, {}, nullptr), full), 1e-5) << LinearMixerTypeName(type);
  }
}

TEST(LinearMixerTest, TransferExpandsGqaHeadsAndCopies) {
  TempDir dir;
  auto model = LoadTiny(dir, 3);
  const auto& t = Teacher(*model, 1);
  auto mixer = LinearMixer::Transfer(t.shape(), t.weights(), Options(LinearMixerType::kGatedDeltaNet));
  std::map<std::string, at::Tensor> p;
  for (const auto& [n, v] : mixer->NamedTensors()) p[n] = v;
  const at::Tensor k = p.at("linear_attn.k_proj.weight");  // [4 heads * 8, 32]
  ASSERT_EQ(k.sizes(), (std::vector<int64_t>{32, 32}));
  // Query heads 0 and 1 share teacher kv head 0; heads 2 and 3 share kv head 1.
  EXPECT_TRUE(at::equal(k.narrow(0, 0, 8), t.weights().k_proj.narrow(0, 0, 8)));
  EXPECT_TRUE(at::equal(k.narrow(0, 8, 8), t.weights().k_proj.narrow(0, 0, 8)));
  EXPECT_TRUE(at::equal(k.narrow(0, 16, 8), t.weights().k_proj.narrow(0, 8, 8)));
  EXPECT_TRUE(at::equal(p.at("linear_attn.q_proj.weight"), t.weights().q_proj));
  EXPECT_TRUE(at::equal(p.at("linear_attn.o_proj.weight"), t.weights().o_proj));
  // A copy, not an alias of the teacher.
  EXPECT_NE(p.at("linear_attn.q_proj.weight").data_ptr(), t.weights().q_proj.data_ptr());
  // Output gate starts at 1: silu(bias) with zero weight.
  EXPECT_NEAR(at::silu(p.at("linear_attn.g_proj.bias")).mean().item<double>(), 1.0, 1e-6);
}

// Weight transfer must give a better starting point for distillation than random q/k/v/o:
// MSE(mixer(x_l), teacher_out_l) over every layer's captured attention input and output. With
// the output-scale calibration it must also beat the trivial predictor (zeros).
TEST(LinearMixerTest, TransferStartsWithLowerDistillationLossThanRandom) {
  TempDir dir;
  auto model = LoadTiny(dir, 4);
  at::NoGradGuard no_grad;
  const at::Tensor ids = at::randint(0, 41, {4, 24}, at::kLong);
  LayerTaps taps;
  ASSERT_TRUE(model->Forward(ids, nullptr, &taps).ok());
  for (auto type : kTypes) {
    double transfer = 0, calibrated = 0, random = 0, zero = 0;
    for (int64_t l = 0; l < model->num_layers(); ++l) {
      const auto& t = Teacher(*model, l);
      const at::Tensor& x = taps.mixer_input[static_cast<size_t>(l)];
      const at::Tensor& y = taps.mixer_output[static_cast<size_t>(l)];
      auto mixer = LinearMixer::Transfer(t.shape(), t.weights(), Options(type, 8));
      transfer += at::mse_loss(mixer->Forward(x, {}, nullptr), y).item<double>();
      mixer->CalibrateOutputScale(x, y);
      calibrated += at::mse_loss(mixer->Forward(x, {}, nullptr), y).item<double>();
      zero += y.pow(2).mean().item<double>();
      for (uint64_t seed = 0; seed < 3; ++seed) {
        auto r = LinearMixer::Random(t.shape(), Options(type, 8), false, false, seed, at::kFloat,
                                     at::kCPU);
        random += at::mse_loss(r->Forward(x, {}, nullptr), y).item<double>() / 3;
      }
    }
    std::cout << LinearMixerTypeName(type) << ": initial distillation MSE: transfer " << transfer / 3
              << ", transfer + calibrated scale " << calibrated / 3 << ", random " << random / 3
              << ", zero output " << zero / 3 << "\n";
    EXPECT_LT(transfer, random) << LinearMixerTypeName(type);
    EXPECT_LE(calibrated, transfer * (1 + 1e-9)) << LinearMixerTypeName(type);
    EXPECT_LT(calibrated, zero) << LinearMixerTypeName(type);
  }
}

TEST(LinearMixerTest, EveryParameterIsTrainable) {
  TempDir dir;
  auto model = LoadTiny(dir, 5);
  torch::manual_seed(6);
  const at::Tensor x = at::randn({2, 9, 32});
  for (auto type : kTypes) {
    auto mixer = LinearMixer::Transfer(Teacher(*model, 0).shape(), Teacher(*model, 0).weights(),
                                       Options(type));
    std::vector<at::Tensor> params = mixer->Parameters();
    for (auto& p : params) p.set_requires_grad(true);
    const at::Tensor loss = mixer->Forward(x, {}, nullptr).pow(2).mean();
    const auto grads = torch::autograd::grad({loss}, params, {}, false, false, true);
    const auto named = mixer->NamedTensors();
    for (size_t i = 0; i < params.size(); ++i) {
      ASSERT_TRUE(grads[i].defined()) << named[i].first;
      EXPECT_TRUE(at::isfinite(grads[i]).all().item<bool>()) << named[i].first;
      // gk_proj.0 feeds gk_proj.1, whose weight starts at zero: no gradient at the first step.
      if (named[i].first != "linear_attn.gk_proj.0.weight") {
        EXPECT_GT(grads[i].abs().sum().item<double>(), 0) << named[i].first;
      }
    }
  }
}

TEST(HybridModelTest, HybridDecodingAndSaveLoadRoundTrip) {
  // One thread: BLAS libraries may split reductions by the threads available at the moment,
  // and the reloaded model must reproduce the logits bit for bit.
  at::set_num_threads(1);
  for (auto type : kTypes) {
    TempDir dir;
    auto spec = Spec();
    spec.family = "qwen2";  // biases are transferred too
    auto model = LoadTiny(dir, 7, spec);
    for (int64_t l : {0, 2}) {
      model->SetMixer(l, LinearMixer::Transfer(Teacher(*model, l).shape(),
                                               Teacher(*model, l).weights(), Options(type)));
    }
    at::NoGradGuard no_grad;
    const at::Tensor ids = at::randint(0, 41, {2, 13}, at::kLong);
    const at::Tensor full = *model->Forward(ids);
    // Incremental generation state: KV caches and recurrent states side by side.
    DecodeState state = model->NewDecodeState();
    std::vector<at::Tensor> parts;
    parts.push_back(*model->Forward(ids.narrow(1, 0, 5), &state));
    for (int64_t t = 5; t < 13; ++t) parts.push_back(*model->Forward(ids.narrow(1, t, 1), &state));
    EXPECT_LT(MaxDiff(at::cat(parts, 1), full), 5e-5) << LinearMixerTypeName(type);
    EXPECT_NE(dynamic_cast<LinearState*>(state.layers[0].get()), nullptr);

    const std::string out = dir.File("hybrid");
    ASSERT_TRUE(model->Save(out).ok());
    EXPECT_EQ(model->Save(out).code(), StatusCode::kFailedPrecondition);  // never overwrites
    const Json config = *ReadJsonFile(out + "/config.json");
    EXPECT_EQ(config["layer_types"],
              Json({"linear_attention", "full_attention", "linear_attention"}));
    EXPECT_EQ(config["linear_attention"]["mixer"], LinearMixerTypeName(type));
    auto reloaded = DecoderModel::Load(out, {});
    ASSERT_TRUE(reloaded.ok()) << reloaded.status().ToString();
    EXPECT_EQ((*reloaded)->mixer(0).LayerType(), "linear_attention");
    EXPECT_EQ((*reloaded)->mixer(1).LayerType(), "full_attention");
    EXPECT_TRUE(at::equal(*(*reloaded)->Forward(ids), full)) << LinearMixerTypeName(type);
    // The hybrid stores no softmax weights for its linear layers.
    auto names = storage::Checkpoint::Open(out)->Names();
    EXPECT_EQ(std::count(names.begin(), names.end(), "model.layers.0.self_attn.q_proj.weight"), 0);
    EXPECT_EQ(std::count(names.begin(), names.end(), "model.layers.0.linear_attn.q_proj.bias"), 1);
  }
}

TEST(HybridModelTest, ConfigErrors) {
  TempDir dir;
  testing::WriteTinyModel(dir.path(), Spec(), 8);
  Json config = *ReadJsonFile(dir.File("config.json"));
  config["layer_types"] = {"full_attention", "linear_attention", "full_attention"};
  auto parsed = ParseModelConfig(config, "config.json");
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("'linear_attention' is required"), std::string::npos);
  config["linear_attention"] = {{"mixer", "mamba"}};
  parsed = ParseModelConfig(config, "config.json");
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("'mamba' is not a known mixer"), std::string::npos);
  config["linear_attention"] = {{"mixer", "gla"}, {"chunk", 4}};
  parsed = ParseModelConfig(config, "config.json");
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("'chunk' is not a known field"), std::string::npos);
  config["linear_attention"] = {{"mixer", "gla"}, {"chunk_size", 4}, {"gate_rank", 4}};
  parsed = ParseModelConfig(config, "config.json");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->num_linear_layers(), 1);
  EXPECT_EQ(parsed->linear_mixer->type, LinearMixerType::kGla);
  // A hybrid config over the teacher's weights: the linear layer's tensors are missing.
  ASSERT_TRUE(storage::AtomicWriteString(dir.File("config.json"), config.dump()).ok());
  auto m = DecoderModel::Load(dir.path(), {});
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("missing tensor 'model.layers.1.linear_attn."),
            std::string::npos)
      << m.status().message();
}

}  // namespace
}  // namespace hyb::worker
