#include "hyb/common/json_util.h"

#include <gtest/gtest.h>

#include <fstream>

namespace hyb {
namespace {

TEST(JsonUtilTest, ParseErrorsNameTheSource) {
  auto bad = ParseJson("{\"a\": ", "job.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find("job.json: invalid JSON"), std::string::npos);
  auto good = ParseJson("{\"a\": 1}", "job.json");
  ASSERT_TRUE(good.ok());
  EXPECT_EQ((*good)["a"], 1);
}

TEST(JsonUtilTest, MissingFileIsNotFound) {
  auto r = ReadJsonFile("/nonexistent/dir/config.json");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("/nonexistent/dir/config.json"), std::string::npos);
}

TEST(JsonUtilTest, TypedFieldsAndErrors) {
  const Json j = Json::parse(R"({"n": 4096, "f": 4096.0, "half": 1.5, "s": "x", "b": true,
                                 "neg": -3, "nul": null})");
  JsonObject o(j, "config.json");
  EXPECT_EQ(*o.Int("n"), 4096);
  EXPECT_EQ(*o.Int("f"), 4096);  // integral floats are accepted
  auto half = o.Int("half");
  ASSERT_FALSE(half.ok());
  EXPECT_EQ(half.status().message(), "config.json: field 'half' must be an integer, got 1.5");
  EXPECT_EQ(*o.Number("half"), 1.5);
  EXPECT_EQ(*o.String("s"), "x");
  EXPECT_TRUE(*o.Bool("b"));
  EXPECT_EQ(o.Bool("s").status().message(),
            "config.json: field 's' must be true or false, got \"x\"");
  EXPECT_EQ(o.Int("missing").status().message(), "config.json: field 'missing' is required");
  EXPECT_EQ(*o.Int("missing", 7), 7);
  EXPECT_EQ(*o.Int("nul", 9), 9);  // null counts as absent
  EXPECT_FALSE(o.OptionalInt("nul")->has_value());
  EXPECT_EQ(**o.OptionalInt("neg"), -3);
  EXPECT_FALSE(o.String("n", "d").ok());  // present with the wrong type is an error
}

TEST(JsonUtilTest, UnknownKeysAreNamed) {
  const Json j = Json::parse(R"({"model": "m", "modle": "typo"})");
  JsonObject o(j, "job.json");
  EXPECT_TRUE(o.CheckKnownKeys({"model", "modle"}).ok());
  const Status s = o.CheckKnownKeys({"model"});
  EXPECT_EQ(s.message(), "job.json: field 'modle' is not a known field");
}

}  // namespace
}  // namespace hyb

namespace hyb {
namespace {

TEST(JsonUtilTest, DeepNestingIsRejectedBeforeParsing) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  auto r = ParseJson(deep, "deep.json");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("nested deeper than 64"), std::string::npos);
  // Brackets inside strings do not count; 64 levels are fine.
  EXPECT_TRUE(ParseJson("{\"a\": \"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"}",
                        "s.json")
                  .ok());
  EXPECT_TRUE(ParseJson(std::string(64, '[') + std::string(64, ']'), "ok.json").ok());
}

}  // namespace
}  // namespace hyb
