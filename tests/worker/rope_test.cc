#include "hyb/worker/rope.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "worker/test_model.h"

namespace hyb::worker {
namespace {

void ExpectMatchesReference(const Json& rope_fields, int64_t head_dim) {
  Json config = {{"model_type", "llama"},      {"vocab_size", 10},       {"hidden_size", 64},
                 {"intermediate_size", 8},     {"num_hidden_layers", 1}, {"num_attention_heads", 1},
                 {"max_position_embeddings", 4096}, {"head_dim", head_dim}};
  for (auto it = rope_fields.begin(); it != rope_fields.end(); ++it) config[it.key()] = it.value();
  auto parsed = ParseModelConfig(config, "config.json");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  auto rope = RotaryEmbedding::Create(parsed->rope, head_dim);
  ASSERT_TRUE(rope.ok());
  double scaling = 0;
  const auto ref = testing::ReferenceInvFreq(config, head_dim, &scaling);
  ASSERT_EQ(rope->inv_freq().size(0), head_dim / 2);
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    const double got = rope->inv_freq()[i].item<double>();
    EXPECT_NEAR(got, ref[static_cast<size_t>(i)], 1e-6 * ref[static_cast<size_t>(i)] + 1e-12)
        << "frequency " << i << " of " << config.dump();
  }
  EXPECT_NEAR(rope->attention_scaling(), scaling, 1e-12);
}

TEST(RopeTest, DefaultMatchesClosedForm) {
  ExpectMatchesReference({{"rope_theta", 10000.0}}, 64);
  auto rope = RotaryEmbedding::Create(RopeConfig{}, 4);
  ASSERT_TRUE(rope.ok());
  EXPECT_FLOAT_EQ(rope->inv_freq()[0].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(rope->inv_freq()[1].item<float>(), 0.01f);  // 10000^(-2/4)
}

TEST(RopeTest, ScaledTypesMatchReference) {
  ExpectMatchesReference({{"rope_scaling", {{"type", "linear"}, {"factor", 4.0}}}}, 32);
  ExpectMatchesReference({{"rope_theta", 500000.0},
                          {"rope_scaling",
                           {{"rope_type", "llama3"},
                            {"factor", 8.0},
                            {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0},
                            {"original_max_position_embeddings", 64}}}},
                         64);
  ExpectMatchesReference({{"rope_parameters",
                           {{"rope_type", "yarn"},
                            {"rope_theta", 10000.0},
                            {"factor", 4.0},
                            {"original_max_position_embeddings", 256}}}},
                         64);
  ExpectMatchesReference({{"rope_parameters",
                           {{"rope_type", "yarn"},
                            {"factor", 2.0},
                            {"attention_factor", 0.8},
                            {"beta_fast", 16.0},
                            {"truncate", false},
                            {"original_max_position_embeddings", 512}}}},
                         32);
}

TEST(RopeTest, Llama3LeavesHighFrequenciesAndScalesLowOnes) {
  RopeConfig c;
  c.type = RopeType::kLlama3;
  c.theta = 500000;
  c.factor = 8;
  c.low_freq_factor = 1;
  c.high_freq_factor = 4;
  c.original_max_position_embeddings = 64;
  auto scaled = RotaryEmbedding::Create(c, 64);
  auto plain = RotaryEmbedding::Create(RopeConfig{.theta = 500000}, 64);
  ASSERT_TRUE(scaled.ok() && plain.ok());
  EXPECT_FLOAT_EQ(scaled->inv_freq()[0].item<float>(), plain->inv_freq()[0].item<float>());
  EXPECT_FLOAT_EQ(scaled->inv_freq()[31].item<float>(), plain->inv_freq()[31].item<float>() / 8);
}

TEST(RopeTest, ApplyRotaryRotatesHalves) {
  // A 90-degree rotation: inv_freq 1 at position pi/2 maps (x1, x2) -> (-x2, x1).
  const at::Tensor x = torch::tensor({1.0, 2.0}).view({1, 1, 1, 2});
  const at::Tensor cos = torch::tensor({0.0, 0.0}).view({1, 2});
  const at::Tensor sin = torch::tensor({1.0, 1.0}).view({1, 2});
  const at::Tensor y = ApplyRotary(x, cos, sin);
  EXPECT_DOUBLE_EQ(y[0][0][0][0].item<double>(), -2.0);
  EXPECT_DOUBLE_EQ(y[0][0][0][1].item<double>(), 1.0);
}

TEST(RopeTest, CosSinHonoursOffset) {
  auto rope = RotaryEmbedding::Create(RopeConfig{}, 8);
  ASSERT_TRUE(rope.ok());
  auto [c_all, s_all] = rope->CosSin(0, 10, at::kCPU, at::kFloat);
  auto [c_tail, s_tail] = rope->CosSin(7, 3, at::kCPU, at::kFloat);
  EXPECT_TRUE(at::equal(c_all.narrow(0, 7, 3), c_tail));
  EXPECT_TRUE(at::equal(s_all.narrow(0, 7, 3), s_tail));
  EXPECT_EQ(c_all.sizes(), (std::vector<int64_t>{10, 8}));
}

}  // namespace
}  // namespace hyb::worker
