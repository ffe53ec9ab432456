#include "hyb/storage/token_dataset.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "testing/temp_dir.h"

namespace hyb::storage {
namespace {

using hyb::testing::TempDir;

std::shared_ptr<const TokenDataset> MakeDataset(const TempDir& dir, int64_t docs) {
  TokenDatasetWriter w(dir.File("data"), 1000, {{"source", "test"}});
  int64_t next = 0;
  for (int64_t d = 0; d < docs; ++d) {
    std::vector<int64_t> ids;
    for (int64_t i = 0; i < 10 + d % 7; ++i) ids.push_back(next++ % 1000);
    EXPECT_TRUE(w.AddDocument(ids).ok());
  }
  EXPECT_TRUE(w.Finish().ok());
  auto ds = TokenDataset::Open(dir.File("data"));
  EXPECT_TRUE(ds.ok()) << ds.status().ToString();
  return ds.ok() ? *ds : nullptr;
}

TEST(TokenDatasetTest, RoundTripsDocuments) {
  TempDir dir;
  auto ds = MakeDataset(dir, 50);
  ASSERT_NE(ds, nullptr);
  EXPECT_EQ(ds->num_documents(), 50);
  EXPECT_EQ(ds->meta()["source"], "test");
  EXPECT_EQ(ds->Document(0).size(), 10u);
  EXPECT_EQ(ds->Document(1), (std::vector<int64_t>{10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}));
  EXPECT_EQ(ds->Slice(5, 3), (std::vector<int64_t>{5, 6, 7}));
  TokenDatasetWriter again(dir.File("data"), 1000, {});
  EXPECT_EQ(again.Finish().code(), StatusCode::kFailedPrecondition);  // never overwrites
  TokenDatasetWriter bad(dir.File("bad"), 10, {});
  EXPECT_FALSE(bad.AddDocument({3, 10}).ok());
}

TEST(TokenDatasetTest, SamplerIsDeterministicShardedAndResumable) {
  TempDir dir;
  auto ds = MakeDataset(dir, 80);  // ~1000 tokens -> 62 windows of 16
  SamplerOptions o;
  o.sequence_length = 16;
  o.seed = 7;
  auto a = *SequenceSampler::Create(ds, o);
  auto b = *SequenceSampler::Create(ds, o);
  EXPECT_EQ(a.Next(20), b.Next(20));  // same seed, same samples
  o.seed = 8;
  auto c = *SequenceSampler::Create(ds, o);
  auto a2 = *SequenceSampler::Create(ds, {16, 7, 0, 1});
  EXPECT_NE(a2.Next(20), c.Next(20));  // another seed, another order

  // Two ranks see disjoint windows that together cover an epoch (up to the remainder).
  std::set<std::vector<int64_t>> seen;
  int64_t total = 0;
  for (int64_t rank = 0; rank < 2; ++rank) {
    auto s = *SequenceSampler::Create(ds, {16, 7, rank, 2});
    for (const auto& x : s.Next(s.samples_per_epoch())) {
      EXPECT_EQ(x.size(), 16u);
      seen.insert(x);
      ++total;
    }
  }
  EXPECT_EQ(static_cast<int64_t>(seen.size()), total);
  EXPECT_EQ(total, (ds->num_tokens() / 16) / 2 * 2);

  // Resuming from a cursor continues exactly where an uninterrupted reader would be,
  // across an epoch boundary.
  auto full = *SequenceSampler::Create(ds, {16, 3, 0, 1});
  const auto first = full.Next(50);
  const DatasetCursor at = full.cursor();
  const auto rest = full.Next(30);
  auto resumed = *SequenceSampler::Create(ds, {16, 3, 0, 1}, *DatasetCursor::FromJson(at.ToJson(), "c"));
  EXPECT_EQ(resumed.Next(30), rest);
  EXPECT_EQ(full.cursor().epoch, 1);

  EXPECT_FALSE(SequenceSampler::Create(ds, {0, 1, 0, 1}).ok());
  EXPECT_FALSE(SequenceSampler::Create(ds, {16, 1, 2, 2}).ok());
  EXPECT_FALSE(SequenceSampler::Create(ds, {100000, 1, 0, 1}).ok());
}

TEST(TokenDatasetTest, CorruptDatasetsAreRejected) {
  TempDir dir;
  ASSERT_NE(MakeDataset(dir, 5), nullptr);
  std::filesystem::resize_file(dir.File("data/tokens.bin"), 8);
  auto r = TokenDataset::Open(dir.File("data"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("tokens.bin"), std::string::npos);
  EXPECT_EQ(TokenDataset::Open(dir.File("missing")).status().code(), StatusCode::kNotFound);
  TempDir other;
  ASSERT_NE(MakeDataset(other, 5), nullptr);
  std::ofstream(other.File("data/docs.idx"), std::ios::binary | std::ios::trunc)
      << std::string(48, '\xff');
  r = TokenDataset::Open(other.File("data"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("docs.idx"), std::string::npos);
}

}  // namespace
}  // namespace hyb::storage
