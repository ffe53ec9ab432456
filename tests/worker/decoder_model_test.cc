#include "hyb/worker/decoder_model.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "hyb/storage/atomic_file.h"
#include "hyb/worker/attention_mixer.h"
#include "hyb/worker/linear_mixer.h"
#include "hyb/worker/tensor_io.h"
#include "testing/temp_dir.h"
#include "worker/test_model.h"

namespace hyb::worker {
namespace {

using hyb::testing::TempDir;
using hyb::testing::TinyModelSpec;

struct NamedSpec {
  std::string label;
  TinyModelSpec spec;
};

// The variants every family-level test runs on: each feature of issue 2's list at least once.
std::vector<NamedSpec> Variants() {
  std::vector<NamedSpec> v;
  TinyModelSpec llama;  // GQA 4/2, untied
  v.push_back({"llama_gqa", llama});
  TinyModelSpec llama3 = llama;
  llama3.tie = true;
  llama3.attention_bias = true;
  llama3.extra = {{"rope_theta", 500000.0},
                  {"rope_scaling",
                   {{"rope_type", "llama3"},
                    {"factor", 8.0},
                    {"low_freq_factor", 1.0},
                    {"high_freq_factor", 4.0},
                    {"original_max_position_embeddings", 16}}}};
  v.push_back({"llama3_tied_bias", llama3});
  TinyModelSpec qwen2;
  qwen2.family = "qwen2";
  qwen2.kv_heads = 1;
  qwen2.extra = {
      {"use_sliding_window", true},
      {"sliding_window", 3},
      {"max_window_layers", 1},
      {"layer_types", {"full_attention", "sliding_attention"}},
      {"rope_parameters", {{"rope_type", "linear"}, {"factor", 2.0}, {"rope_theta", 1e4}}}};
  v.push_back({"qwen2_bias_sliding_linear", qwen2});
  TinyModelSpec qwen3;
  qwen3.family = "qwen3";
  qwen3.head_dim = 16;  // explicit head_dim != hidden / heads
  qwen3.extra = {{"rope_parameters",
                  {{"rope_type", "yarn"},
                   {"factor", 4.0},
                   {"rope_theta", 10000.0},
                   {"original_max_position_embeddings", 32}}}};
  v.push_back({"qwen3_qknorm_yarn", qwen3});
  TinyModelSpec mistral;
  mistral.family = "mistral";
  mistral.kv_heads = 4;
  mistral.extra = {{"sliding_window", 4}};
  v.push_back({"mistral_sliding", mistral});
  return v;
}

at::Tensor RandomIds(int64_t b, int64_t t, int64_t vocab, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randint(0, vocab, {b, t}, gen, at::kLong);
}

TEST(DecoderModelTest, MatchesStraightforwardReference) {
  for (const auto& [label, spec] : Variants()) {
    TempDir dir;
    testing::WriteTinyModel(dir.path(), spec, 11);
    auto model = DecoderModel::Load(dir.path(), {});
    ASSERT_TRUE(model.ok()) << label << ": " << model.status().ToString();
    const at::Tensor ids = RandomIds(2, 9, spec.vocab, 5);
    at::NoGradGuard no_grad;
    auto logits = (*model)->Forward(ids);
    ASSERT_TRUE(logits.ok()) << logits.status().ToString();
    const at::Tensor want = testing::ReferenceLogits(dir.path(), ids);
    // Errors relative to the largest logit (tied-embedding models have logits ~20).
    const double scale = want.abs().max().item<double>();
    const double err = (logits->to(at::kDouble) - want).abs().max().item<double>() / scale;
    EXPECT_LT(err, 2e-6) << label;  // fp32 model vs double reference
    // In double precision what remains is the rotary tables, computed in fp32 as transformers
    // does (angle error ~1e-7 x position).
    auto model64 = DecoderModel::Load(dir.path(), {"cpu", "fp64"});
    ASSERT_TRUE(model64.ok());
    const double err64 = ((*(*model64)->Forward(ids)) - want).abs().max().item<double>() / scale;
    EXPECT_LT(err64, 1e-6) << label;
  }
}

TEST(DecoderModelTest, KvCacheDecodingEqualsFullForward) {
  for (const auto& [label, spec] : Variants()) {
    TempDir dir;
    testing::WriteTinyModel(dir.path(), spec, 12);
    auto loaded = DecoderModel::Load(dir.path(), {});
    ASSERT_TRUE(loaded.ok()) << label;
    const DecoderModel& model = **loaded;
    at::NoGradGuard no_grad;
    const at::Tensor ids = RandomIds(2, 11, spec.vocab, 6);
    const at::Tensor full = *model.Forward(ids);
    // Prefill 4 tokens, then a chunk of 3, then one at a time.
    DecodeState state = model.NewDecodeState();
    std::vector<at::Tensor> parts;
    parts.push_back(*model.Forward(ids.narrow(1, 0, 4), &state));
    parts.push_back(*model.Forward(ids.narrow(1, 4, 3), &state));
    for (int64_t t = 7; t < 11; ++t) parts.push_back(*model.Forward(ids.narrow(1, t, 1), &state));
    EXPECT_EQ(state.length, 11);
    EXPECT_GT(state.Bytes(), 0);
    const at::Tensor inc = at::cat(parts, 1);
    EXPECT_LT((inc - full).abs().max().item<double>(), 1e-5) << label;
  }
}

TEST(DecoderModelTest, GreedyGenerationMatchesArgmaxOfFullForward) {
  TempDir dir;
  testing::WriteTinyModel(dir.path(), Variants()[3].spec, 13);
  auto model = DecoderModel::Load(dir.path(), {});
  ASSERT_TRUE(model.ok());
  at::NoGradGuard no_grad;
  const at::Tensor prompt = RandomIds(1, 5, 41, 7);
  auto out = (*model)->GenerateGreedy(prompt, 6, {});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ASSERT_EQ(out->size(1), 11);
  // Each generated token is the argmax of a full forward over everything before it.
  for (int64_t t = 5; t < 11; ++t) {
    const at::Tensor logits = *(*model)->Forward(out->narrow(1, 0, t));
    EXPECT_EQ(logits[0][t - 1].argmax().item<int64_t>(), (*out)[0][t].item<int64_t>()) << t;
  }
  // A stop id ends generation right after it appears.
  const int64_t first = (*out)[0][5].item<int64_t>();
  auto stopped = (*model)->GenerateGreedy(prompt, 6, {first});
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ(stopped->size(1), 6);
}

// Batched greedy generation (prompt prefilled in pieces, then positioned steps on caches sized
// for the whole generation) equals, row by row, the argmax of full forwards over everything
// before each token: every attention variant (GQA, sliding windows, q/k norm), and hybrids
// whose linear layers carry recurrent and convolution states.
TEST(DecoderModelTest, BatchedGenerationEqualsFullForwardArgmaxForEveryVariant) {
  for (const auto& [label, spec] : Variants()) {
    for (const auto type : {LinearMixerType::kGla, LinearMixerType::kGatedDeltaNet}) {
      TempDir dir;
      testing::WriteTinyModel(dir.path(), spec, 21);
      auto loaded = DecoderModel::Load(dir.path(), {});
      ASSERT_TRUE(loaded.ok()) << label;
      DecoderModel& model = **loaded;
      if (type == LinearMixerType::kGatedDeltaNet || label == "llama_gqa") {
        const auto& att = dynamic_cast<const SoftmaxAttentionMixer&>(model.mixer(0));
        LinearMixerOptions o;
        o.type = type;
        model.SetMixer(0, LinearMixer::Random(att.shape(), o, false, false, 5, at::kFloat, at::kCPU));
      }
      at::NoGradGuard no_grad;
      const at::Tensor prompt = RandomIds(3, 7, spec.vocab, 8);
      for (const int64_t piece : {int64_t{3}, DecoderModel::kPrefillTokens}) {
        auto out = model.GenerateGreedy(prompt, 6, {}, piece);
        ASSERT_TRUE(out.ok()) << label << ": " << out.status().ToString();
        ASSERT_EQ(out->sizes(), (at::IntArrayRef{3, 13})) << label;
        EXPECT_TRUE(at::equal(out->narrow(1, 0, 7), prompt)) << label;
        for (int64_t t = 7; t < 13; ++t) {
          const at::Tensor logits = *model.Forward(out->narrow(1, 0, t));
          EXPECT_TRUE(at::equal(logits.select(1, t - 1).argmax(-1), out->select(1, t)))
              << label << " piece " << piece << " token " << t;
        }
      }
      // A row that produces a stop id keeps it from then on; generation ends when all have.
      auto free_run = *model.GenerateGreedy(prompt, 6, {});
      const int64_t stop = free_run[1][8].item<int64_t>();
      auto stopped = model.GenerateGreedy(prompt, 6, {stop});
      ASSERT_TRUE(stopped.ok());
      for (int64_t r = 0; r < 3; ++r) {
        bool seen = false;
        for (int64_t t = 7; t < stopped->size(1); ++t) {
          const int64_t id = (*stopped)[r][t].item<int64_t>();
          if (seen) EXPECT_EQ(id, stop) << label << " row " << r;
          if (!seen) EXPECT_EQ(id, free_run[r][t].item<int64_t>()) << label << " row " << r;
          seen = seen || id == stop;
        }
      }
    }
  }
}

// Continuing from a state prefilled elsewhere (a Forward, then a tight Clone as the prefix
// cache keeps it) decodes exactly what GenerateGreedy does from the prompt.
TEST(DecoderModelTest, ContinueGreedyFromAClonedStateEqualsGenerateGreedy) {
  TempDir dir;
  testing::WriteTinyModel(dir.path(), Variants()[0].spec, 22);
  auto model = DecoderModel::Load(dir.path(), {});
  ASSERT_TRUE(model.ok());
  at::NoGradGuard no_grad;
  const at::Tensor prompt = RandomIds(2, 6, 41, 9);
  const at::Tensor want = *(*model)->GenerateGreedy(prompt, 5, {});
  DecodeState prefilled = (*model)->NewDecodeState();
  const at::Tensor logits = *(*model)->Forward(prompt, &prefilled);
  DecodeState state;
  state.length = prefilled.length;
  for (const auto& l : prefilled.layers) state.layers.push_back(l->Clone());
  auto got = (*model)->ContinueGreedy(&state, logits.select(1, 5).argmax(-1), 5, {});
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_TRUE(at::equal(*got, want.narrow(1, 6, 5)));
  EXPECT_EQ(state.length, -1);
  EXPECT_EQ((*model)->ContinueGreedy(&state, logits.select(1, 5).argmax(-1), 5, {}).status().code(),
            StatusCode::kFailedPrecondition);
}

// GenerateGreedy's prefill on its own, then ContinueGreedy, decodes exactly what GenerateGreedy
// does (the decoding benchmark times the two apart); a used state is refused.
TEST(DecoderModelTest, PrefillGreedyThenContinueEqualsGenerateGreedy) {
  TempDir dir;
  testing::WriteTinyModel(dir.path(), Variants()[0].spec, 23);
  auto model = DecoderModel::Load(dir.path(), {});
  ASSERT_TRUE(model.ok());
  const at::Tensor prompt = RandomIds(3, 11, 41, 4);
  const at::Tensor want = *(*model)->GenerateGreedy(prompt, 6, {}, /*prefill_tokens=*/9);
  DecodeState state = (*model)->NewDecodeState(11 + 6);
  auto next = (*model)->PrefillGreedy(prompt, &state, /*prefill_tokens=*/9);  // 3 rows x 3 tokens
  ASSERT_TRUE(next.ok()) << next.status().ToString();
  EXPECT_EQ(state.length, 11);
  EXPECT_TRUE(at::equal(next->cpu().squeeze(1), want.select(1, 11)));
  auto got = (*model)->ContinueGreedy(&state, *next, 6, {});
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_TRUE(at::equal(*got, want.narrow(1, 11, 6)));
  EXPECT_EQ((*model)->PrefillGreedy(prompt, &state).status().code(), StatusCode::kInvalidArgument);
  DecodeState fresh = (*model)->NewDecodeState();
  EXPECT_EQ((*model)->PrefillGreedy(RandomIds(1, 4, 1 << 20, 5), &fresh).status().code(),
            StatusCode::kInvalidArgument);  // ids outside the vocabulary
}

TEST(DecoderModelTest, KvCacheGrowsOnDemandAndClonesTight) {
  KvCache cache;
  const at::Tensor k = at::randn({2, 3, 5, 4}), v = at::randn({2, 3, 5, 4});
  auto [k1, v1] = cache.Append(k, v);
  EXPECT_EQ(cache.length(), 5);
  EXPECT_EQ(cache.capacity(), 5);
  auto [k2, v2] = cache.Append(k.narrow(2, 0, 1), v.narrow(2, 0, 1));
  EXPECT_EQ(cache.length(), 6);
  EXPECT_EQ(cache.capacity(), 12);  // doubled: amortised appends
  EXPECT_TRUE(at::equal(k2.narrow(2, 0, 5), k));
  EXPECT_TRUE(at::equal(v2.narrow(2, 5, 1), v.narrow(2, 0, 1)));
  auto clone = cache.Clone();
  EXPECT_EQ(clone->Bytes(), 2 * 2 * 3 * 6 * 4 * 4);  // the six tokens only
  KvCache reserved;
  reserved.Reserve(9);
  reserved.Append(k, v);
  EXPECT_EQ(reserved.capacity(), 9);
  reserved.WriteAt(at::tensor({int64_t{7}}), k.narrow(2, 1, 1), v.narrow(2, 1, 1));
  EXPECT_TRUE(at::equal(reserved.key_buffer().narrow(2, 7, 1), k.narrow(2, 1, 1)));
  EXPECT_EQ(reserved.length(), 5);  // a positioned write leaves the host length alone
}

TEST(DecoderModelTest, TapsExposeMixerInputAndOutput) {
  TempDir dir;
  const TinyModelSpec spec = Variants()[0].spec;
  testing::WriteTinyModel(dir.path(), spec, 14);
  auto model = DecoderModel::Load(dir.path(), {});
  ASSERT_TRUE(model.ok());
  at::NoGradGuard no_grad;
  const at::Tensor ids = RandomIds(2, 6, spec.vocab, 8);
  LayerTaps taps;
  const at::Tensor logits = *(*model)->Forward(ids, nullptr, &taps);
  ASSERT_EQ(taps.mixer_input.size(), 2u);
  auto raw = *LoadTensors(dir.File("model.safetensors"));
  // Layer 0's input is the normalised embedding.
  const at::Tensor emb = at::embedding(raw["model.embed_tokens.weight"], ids);
  const at::Tensor x0 = emb * at::rsqrt(emb.pow(2).mean(-1, true) + 1e-5) *
                        raw["model.layers.0.input_layernorm.weight"];
  EXPECT_LT((taps.mixer_input[0] - x0).abs().max().item<double>(), 1e-5);
  for (int64_t l = 0; l < 2; ++l) {
    EXPECT_EQ(taps.mixer_input[static_cast<size_t>(l)].sizes(), (std::vector<int64_t>{2, 6, 32}));
    // Re-running the layer's mixer on the tapped input reproduces the tapped output.
    auto [cos, sin] = RotaryEmbedding::Create(
                          ParseModelConfig(*ReadJsonFile(dir.File("config.json")), "c")->rope, 8)
                          ->CosSin(0, 6, at::kCPU, at::kFloat);
    MixerContext ctx{0, cos, sin};
    const at::Tensor again =
        (*model)->mixer(l).Forward(taps.mixer_input[static_cast<size_t>(l)], ctx, nullptr);
    EXPECT_TRUE(at::allclose(again, taps.mixer_output[static_cast<size_t>(l)], 1e-6, 1e-6));
  }
  EXPECT_EQ((*model)->mixer(0).LayerType(), "full_attention");
}

// A pluggable mixer: replacing layer 1's mixer with one that outputs zeros must equal a model
// whose layer-1 attention output projection is zero.
class ZeroMixer : public TokenMixer {
 public:
  std::string LayerType() const override { return "linear_attention"; }
  at::Tensor Forward(const at::Tensor& x, const MixerContext&, MixerState*) const override {
    return at::zeros_like(x);
  }
  std::unique_ptr<MixerState> NewState() const override { return std::make_unique<KvCache>(); }
  std::vector<std::pair<std::string, at::Tensor>> NamedTensors() const override { return {}; }
};

TEST(DecoderModelTest, MixersArePluggablePerLayer) {
  TempDir a, b;
  const TinyModelSpec spec = Variants()[0].spec;
  testing::WriteTinyModel(a.path(), spec, 15);
  testing::WriteTinyModel(b.path(), spec, 15);
  auto raw = *LoadTensors(b.File("model.safetensors"));
  raw["model.layers.1.self_attn.o_proj.weight"].zero_();
  NamedTensors t(raw.begin(), raw.end());
  ASSERT_TRUE(SaveTensors(b.File("model.safetensors"), t).ok());
  auto ma = DecoderModel::Load(a.path(), {});
  auto mb = DecoderModel::Load(b.path(), {});
  ASSERT_TRUE(ma.ok() && mb.ok());
  (*ma)->SetMixer(1, std::make_shared<ZeroMixer>());
  at::NoGradGuard no_grad;
  const at::Tensor ids = RandomIds(1, 7, spec.vocab, 9);
  EXPECT_TRUE(at::allclose(*(*ma)->Forward(ids), *(*mb)->Forward(ids), 1e-6, 1e-6));
}

TEST(DecoderModelTest, ShareWeightsSharesStorageButNotMixerSlots) {
  TempDir dir;
  const TinyModelSpec spec = Variants()[0].spec;
  testing::WriteTinyModel(dir.path(), spec, 16);
  auto loaded = DecoderModel::Load(dir.path(), {});
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  const std::unique_ptr<DecoderModel>& teacher = *loaded;
  at::NoGradGuard no_grad;
  const at::Tensor ids = RandomIds(1, 7, spec.vocab, 10);
  const at::Tensor before = *teacher->Forward(ids);

  std::unique_ptr<DecoderModel> view = teacher->ShareWeights();
  // Same storage: every named tensor of the view's layer-0 mixer is the teacher's.
  const auto mine = view->mixer(0).NamedTensors();
  const auto theirs = teacher->mixer(0).NamedTensors();
  ASSERT_EQ(mine.size(), theirs.size());
  for (size_t i = 0; i < mine.size(); ++i) {
    EXPECT_EQ(mine[i].second.data_ptr(), theirs[i].second.data_ptr()) << mine[i].first;
  }
  EXPECT_TRUE(at::equal(*view->Forward(ids), before));
  // Own slots: swapping a mixer in the view leaves the teacher as it was.
  view->SetMixer(1, std::make_shared<ZeroMixer>());
  EXPECT_EQ(teacher->mixer(1).LayerType(), "full_attention");
  EXPECT_FALSE(at::allclose(*view->Forward(ids), before));
  EXPECT_TRUE(at::equal(*teacher->Forward(ids), before));
}

TEST(DecoderModelTest, BadInputsAreClearErrors) {
  TempDir dir;
  testing::WriteTinyModel(dir.path(), Variants()[0].spec, 16);
  auto model = DecoderModel::Load(dir.path(), {});
  ASSERT_TRUE(model.ok());
  at::NoGradGuard no_grad;
  auto r = (*model)->Forward(at::full({1, 3}, 41, at::kLong));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "input_ids must lie in [0, 41), found 41");
  r = (*model)->Forward(at::zeros({3}, at::kLong));
  EXPECT_NE(r.status().message().find("2-D"), std::string::npos);
  r = (*model)->Forward(at::zeros({1, 3}, at::kFloat));
  EXPECT_NE(r.status().message().find("int64"), std::string::npos);
  EXPECT_FALSE(DecoderModel::Load(dir.path(), {"cpu", "int8"}).ok());
  EXPECT_FALSE(DecoderModel::Load(dir.path(), {"tpu", "fp32"}).ok());
  if (!torch::cuda::is_available()) {
    auto cuda = DecoderModel::Load(dir.path(), {"cuda", "fp32"});
    ASSERT_FALSE(cuda.ok());
    EXPECT_NE(cuda.status().message().find("no CUDA device"), std::string::npos);
  }
}

TEST(DecoderModelTest, LoadErrorsNameTheTensor) {
  TempDir dir;
  testing::WriteTinyModel(dir.path(), Variants()[0].spec, 17);
  auto raw = *LoadTensors(dir.File("model.safetensors"));
  raw.erase("model.layers.1.mlp.up_proj.weight");
  raw["model.layers.0.self_attn.k_proj.weight"] = at::zeros({8, 32});
  NamedTensors t(raw.begin(), raw.end());
  ASSERT_TRUE(SaveTensors(dir.File("model.safetensors"), t).ok());
  auto m = DecoderModel::Load(dir.path(), {});
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("'model.layers.0.self_attn.k_proj.weight' has shape [8, 32], "
                                      "expected [16, 32]"),
            std::string::npos)
      << m.status().message();
  raw["model.layers.0.self_attn.k_proj.weight"] = at::zeros({16, 32});
  t.assign(raw.begin(), raw.end());
  ASSERT_TRUE(SaveTensors(dir.File("model.safetensors"), t).ok());
  m = DecoderModel::Load(dir.path(), {});
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("missing tensor 'model.layers.1.mlp.up_proj.weight'"),
            std::string::npos);
}

