#include "hyb/common/job_spec.h"

#include <gtest/gtest.h>

namespace hyb {
namespace {

Json Minimal() {
  return Json::parse(R"({
    "job_id": "demo-1",
    "teacher": "teacher",
    "distill": {"data": "data"},
    "task": {"type": "generate", "validation": "val.jsonl", "test": "/abs/test.jsonl"},
    "search": {"tolerance": 0.1}
  })");
}

TEST(JobSpecTest, DefaultsAndResolvedPaths) {
  auto s = ParseJobSpec(Minimal().dump(), "job.json", "/jobs");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->teacher, "/jobs/teacher");
  EXPECT_EQ(s->distill.data, "/jobs/data");
  EXPECT_EQ(s->task.validation, "/jobs/val.jsonl");
  EXPECT_EQ(s->task.test, "/abs/test.jsonl");
  EXPECT_EQ(s->device, "cpu");
  EXPECT_EQ(s->dtype, "auto");
  EXPECT_EQ(s->distill.steps, 200);
  EXPECT_DOUBLE_EQ(s->distill.lr, 1e-3);
  EXPECT_EQ(s->mixer["type"], "gated_deltanet");
  EXPECT_EQ(s->mixer["chunk_size"], 32);
  EXPECT_EQ(s->task.max_new_tokens, 32);
  EXPECT_TRUE(s->search.prefix_cache);
  EXPECT_DOUBLE_EQ(*s->search.tolerance, 0.1);
  EXPECT_FALSE(s->search.p_min.has_value());
  EXPECT_FALSE(s->compare_placements.enabled);
  EXPECT_EQ(s->resolved["distill"]["batch_size"], 8);
}

TEST(JobSpecTest, ErrorsNameTheField) {
  struct Case {
    std::string pointer;
    Json value;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"/distil", Json::object(), "(root): unknown field 'distil'"},
      {"/distill/lr", 0, "distill.lr: must be > 0, got 0"},
      {"/distill/steps", "100", "distill.steps: must be an integer"},
      {"/mixer", {{"type", "gdn"}}, "mixer.type: must be one of"},
      {"/task/type", "qa", "task.type: must be one of"},
      {"/job_id", "Bad Id", "job_id: must match pattern"},
      {"/search/layers", {1, 1}, "search.layers: must have unique items"},
      {"/search/p_min", 0.5, "search: must match exactly one of 2 alternatives, matched 2"},
      {"/device", "tpu", "device: must match pattern"},
  };
  for (const auto& c : cases) {
    Json j = Minimal();
    j[Json::json_pointer(c.pointer)] = c.value;
    auto s = ParseJobSpec(j.dump(), "job.json", "");
    ASSERT_FALSE(s.ok()) << c.pointer;
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument) << c.pointer;
    EXPECT_NE(s.status().message().find("job.json: " + c.expect), std::string::npos)
        << s.status().ToString();
  }
  Json missing = Minimal();
  missing.erase("teacher");
  EXPECT_NE(ParseJobSpec(missing.dump(), "job.json", "")
                .status()
                .message()
                .find("missing required field 'teacher'"),
            std::string::npos);
  EXPECT_EQ(ParseJobSpec("{\"job_id\": ", "job.json", "").status().code(), StatusCode::kDataLoss);
}

TEST(JobSpecTest, SchemaIsCompiledIn) {
  auto j = ParseJson(JobSchemaText(), "schema");
  ASSERT_TRUE(j.ok());
  EXPECT_EQ((*j)["title"], "hybridize job");
}

}  // namespace
}  // namespace hyb
