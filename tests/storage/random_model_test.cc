// Real model shapes (configs/shapes/), the streaming safetensors and checkpoint writers, and
// random-initialised model directories (hybridize init-random).
#include "hyb/storage/random_model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "hyb/storage/checkpoint.h"
#include "hyb/storage/tokenizer.h"
#include "testing/temp_dir.h"

namespace hyb::storage {
namespace {

using hyb::testing::TempDir;

const std::string kData = HYB_TEST_DATA_DIR;
const std::string kShapes = kData + "/../../configs/shapes";

// Reads a bf16 or fp32 tensor as floats.
std::vector<float> Floats(const TensorView& v) {
  std::vector<float> out(static_cast<size_t>(v.numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    if (v.dtype == DType::kBF16) {
      uint16_t h = 0;
      std::memcpy(&h, v.data + 2 * i, 2);
      const uint32_t u = static_cast<uint32_t>(h) << 16;
      std::memcpy(&out[i], &u, 4);
    } else {
      std::memcpy(&out[i], v.data + 4 * i, 4);
    }
  }
  return out;
}

TEST(ModelShapesTest, RealConfigsParse) {
  struct Want {
    const char* file;
    const char* family;
    int64_t layers, hidden, heads, kv_heads, head_dim, intermediate, vocab;
    bool tied;
    RopeType rope;
  };
  const Want wants[] = {
      {"llama-3.2-1b.json", "llama", 16, 2048, 32, 8, 64, 8192, 128256, true, RopeType::kLlama3},
      {"llama-3.2-3b.json", "llama", 28, 3072, 24, 8, 128, 8192, 128256, true, RopeType::kLlama3},
      {"llama-3.1-8b.json", "llama", 32, 4096, 32, 8, 128, 14336, 128256, false,
       RopeType::kLlama3},
      {"qwen2.5-1.5b.json", "qwen2", 28, 1536, 12, 2, 128, 8960, 151936, true,
       RopeType::kDefault},
  };
  for (const Want& w : wants) {
    SCOPED_TRACE(w.file);
    const std::string path = kShapes + "/" + w.file;
    auto json = ReadJsonFile(path);
    ASSERT_TRUE(json.ok()) << json.status().ToString();
    auto c = ParseModelConfig(*json, path);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->family, w.family);
    EXPECT_EQ(c->num_layers, w.layers);
    EXPECT_EQ(c->hidden_size, w.hidden);
    EXPECT_EQ(c->num_heads, w.heads);
    EXPECT_EQ(c->num_kv_heads, w.kv_heads);
    EXPECT_EQ(c->head_dim, w.head_dim);
    EXPECT_EQ(c->intermediate_size, w.intermediate);
    EXPECT_EQ(c->vocab_size, w.vocab);
    EXPECT_EQ(c->tie_word_embeddings, w.tied);
    EXPECT_EQ(c->rope.type, w.rope);
    EXPECT_EQ(c->qkv_bias, std::string(w.family) == "qwen2");
    EXPECT_EQ((*json)["torch_dtype"], "bfloat16");
  }
  // Parameter counts as published: 1.24 B for Llama-3.2-1B, 8.03 B for Llama-3.1-8B.
  auto count = [&](const char* file) {
    const auto c = *ParseModelConfig(*ReadJsonFile(kShapes + "/" + file), file);
    int64_t n = 0;
    for (const auto& t : RandomModelTensors(c, DType::kBF16)) n += t.layout.nbytes() / 2;
    return n;
  };
  EXPECT_EQ(count("llama-3.2-1b.json"), 1235814400);
  EXPECT_EQ(count("llama-3.1-8b.json"), 8030261248);
}

TEST(StreamingWriterTest, FillsTensorsInChunksAndChecksTheCount) {
  TempDir dir;
  const std::vector<TensorLayout> layouts = {{"b", DType::kF32, {3, 5}},
                                             {"a", DType::kBF16, {7}},
                                             {"c", DType::kI64, {2}}};
  auto fill = [](const TensorLayout& t, FileSink& sink) -> Status {
    // One byte at a time: the writer must not care how the bytes arrive.
    for (uint64_t i = 0; i < t.nbytes(); ++i) {
      const unsigned char b = static_cast<unsigned char>(t.name[0] + i);
      HYB_RETURN_IF_ERROR(sink.Write(&b, 1));
    }
    return Status::Ok();
  };
  const std::string path = dir.File("s.safetensors");
  ASSERT_TRUE(WriteSafetensorsStreaming(Env::Default(), path, layouts, fill, {{"format", "pt"}})
                  .ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->names(), (std::vector<std::string>{"c", "b", "a"}));  // by element size
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  for (const auto& l : layouts) {
    auto v = *(*f)->Get(l.name);
    ASSERT_EQ(v.nbytes, l.nbytes());
    EXPECT_EQ(v.shape, l.shape);
    for (size_t i = 0; i < v.nbytes; ++i) {
      ASSERT_EQ(static_cast<unsigned char>(v.data[i]),
                static_cast<unsigned char>(l.name[0] + i));
    }
  }
  // A filler that writes too little aborts the file.
  const std::string bad = dir.File("bad.safetensors");
  Status s = WriteSafetensorsStreaming(
      Env::Default(), bad, layouts,
      [](const TensorLayout& t, FileSink& sink) {
        std::vector<char> zeros(t.nbytes() - (t.name == "b" ? 1 : 0));
        return sink.Write(zeros.data(), zeros.size());
      });
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  EXPECT_NE(s.message().find("'b'"), std::string::npos) << s.ToString();
  EXPECT_FALSE(std::filesystem::exists(bad));
}

TEST(StreamingWriterTest, ShardsLikeWriteCheckpoint) {
  TempDir dir;
  std::vector<TensorLayout> layouts;
  for (int i = 0; i < 5; ++i) layouts.push_back({"t" + std::to_string(i), DType::kF32, {25}});
  auto fill = [](const TensorLayout& t, FileSink& sink) {
    std::vector<float> v(25, static_cast<float>(t.name[1] - '0'));
    return sink.Write(v.data(), 100);
  };
  ASSERT_TRUE(WriteCheckpointStreaming(Env::Default(), dir.path(), layouts, fill, 250).ok());
  EXPECT_TRUE(std::filesystem::exists(dir.File("model-00001-of-00003.safetensors")));
  EXPECT_TRUE(std::filesystem::exists(dir.File("model-00003-of-00003.safetensors")));
  auto c = Checkpoint::Open(dir.path());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->Names().size(), 5u);
  EXPECT_EQ(Floats(*c->Get("t4"))[24], 4.0f);
}

TEST(RandomModelTest, NormalStreamIsIndependentOfChunking) {
  std::vector<float> whole(1001), part(600);
  RandomNormalValues(7, "w", 1.0f, 0, whole.size(), whole.data());
  RandomNormalValues(7, "w", 1.0f, 401, part.size(), part.data());  // odd start: half a pair
  for (size_t i = 0; i < part.size(); ++i) ASSERT_EQ(part[i], whole[401 + i]) << i;
  std::vector<float> other(1001);
  RandomNormalValues(7, "v", 1.0f, 0, other.size(), other.data());
  EXPECT_NE(other, whole);
}

TEST(RandomModelTest, NormalStreamHasTheRequestedMoments) {
  std::vector<float> v(1 << 20);
  RandomNormalValues(1, "x", 0.02f, 0, v.size(), v.data());
  double sum = 0, sq = 0, within = 0;
  for (float x : v) {
    sum += x;
    sq += static_cast<double>(x) * x;
    within += std::abs(x) < 0.02f ? 1 : 0;
  }
  const double n = static_cast<double>(v.size());
  // Standard errors at n = 2^20: mean 2e-5, std ~1.4e-5, P(|z| < 1) ~5e-4.
  EXPECT_NEAR(sum / n, 0.0, 1e-4);
  EXPECT_NEAR(std::sqrt(sq / n), 0.02, 1e-4);
  EXPECT_NEAR(within / n, 0.6827, 3e-3);
}

struct Written {
  RandomModelSummary summary;
  std::string dir;
};

RandomModelOptions TinyOptions(const TempDir& tmp, const std::string& name) {
  RandomModelOptions o;
  o.config_path = kData + "/shapes/tiny-llama3.json";
  o.tokenizer = kData + "/tokenizers/llama3_style";
  o.out_dir = tmp.File(name);
  return o;
}

std::string ReadAll(const std::string& path) { return *ReadFileToString(path); }

TEST(RandomModelTest, WritesALoadableDirectoryInitialisedAsTransformersDoes) {
  TempDir tmp;
  RandomModelOptions o = TinyOptions(tmp, "m");
  auto s = WriteRandomModel(o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->files, 1);
  // 5120 x 64 tied embeddings + 3 layers of (2 norms + q,o 64x64 + k,v 32x64 + 3 x 128x64) + norm.
  EXPECT_EQ(s->parameters, 5120 * 64 + 3 * (2 * 64 + 2 * 4096 + 2 * 2048 + 3 * 8192) + 64);
  auto config = ReadJsonFile(o.out_dir + "/config.json");
  ASSERT_TRUE(config.ok());
  EXPECT_EQ((*config)["torch_dtype"], "bfloat16");
  // The real ids are beyond this tokenizer: replaced by its own begin/end of text.
  auto tok = *Tokenizer::FromFile(o.out_dir + "/tokenizer.json");
  EXPECT_EQ((*config)["bos_token_id"], *tok->TokenToId("<|begin_of_text|>"));
  EXPECT_EQ((*config)["eos_token_id"], *tok->TokenToId("<|end_of_text|>"));
  EXPECT_EQ((*config)["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(ReadAll(o.out_dir + "/tokenizer.json"), ReadAll(o.tokenizer + "/tokenizer.json"));
  EXPECT_TRUE(ParseModelConfig(*config, "written").ok());

  auto c = Checkpoint::Open(o.out_dir);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_FALSE(c->Contains("lm_head.weight"));  // tied
  auto embed = *c->Get("model.embed_tokens.weight");
  EXPECT_EQ(embed.dtype, DType::kBF16);
  EXPECT_EQ(embed.shape, (std::vector<int64_t>{5120, 64}));
  const std::vector<float> e = Floats(embed);
  double sq = 0;
  for (float x : e) sq += static_cast<double>(x) * x;
  EXPECT_NEAR(std::sqrt(sq / static_cast<double>(e.size())), 0.02, 0.0005);
  // The stored values are the stream's, rounded to bf16.
  std::vector<float> want(4);
  RandomNormalValues(0, "model.embed_tokens.weight", 0.02f, 0, 4, want.data());
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(e[i], want[i], std::abs(want[i]) / 128) << i;
  for (const char* norm : {"model.norm.weight", "model.layers.2.input_layernorm.weight",
                           "model.layers.0.post_attention_layernorm.weight"}) {
    for (float x : Floats(*c->Get(norm))) ASSERT_EQ(x, 1.0f) << norm;
  }
  EXPECT_EQ(c->Get("model.layers.1.self_attn.k_proj.weight")->shape,
            (std::vector<int64_t>{32, 64}));
}

TEST(RandomModelTest, SameSeedSameBytesWhateverTheThreads) {
  TempDir tmp;
  RandomModelOptions a = TinyOptions(tmp, "a"), b = TinyOptions(tmp, "b"),
                     c = TinyOptions(tmp, "c");
  a.threads = 1;
  b.threads = 3;
  c.seed = 1;
  ASSERT_TRUE(WriteRandomModel(a).ok());
  ASSERT_TRUE(WriteRandomModel(b).ok());
  ASSERT_TRUE(WriteRandomModel(c).ok());
  const std::string wa = ReadAll(a.out_dir + "/model.safetensors");
  // (EXPECT_TRUE: a failure would print megabytes.)
  EXPECT_TRUE(wa == ReadAll(b.out_dir + "/model.safetensors"));
  EXPECT_TRUE(wa != ReadAll(c.out_dir + "/model.safetensors"));
  EXPECT_EQ(wa.size(), ReadAll(c.out_dir + "/model.safetensors").size());
}

TEST(RandomModelTest, Fp32LayersOverrideShardsAndQwenBiases) {
  TempDir tmp;
  RandomModelOptions o = TinyOptions(tmp, "q");
  o.config_path = kData + "/shapes/tiny-qwen2.json";
  o.tokenizer = kData + "/tokenizers/qwen2_style/tokenizer.json";  // the file itself
  o.dtype = DType::kF32;
  o.num_layers = 1;
  o.max_shard_bytes = 600'000;  // embeddings and head are 960 KB each
  auto s = WriteRandomModel(o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->files, 3);
  EXPECT_TRUE(std::filesystem::exists(o.out_dir + "/model.safetensors.index.json"));
  EXPECT_FALSE(std::filesystem::exists(o.out_dir + "/model.safetensors"));
  auto config = *ReadJsonFile(o.out_dir + "/config.json");
  EXPECT_EQ(config["num_hidden_layers"], 1);
  EXPECT_EQ(config["torch_dtype"], "float32");
  EXPECT_EQ(config["eos_token_id"], 0);  // <|endoftext|> of qwen2_style
  auto c = Checkpoint::Open(o.out_dir);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_FALSE(c->Contains("model.layers.1.input_layernorm.weight"));
  auto head = *c->Get("lm_head.weight");
  EXPECT_EQ(head.dtype, DType::kF32);
  for (float x : Floats(*c->Get("model.layers.0.self_attn.q_proj.bias"))) ASSERT_EQ(x, 0.0f);
  EXPECT_FALSE(c->Contains("model.layers.0.self_attn.o_proj.bias"));
  double sq = 0;
  const auto h = Floats(head);
  for (float x : h) sq += static_cast<double>(x) * x;
  EXPECT_NEAR(std::sqrt(sq / static_cast<double>(h.size())), 0.05, 0.001);  // initializer_range
}

TEST(RandomModelTest, ErrorsNameTheInputAndLeaveNothing) {
  TempDir tmp;
  // The out dir exists.
  RandomModelOptions o = TinyOptions(tmp, "exists");
  std::filesystem::create_directory(o.out_dir);
  auto s = WriteRandomModel(o);
  EXPECT_EQ(s.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.status().message().find(o.out_dir), std::string::npos);
  // A tokenizer larger than the shape's vocabulary (qwen2_style has 5000 tokens; a 4096 shape).
  Json small = *ReadJsonFile(kData + "/shapes/tiny-llama3.json");
  small["vocab_size"] = 4096;
  ASSERT_TRUE(AtomicWriteString(tmp.File("small.json"), small.dump()).ok());
  o = TinyOptions(tmp, "small");
  o.config_path = tmp.File("small.json");
  s = WriteRandomModel(o);
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("5000 tokens"), std::string::npos) << s.status().ToString();
  EXPECT_NE(s.status().message().find("vocab_size 4096"), std::string::npos);
  EXPECT_NE(s.status().message().find("small.json"), std::string::npos);
  // A shape our loader rejects names the field and the file.
  small["vocab_size"] = 5120;
  small["hidden_act"] = "gelu";
  ASSERT_TRUE(AtomicWriteString(tmp.File("gelu.json"), small.dump()).ok());
  o.config_path = tmp.File("gelu.json");
  s = WriteRandomModel(o);
  EXPECT_NE(s.status().message().find("hidden_act"), std::string::npos) << s.status().ToString();
  // A missing tokenizer.
  o = TinyOptions(tmp, "notok");
  o.tokenizer = tmp.File("nowhere");
  EXPECT_FALSE(WriteRandomModel(o).ok());
  for (const auto& e : std::filesystem::directory_iterator(tmp.path())) {
    const std::string name = e.path().filename().string();
    EXPECT_TRUE(name == "exists" || name.find(".json") != std::string::npos) << name;
  }
}

}  // namespace
}  // namespace hyb::storage
