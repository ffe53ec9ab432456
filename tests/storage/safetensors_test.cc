#include "hyb/storage/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "hyb/storage/atomic_file.h"
#include "testing/temp_dir.h"

namespace hyb::storage {
namespace {

using hyb::testing::TempDir;

// Writes an arbitrary (possibly corrupt) safetensors file: length field, header text, data.
std::string WriteRaw(const TempDir& dir, const std::string& name, uint64_t header_len,
                     const std::string& header, const std::string& data) {
  const std::string path = dir.File(name);
  std::ofstream out(path, std::ios::binary);
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((header_len >> (8 * i)) & 0xff));
  out << header << data;
  return path;
}

std::string WriteRaw(const TempDir& dir, const std::string& name, const std::string& header,
                     const std::string& data) {
  return WriteRaw(dir, name, header.size(), header, data);
}

Status OpenStatus(const std::string& path) { return SafetensorsFile::Open(path).status(); }

void ExpectError(const std::string& path, StatusCode code, const std::string& fragment) {
  const Status s = OpenStatus(path);
  ASSERT_FALSE(s.ok()) << path;
  EXPECT_EQ(s.code(), code) << s.ToString();
  EXPECT_NE(s.message().find(path), std::string::npos) << "message must name the file: "
                                                        << s.message();
  EXPECT_NE(s.message().find(fragment), std::string::npos) << s.message();
}

TEST(SafetensorsTest, RoundTripsEveryDtype) {
  TempDir dir;
  const std::vector<double> f64 = {1.5, -2.25, 3.0};
  const std::vector<float> f32 = {0.5f, -1.0f, 2.0f, 4.0f, 8.0f, 16.0f};
  const std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x7bff};    // 1, -2, 65504
  const std::vector<uint16_t> bf16 = {0x3f80, 0xbf80, 0x4049};   // 1, -1, ~3.14
  const std::vector<int64_t> i64 = {-(int64_t{1} << 40), 0, 7};
  const std::vector<int32_t> i32 = {-5, 6};
  std::vector<TensorToWrite> tensors = {
      {"a.f64", DType::kF64, {3}, f64.data(), 24},
      {"b.f32", DType::kF32, {2, 3}, f32.data(), 24},
      {"c.f16", DType::kF16, {3}, f16.data(), 6},
      {"d.bf16", DType::kBF16, {3, 1}, bf16.data(), 6},
      {"e.i64", DType::kI64, {3}, i64.data(), 24},
      {"f.i32", DType::kI32, {1, 2}, i32.data(), 8},
      {"g.empty", DType::kF32, {0, 4}, nullptr, 0},
  };
  const std::string path = dir.File("all.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  EXPECT_EQ((*file)->names().size(), tensors.size());
  for (const auto& t : tensors) {
    auto v = (*file)->Get(t.name);
    ASSERT_TRUE(v.ok()) << t.name;
    EXPECT_EQ(v->dtype, t.dtype);
    EXPECT_EQ(v->shape, t.shape);
    ASSERT_EQ(v->nbytes, t.nbytes);
    if (t.nbytes) EXPECT_EQ(std::memcmp(v->data, t.data, t.nbytes), 0) << t.name;
    // The writer orders by element size, so every tensor is aligned for its type.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(v->data) % DTypeSize(t.dtype), 0u) << t.name;
  }
  auto missing = (*file)->Get("nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("'nope'"), std::string::npos);
}

TEST(SafetensorsTest, ViewsOutliveTheFileObject) {
  TempDir dir;
  const std::vector<float> x = {1, 2, 3, 4};
  const std::string path = dir.File("x.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"x", DType::kF32, {4}, x.data(), 16}}).ok());
  TensorView view;
  {
    auto file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok());
    view = *(*file)->Get("x");
  }
  std::filesystem::remove(path);  // the mapping stays valid
  EXPECT_EQ(std::memcmp(view.data, x.data(), 16), 0);
}

TEST(SafetensorsTest, WriterRejectsBadInput) {
  TempDir dir;
  const std::vector<float> x = {1, 2, 3};
  const std::string path = dir.File("w.safetensors");
  EXPECT_FALSE(WriteSafetensors(path, {{"x", DType::kF32, {4}, x.data(), 12}}).ok());
  EXPECT_FALSE(WriteSafetensors(path, {{"x", DType::kF32, {3}, x.data(), 12},
                                       {"x", DType::kF32, {3}, x.data(), 12}})
                   .ok());
  EXPECT_FALSE(WriteSafetensors(path, {{"__metadata__", DType::kF32, {3}, x.data(), 12}}).ok());
  EXPECT_FALSE(std::filesystem::exists(path));
  // Nothing but the target directory's own files: no temporaries left behind.
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(SafetensorsTest, AtomicWriteLeavesOldFileOnFailure) {
  TempDir dir;
  const std::string path = dir.File("f.txt");
  ASSERT_TRUE(AtomicWriteString(path, "old").ok());
  const Status s = AtomicWriteFile(path, [](FileSink& sink) {
    (void)sink.Write("partial");
    return IoError("disk full (simulated)");
  });
  EXPECT_EQ(s.code(), StatusCode::kIoError);
  std::ifstream in(path);
  std::string contents((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(contents, "old");
  size_t files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir.path())) files += e.is_regular_file();
  EXPECT_EQ(files, 1u);
}

TEST(SafetensorsCorruptionTest, TooShortForLength) {
  TempDir dir;
  const std::string path = dir.File("short.safetensors");
  std::ofstream(path, std::ios::binary) << "abc";
  ExpectError(path, StatusCode::kDataLoss, "too short");
}

TEST(SafetensorsCorruptionTest, HeaderLengthBeyondFile) {
  TempDir dir;
  ExpectError(WriteRaw(dir, "a", 1000, "{}", ""), StatusCode::kDataLoss,
              "header length 1000 exceeds");
  ExpectError(WriteRaw(dir, "b", ~uint64_t{0}, "{}", ""), StatusCode::kDataLoss, "exceeds");
}

TEST(SafetensorsCorruptionTest, BadJson) {
  TempDir dir;
  ExpectError(WriteRaw(dir, "a", "{\"x\": {\"dtype\": ", ""), StatusCode::kDataLoss,
              "not valid JSON");
  ExpectError(WriteRaw(dir, "b", "[1, 2]", ""), StatusCode::kDataLoss, "not a JSON object");
  ExpectError(WriteRaw(dir, "c", R"({"x": 5})", ""), StatusCode::kDataLoss,
              "entry is not an object");
  ExpectError(WriteRaw(dir, "d", R"({"x": {"shape": [1], "data_offsets": [0, 4]}})", "abcd"),
              StatusCode::kDataLoss, "missing string 'dtype'");
  ExpectError(WriteRaw(dir, "e", R"({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})",
                       "abcd"),
              StatusCode::kDataLoss, "non-negative");
  ExpectError(WriteRaw(dir, "f", R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})",
                       "abcd"),
              StatusCode::kDataLoss, "data_offsets");
  ExpectError(WriteRaw(dir, "g", R"({"__metadata__": {"k": 1}})", ""), StatusCode::kDataLoss,
              "__metadata__");
}

TEST(SafetensorsCorruptionTest, UnknownDtype) {
  TempDir dir;
  ExpectError(
      WriteRaw(dir, "a", R"({"x": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}})",
               "abcd"),
      StatusCode::kInvalidArgument, "unsupported dtype 'F8_E4M3'");
}

TEST(SafetensorsCorruptionTest, OverlappingOffsets) {
  TempDir dir;
  ExpectError(WriteRaw(dir, "a",
                       R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                           "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                       std::string(12, 'z')),
              StatusCode::kDataLoss, "overlaps");
}

TEST(SafetensorsCorruptionTest, OutOfRangeOffsets) {
  TempDir dir;
  ExpectError(WriteRaw(dir, "a", R"({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})",
                       std::string(8, 'z')),
              StatusCode::kDataLoss, "beyond the data section");
  ExpectError(WriteRaw(dir, "b", R"({"x": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})",
                       std::string(8, 'z')),
              StatusCode::kDataLoss, "reversed");
}

TEST(SafetensorsCorruptionTest, ShapeSizeMismatch) {
  TempDir dir;
  ExpectError(WriteRaw(dir, "a", R"({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})",
                       std::string(8, 'z')),
              StatusCode::kDataLoss, "needs 12 bytes but data_offsets span 8");
  ExpectError(WriteRaw(dir, "b",
                       R"({"x": {"dtype": "F64", "shape": [4294967296, 4294967296, 16],
                                 "data_offsets": [0, 8]}})",
                       std::string(8, 'z')),
              StatusCode::kDataLoss, "overflows");
}