TEST(DecoderModelTest, Bf16WeightsLoadAndStayClose) {
  TempDir dir;
  const TinyModelSpec spec = Variants()[1].spec;
  testing::WriteTinyModel(dir.path(), spec, 18);
  auto m32 = DecoderModel::Load(dir.path(), {"cpu", "fp32"});
  auto m16 = DecoderModel::Load(dir.path(), {"cpu", "bf16"});
  ASSERT_TRUE(m32.ok() && m16.ok());
  at::NoGradGuard no_grad;
  const at::Tensor ids = RandomIds(1, 8, spec.vocab, 10);
  const at::Tensor a = *(*m32)->Forward(ids);
  const at::Tensor b = *(*m16)->Forward(ids);
  EXPECT_EQ(b.scalar_type(), at::kBFloat16);
  const double rel = ((b.to(at::kFloat) - a).abs().max() / a.abs().max()).item<double>();
  EXPECT_LT(rel, 0.05);  // bf16 keeps ~3 significant digits through two layers
  EXPECT_GT(rel, 0.0);   // and is genuinely computed in bf16
}

// The CLI, as a real process: logits written by `hybridize logits` equal the in-process forward.
TEST(CliTest, LogitsCommandWritesForward) {
  const char* cli = std::getenv("HYB_CLI");
  if (cli == nullptr) GTEST_SKIP() << "HYB_CLI not set (run through ctest)";
  TempDir dir;
  const TinyModelSpec spec = Variants()[2].spec;
  testing::WriteTinyModel(dir.path(), spec, 19);
  const at::Tensor ids = RandomIds(2, 7, spec.vocab, 11);
  ASSERT_TRUE(SaveTensors(dir.File("ids.safetensors"), {{"input_ids", ids}}).ok());
  // Single-threaded on both sides so the comparison can be bitwise.
  at::set_num_threads(1);
  const std::string cmd = "OMP_NUM_THREADS=1 " + std::string(cli) + " logits --model " +
                          dir.path() + " --input " + dir.File("ids.safetensors") + " --output " +
                          dir.File("out.safetensors");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto out = LoadTensors(dir.File("out.safetensors"));
  ASSERT_TRUE(out.ok());
  const at::Tensor logits = out->at("logits");
  EXPECT_EQ(logits.scalar_type(), at::kFloat);
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{2, 7, spec.vocab}));
  at::NoGradGuard no_grad;
  auto model = DecoderModel::Load(dir.path(), {});
  EXPECT_TRUE(at::equal(logits, *(*model)->Forward(ids)));

  // Bad input file: exit code 1 and no output file; a missing flag is a usage error (2).
  ASSERT_TRUE(SaveTensors(dir.File("bad.safetensors"), {{"ids", ids}}).ok());
  const std::string bad = std::string(cli) + " logits --model " + dir.path() + " --input " +
                          dir.File("bad.safetensors") + " --output " +
                          dir.File("bad_out.safetensors") + " 2> " + dir.File("err.txt");
  const int rc = std::system(bad.c_str());
  EXPECT_EQ(WEXITSTATUS(rc), 1);
  EXPECT_FALSE(std::filesystem::exists(dir.File("bad_out.safetensors")));
  const std::string usage = std::string(cli) + " logits --model " + dir.path() + " 2>/dev/null";
  EXPECT_EQ(WEXITSTATUS(std::system(usage.c_str())), 2);
  std::ifstream err(dir.File("err.txt"));
  const std::string text((std::istreambuf_iterator<char>(err)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("no tensor named 'input_ids'"), std::string::npos) << text;
}

TEST(CliTest, GeneratePrintsGreedyTokens) {
  const char* cli = std::getenv("HYB_CLI");
  if (cli == nullptr) GTEST_SKIP() << "HYB_CLI not set (run through ctest)";
  TempDir dir;
  testing::WriteTinyModel(dir.path(), Variants()[0].spec, 20);
  const std::string cmd = std::string(cli) + " generate --model " + dir.path() +
                          " --prompt-ids 3,4,5 --max-new-tokens 4 --stop-ids none > " +
                          dir.File("gen.txt") + " 2>/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::ifstream in(dir.File("gen.txt"));
  std::vector<int64_t> got;
  int64_t x;
  while (in >> x) got.push_back(x);
  auto model = DecoderModel::Load(dir.path(), {});
  at::NoGradGuard no_grad;
  const at::Tensor want =
      *(*model)->GenerateGreedy(torch::tensor({3, 4, 5}, at::kLong).view({1, 3}), 4, {});
  ASSERT_EQ(got.size(), 4u);
  for (int64_t i = 0; i < 4; ++i)
    EXPECT_EQ(got[static_cast<size_t>(i)], want[0][3 + i].item<int64_t>());
}

}  // namespace
}  // namespace hyb::worker
