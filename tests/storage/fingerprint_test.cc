#include "hyb/storage/fingerprint.h"

#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include <sys/stat.h>

#include "testing/temp_dir.h"

namespace hyb::storage {
namespace {

using hyb::testing::TempDir;

void Write(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

TEST(FingerprintTest, SameBytesSameFingerprintAnyChangeDiffers) {
  TempDir dir;
  std::string bytes;
  for (int i = 0; i < 1000; ++i) bytes.push_back(static_cast<char>((i * 37) % 251));
  Write(dir.File("a"), bytes);
  Write(dir.File("b"), bytes);
  auto a = FingerprintFile(dir.File("a"));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(*a, *FingerprintFile(dir.File("b")));  // content, not path
  EXPECT_EQ(*a, FingerprintBytes(bytes.data(), bytes.size()));
  EXPECT_EQ(a->substr(0, 5), "1000:");
  EXPECT_EQ(a->size(), 5u + 16u);
  // Flipping any single bit, in the 32-byte blocks, the 8-byte words after them or the last
  // bytes, changes the fingerprint; so do truncation and appending a zero byte.
  std::set<std::string> seen = {*a};
  for (size_t pos : {0ul, 13ul, 511ul, 990ul, 999ul}) {
    for (int bit : {0, 7}) {
      std::string changed = bytes;
      changed[pos] = static_cast<char>(changed[pos] ^ (1 << bit));
      EXPECT_TRUE(seen.insert(FingerprintBytes(changed.data(), changed.size())).second)
          << "byte " << pos << " bit " << bit;
    }
  }
  EXPECT_TRUE(seen.insert(FingerprintBytes(bytes.data(), bytes.size() - 1)).second);
  std::string longer = bytes + std::string(1, '\0');
  EXPECT_TRUE(seen.insert(FingerprintBytes(longer.data(), longer.size())).second);
  // Two blocks swapped: the lanes are order-sensitive.
  std::string swapped = bytes.substr(32, 32) + bytes.substr(0, 32) + bytes.substr(64);
  EXPECT_TRUE(seen.insert(FingerprintBytes(swapped.data(), swapped.size())).second);
}

TEST(FingerprintTest, EmptyAndMissingFiles) {
  TempDir dir;
  Write(dir.File("empty"), "");
  auto empty = FingerprintFile(dir.File("empty"));
  ASSERT_TRUE(empty.ok()) << empty.status().ToString();
  EXPECT_EQ(empty->substr(0, 2), "0:");
  auto missing = FingerprintFile(dir.File("nope"));
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(dir.File("nope")), std::string::npos);
}

TEST(FingerprintTest, DirectoryListsRegularFilesThatPassTheFilter) {
  TempDir dir;
  Write(dir.File("config.json"), "{}");
  Write(dir.File("model.safetensors"), "weights");
  Write(dir.File("README.md"), "card");
  ::mkdir(dir.File("sub").c_str(), 0755);
  auto all = FingerprintDirectory(dir.path());
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_EQ(all->size(), 3u);  // not the subdirectory
  EXPECT_EQ((*all)["model.safetensors"], *FingerprintFile(dir.File("model.safetensors")));
  auto some =
      FingerprintDirectory(dir.path(), [](const std::string& n) { return n != "README.md"; });
  ASSERT_TRUE(some.ok());
  EXPECT_EQ(some->size(), 2u);
  EXPECT_FALSE(some->contains("README.md"));
  EXPECT_EQ(FingerprintDirectory(dir.File("nope")).status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(IsDirectory(dir.path()));
  EXPECT_FALSE(IsDirectory(dir.File("config.json")));
}

}  // namespace
}  // namespace hyb::storage
