#include "hyb/storage/checkpoint.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "hyb/storage/atomic_file.h"
#include "hyb/storage/model_dir.h"
#include "testing/temp_dir.h"

namespace hyb::storage {
namespace {

using hyb::testing::TempDir;

struct Fixture {
  std::vector<std::vector<float>> data;
  std::vector<TensorToWrite> tensors;
  explicit Fixture(int n) {
    data.resize(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      data[static_cast<size_t>(i)].assign(100, static_cast<float>(i));
      tensors.push_back({"t" + std::to_string(i), DType::kF32, {10, 10},
                         data[static_cast<size_t>(i)].data(), 400});
    }
  }
};

TEST(CheckpointTest, SingleFile) {
  TempDir dir;
  Fixture f(3);
  ASSERT_TRUE(WriteCheckpoint(dir.path(), f.tensors).ok());
  EXPECT_TRUE(std::filesystem::exists(dir.File("model.safetensors")));
  auto c = Checkpoint::Open(dir.path());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->Names(), (std::vector<std::string>{"t0", "t1", "t2"}));
}

TEST(CheckpointTest, ShardedThroughIndex) {
  TempDir dir;
  Fixture f(5);
  ASSERT_TRUE(WriteCheckpoint(dir.path(), f.tensors, /*max_shard_bytes=*/900).ok());
  EXPECT_TRUE(std::filesystem::exists(dir.File("model.safetensors.index.json")));
  EXPECT_TRUE(std::filesystem::exists(dir.File("model-00003-of-00003.safetensors")));
  EXPECT_FALSE(std::filesystem::exists(dir.File("model.safetensors")));
  auto c = Checkpoint::Open(dir.path());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(c->Names().size(), 5u);
  for (int i = 0; i < 5; ++i) {
    auto v = c->Get("t" + std::to_string(i));
    ASSERT_TRUE(v.ok());
    float x = 0;
    std::memcpy(&x, v->data + 44, 4);
    EXPECT_EQ(x, static_cast<float>(i));
  }
}

TEST(CheckpointTest, IndexErrorsNameTheProblem) {
  TempDir dir;
  Fixture f(4);
  ASSERT_TRUE(WriteCheckpoint(dir.path(), f.tensors, 900).ok());
  const std::string index = dir.File("model.safetensors.index.json");

  // A tensor mapped to a shard that lacks it.
  ASSERT_TRUE(AtomicWriteString(index, R"({"weight_map": {"t0": "model-00002-of-00002.safetensors"}})").ok());
  auto c = Checkpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("'t0' is mapped to model-00002-of-00002.safetensors"),
            std::string::npos)
      << c.status().message();

  // A missing shard file.
  ASSERT_TRUE(AtomicWriteString(index, R"({"weight_map": {"t0": "model-00009-of-00009.safetensors"}})").ok());
  c = Checkpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kNotFound);
  EXPECT_NE(c.status().message().find("model-00009-of-00009.safetensors"), std::string::npos);

  // Path escapes and malformed JSON.
  ASSERT_TRUE(AtomicWriteString(index, R"({"weight_map": {"t0": "../x.safetensors"}})").ok());
  EXPECT_FALSE(Checkpoint::Open(dir.path()).ok());
  ASSERT_TRUE(AtomicWriteString(index, R"({"weight_map": [}})").ok());
  c = Checkpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kDataLoss);
  ASSERT_TRUE(AtomicWriteString(index, R"({"metadata": {}})").ok());
  c = Checkpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("weight_map"), std::string::npos);
}

TEST(CheckpointTest, DuplicateTensorAcrossShardsRejected) {
  TempDir dir;
  Fixture f(1);
  ASSERT_TRUE(WriteSafetensors(dir.File("a.safetensors"), f.tensors).ok());
  ASSERT_TRUE(WriteSafetensors(dir.File("b.safetensors"), f.tensors).ok());
  ASSERT_TRUE(AtomicWriteString(dir.File("model.safetensors.index.json"),
                                R"({"weight_map": {"t0": "a.safetensors", "x": "b.safetensors"}})")
                  .ok());
  auto c = Checkpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());  // "x" is not in b.safetensors
  ASSERT_TRUE(AtomicWriteString(dir.File("model.safetensors.index.json"),
                                R"({"weight_map": {"t0": "a.safetensors"}})")
                  .ok());
  std::filesystem::remove(dir.File("b.safetensors"));
  EXPECT_TRUE(Checkpoint::Open(dir.path()).ok());
}

TEST(CheckpointTest, MissingWeights) {
  TempDir dir;
  auto c = Checkpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kNotFound);
  EXPECT_NE(c.status().message().find("model.safetensors"), std::string::npos);
}

TEST(ModelDirectoryTest, OpensConfigWeightsAndTokenizer) {
  TempDir dir;
  Fixture f(1);
  auto missing = ModelDirectory::Open(dir.path());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("config.json"), std::string::npos);
  ASSERT_TRUE(AtomicWriteString(dir.File("config.json"), R"({"model_type": "llama"})").ok());
  missing = ModelDirectory::Open(dir.path());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("model.safetensors"), std::string::npos);
  ASSERT_TRUE(WriteCheckpoint(dir.path(), f.tensors).ok());
  auto m = ModelDirectory::Open(dir.path());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->config()["model_type"], "llama");
  EXPECT_FALSE(m->tokenizer_path().has_value());
  ASSERT_TRUE(AtomicWriteString(dir.File("tokenizer.json"), "{}").ok());
  m = ModelDirectory::Open(dir.path());
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(m->tokenizer_path().has_value());
  ASSERT_TRUE(AtomicWriteString(dir.File("config.json"), "{not json").ok());
  m = ModelDirectory::Open(dir.path());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(m.status().message().find("config.json"), std::string::npos);
}

}  // namespace
}  // namespace hyb::storage
