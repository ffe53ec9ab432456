#include "hyb/storage/model_config.h"

#include <gtest/gtest.h>

namespace hyb::storage {
namespace {

Json Base(const std::string& family) {
  return {{"model_type", family},     {"vocab_size", 100},      {"hidden_size", 64},
          {"intermediate_size", 128}, {"num_hidden_layers", 4}, {"num_attention_heads", 8},
          {"num_key_value_heads", 2}, {"rms_norm_eps", 1e-5}};
}

ModelConfig Parse(const Json& j) {
  auto c = ParseModelConfig(j, "config.json");
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? *c : ModelConfig{};
}

std::string ErrorOf(const Json& j) {
  auto c = ParseModelConfig(j, "config.json");
  EXPECT_FALSE(c.ok());
  return c.ok() ? "" : c.status().message();
}

TEST(ModelConfigTest, FamilyDefaults) {
  const ModelConfig llama = Parse(Base("llama"));
  EXPECT_EQ(llama.head_dim, 8);
  EXPECT_EQ(llama.group_size(), 4);
  EXPECT_FALSE(llama.qkv_bias);
  EXPECT_FALSE(llama.qk_norm);
  EXPECT_EQ(llama.rope.type, RopeType::kDefault);
  EXPECT_EQ(llama.rope.theta, 10000.0);
  EXPECT_EQ(llama.max_position_embeddings, 2048);
  EXPECT_EQ(llama.sliding_window, 0);

  const ModelConfig qwen2 = Parse(Base("qwen2"));
  EXPECT_TRUE(qwen2.qkv_bias);
  EXPECT_FALSE(qwen2.o_bias);

  const ModelConfig qwen3 = Parse(Base("qwen3"));
  EXPECT_TRUE(qwen3.qk_norm);
  EXPECT_EQ(qwen3.head_dim, 128);  // Qwen3Config's default is not hidden / heads

  Json mistral = Base("mistral");
  mistral["sliding_window"] = 16;
  const ModelConfig m = Parse(mistral);
  EXPECT_EQ(m.sliding_window, 16);
  for (auto k : m.layer_attention) EXPECT_EQ(k, AttentionKind::kSliding);
  mistral["sliding_window"] = nullptr;  // explicit null: no window
  EXPECT_EQ(Parse(mistral).sliding_window, 0);
  mistral.erase("sliding_window");  // absent: MistralConfig's default
  EXPECT_EQ(Parse(mistral).sliding_window, 4096);
  // Absent num_key_value_heads takes the family default (Mistral 8), null means "= heads".
  Json m2 = Base("mistral");
  m2.erase("num_key_value_heads");
  EXPECT_EQ(Parse(m2).num_kv_heads, 8);
  m2["num_key_value_heads"] = nullptr;
  EXPECT_EQ(Parse(m2).num_kv_heads, 8);  // 8 heads in Base: null -> num_attention_heads
  Json l2 = Base("llama");
  l2.erase("num_key_value_heads");
  EXPECT_EQ(Parse(l2).num_kv_heads, 8);
}

TEST(ModelConfigTest, BiasesAndHeadDim) {
  Json j = Base("llama");
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  j["head_dim"] = 16;  // explicit head_dim need not be hidden / heads
  const ModelConfig c = Parse(j);
  EXPECT_TRUE(c.qkv_bias && c.o_bias && c.mlp_bias);
  EXPECT_EQ(c.head_dim, 16);
  j = Base("mistral");
  j["attention_bias"] = true;
  EXPECT_NE(ErrorOf(j).find("'attention_bias'"), std::string::npos);
}

TEST(ModelConfigTest, QwenSlidingLayers) {
  Json j = Base("qwen2");
  j["use_sliding_window"] = true;
  j["sliding_window"] = 8;
  j["max_window_layers"] = 2;
  ModelConfig c = Parse(j);
  EXPECT_EQ(c.layer_attention,
            (std::vector<AttentionKind>{AttentionKind::kFull, AttentionKind::kFull,
                                        AttentionKind::kSliding, AttentionKind::kSliding}));
  j["layer_types"] = {"sliding_attention", "full_attention", "sliding_attention", "full_attention"};
  c = Parse(j);
  EXPECT_EQ(c.layer_attention[0], AttentionKind::kSliding);
  EXPECT_EQ(c.layer_attention[1], AttentionKind::kFull);
  j["use_sliding_window"] = false;  // transformers drops the window: every layer is full
  c = Parse(j);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.layer_attention[0], AttentionKind::kFull);
  j["use_sliding_window"] = true;
  j["layer_types"] = {"sliding_attention"};
  EXPECT_NE(ErrorOf(j).find("'layer_types'"), std::string::npos);
  j["layer_types"] = {"sliding_attention", "mamba", "full_attention", "full_attention"};
  EXPECT_NE(ErrorOf(j).find("entry 1"), std::string::npos);
}

TEST(ModelConfigTest, RopeBothSpellings) {
  Json old_style = Base("llama");
  old_style["rope_theta"] = 500000.0;
  old_style["rope_scaling"] = {{"rope_type", "llama3"},
                               {"factor", 8.0},
                               {"low_freq_factor", 1.0},
                               {"high_freq_factor", 4.0},
                               {"original_max_position_embeddings", 8192}};
  Json new_style = Base("llama");
  new_style["rope_parameters"] = {
      {"rope_type", "llama3"},   {"rope_theta", 500000.0},
      {"factor", 8.0},           {"low_freq_factor", 1.0},
      {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  for (const Json& j : {old_style, new_style}) {
    const ModelConfig c = Parse(j);
    EXPECT_EQ(c.rope.type, RopeType::kLlama3);
    EXPECT_EQ(c.rope.theta, 500000.0);
    EXPECT_EQ(c.rope.factor, 8.0);
    EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
  }
  Json legacy_type = Base("qwen2");
  legacy_type["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
  legacy_type["max_position_embeddings"] = 1000;
  const ModelConfig y = Parse(legacy_type);
  EXPECT_EQ(y.rope.type, RopeType::kYarn);
  EXPECT_EQ(y.rope.original_max_position_embeddings, 1000);  // falls back to max positions
  EXPECT_EQ(y.rope.beta_fast, 32.0);
  Json linear = Base("mistral");
  linear["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 2.0}, {"rope_theta", 1e6}};
  EXPECT_EQ(Parse(linear).rope.type, RopeType::kLinear);
  EXPECT_EQ(Parse(linear).rope.theta, 1e6);
  Json dflt = Base("qwen3");
  dflt["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
  EXPECT_EQ(Parse(dflt).rope.theta, 1e6);
}

TEST(ModelConfigTest, ErrorsNameTheField) {
  Json j = Base("gpt2");
  EXPECT_EQ(ErrorOf(j),
            "config.json: field 'model_type' 'gpt2' is not a supported family (llama, qwen2, "
            "qwen3, mistral)");
  j = Base("llama");
  j.erase("hidden_size");
  EXPECT_EQ(ErrorOf(j), "config.json: field 'hidden_size' is required");
  j = Base("llama");
  j["num_key_value_heads"] = 3;
  EXPECT_NE(ErrorOf(j).find("'num_key_value_heads'"), std::string::npos);
  j = Base("llama");
  j["hidden_act"] = "gelu";
  EXPECT_NE(ErrorOf(j).find("'hidden_act' 'gelu' is not supported"), std::string::npos);
  j = Base("llama");
  j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  EXPECT_NE(ErrorOf(j).find("'dynamic' is not supported"), std::string::npos);
  j = Base("llama");
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  EXPECT_NE(ErrorOf(j).find("low_freq_factor"), std::string::npos);
  j = Base("llama");
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}, {"fator", 3}};
  EXPECT_NE(ErrorOf(j).find("'fator' is not a known field"), std::string::npos);
  j = Base("llama");
  j["hidden_size"] = "64";
  EXPECT_NE(ErrorOf(j).find("'hidden_size' must be an integer"), std::string::npos);
  j = Base("llama");
  j["vocab_size"] = 0;
  EXPECT_NE(ErrorOf(j).find("'vocab_size' must be positive"), std::string::npos);
  j = Base("llama");
  j["quantization_config"] = {{"quant_method", "gptq"}};
  EXPECT_NE(ErrorOf(j).find("quantization_config"), std::string::npos);
  j = Base("qwen2");
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"beta_fast", 0}};
  EXPECT_NE(ErrorOf(j).find("'beta_fast' must be positive"), std::string::npos);
  j = Base("llama");
  j["partial_rotary_factor"] = 0.5;
  EXPECT_NE(ErrorOf(j).find("partial_rotary_factor"), std::string::npos);
  EXPECT_NE(ErrorOf(Json::array()).find("not a JSON object"), std::string::npos);
}

TEST(ModelConfigTest, TokenIds) {
  Json j = Base("llama");
  j["bos_token_id"] = 1;
  j["eos_token_id"] = {2, 7};
  const ModelConfig c = Parse(j);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2, 7}));
}

}  // namespace
}  // namespace hyb::storage