TEST(SafetensorsCorruptionTest, TruncatedData) {
  TempDir dir;
  const std::vector<float> x(64, 1.0f);
  const std::string path = dir.File("t.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"x", DType::kF32, {64}, x.data(), 256}}).ok());
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 10);
  ExpectError(path, StatusCode::kDataLoss, "truncated");
}

TEST(SafetensorsCorruptionTest, HolesAndTrailingBytes) {
  TempDir dir;
  ExpectError(WriteRaw(dir, "a", R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                       std::string(8, 'z')),
              StatusCode::kDataLoss, "belong to no tensor");
  ExpectError(WriteRaw(dir, "b", R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
                       std::string(8, 'z')),
              StatusCode::kDataLoss, "trailing bytes");
}

// Every truncation and many random byte corruptions of a valid file either open (and then every
// view lies inside the file) or fail with a status; none may crash.
TEST(SafetensorsCorruptionTest, RandomCorruptionNeverCrashes) {
  TempDir dir;
  const std::vector<float> a(10, 2.0f);
  const std::vector<int64_t> b(3, 5);
  const std::string good = dir.File("good.safetensors");
  ASSERT_TRUE(WriteSafetensors(good, {{"a", DType::kF32, {2, 5}, a.data(), 40},
                                      {"b", DType::kI64, {3}, b.data(), 24}})
                  .ok());
  std::ifstream in(good, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::mt19937 rng(1234);
  int opened = 0, rejected = 0;
  auto check = [&](const std::string& content) {
    const std::string path = dir.File("fuzz.safetensors");
    std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
    auto f = SafetensorsFile::Open(path);
    if (!f.ok()) {
      ++rejected;
      return;
    }
    ++opened;
    for (const auto& n : (*f)->names()) {
      auto v = (*f)->Get(n);
      ASSERT_TRUE(v.ok());
      volatile unsigned char sink = 0;
      for (size_t i = 0; i < v->nbytes; ++i) sink ^= static_cast<unsigned char>(v->data[i]);
      (void)sink;
    }
  };
  for (size_t len = 0; len < bytes.size(); ++len) check(bytes.substr(0, len));
  for (int trial = 0; trial < 300; ++trial) {
    std::string c = bytes;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) c[rng() % c.size()] = static_cast<char>(rng() % 256);
    check(c);
  }
  EXPECT_GT(rejected, static_cast<int>(bytes.size()));  // every truncation is rejected
  EXPECT_GT(opened, 0);  // flips inside the data section are not detectable, and are allowed
}

}  // namespace
}  // namespace hyb::storage

namespace hyb::storage {
namespace {

TEST(SafetensorsCorruptionTest, DeeplyNestedHeaderIsRejected) {
  hyb::testing::TempDir dir;
  const std::string shape = std::string(1000000, '[') + std::string(1000000, ']');
  const std::string header = "{\"x\": {\"dtype\": \"F32\", \"shape\": " + shape +
                             ", \"data_offsets\": [0, 0]}}";
  ExpectError(WriteRaw(dir, "deep", header, ""), StatusCode::kDataLoss, "nests too deeply");
}

}  // namespace
}  // namespace hyb::storage
