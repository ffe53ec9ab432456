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
  EXPECT_FALSE(s->search.prefix_cache_max_mb.has_value());  // "auto"
  EXPECT_EQ(s->resolved["search"]["prefix_cache_max_mb"], "auto");
  EXPECT_EQ(s->search.eval_batch_tokens, 16384);
  EXPECT_EQ(s->search.eval_max_batch_size, 256);
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
      {"/search/eval_batch_tokens", 0, "search.eval_batch_tokens: must be >= 1, got 0"},
      {"/search/eval_batch_tokens", 4194304,
       "search.eval_batch_tokens: must be <= 1048576, got 4194304"},
      {"/search/eval_batch_tokens", 1.5, "search.eval_batch_tokens: must be an integer"},
      {"/search/eval_max_batch_size", -1, "search.eval_max_batch_size: must be >= 1, got -1"},
      {"/search/eval_batch_token", 100, "search: unknown field 'eval_batch_token'"},
      {"/search/prefix_cache_max_mb", "lots",
       "search.prefix_cache_max_mb: must match exactly one of 2 alternatives, matched none"},
      {"/search/prefix_cache_max_mb", -1,
       "search.prefix_cache_max_mb: must match exactly one of 2 alternatives, matched none"},
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

// The evaluation budgets given explicitly: they reach the spec as written.
TEST(JobSpecTest, EvaluationBudgets) {
  Json j = Minimal();
  j["search"]["eval_batch_tokens"] = 4096;
  j["search"]["eval_max_batch_size"] = 8;
  j["search"]["prefix_cache_max_mb"] = 65536;
  auto s = ParseJobSpec(j.dump(), "job.json", "");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->search.eval_batch_tokens, 4096);
  EXPECT_EQ(s->search.eval_max_batch_size, 8);
  EXPECT_EQ(s->search.prefix_cache_max_mb, 65536);
  j["search"]["prefix_cache_max_mb"] = 0;  // records nothing
  s = ParseJobSpec(j.dump(), "job.json", "");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->search.prefix_cache_max_mb, 0);
  j["search"]["prefix_cache_max_mb"] = "auto";
  s = ParseJobSpec(j.dump(), "job.json", "");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_FALSE(s->search.prefix_cache_max_mb.has_value());
}

// Memory budgets are not part of a job's identity (a job that ran out of memory resumes with
// smaller ones; one stored before a budget field existed resumes); what decides results is.
TEST(JobSpecTest, IdentityIgnoresMemoryBudgets) {
  auto base = ParseJobSpec(Minimal().dump(), "job.json", "");
  ASSERT_TRUE(base.ok());
  Json j = Minimal();
  j["search"]["eval_batch_tokens"] = 1024;
  j["search"]["eval_max_batch_size"] = 4;
  j["search"]["prefix_cache_max_mb"] = 100;
  j["search"]["prefix_cache"] = false;
  j["distill"]["parallel"] = {{"pipeline", 2}};
  auto other = ParseJobSpec(j.dump(), "job.json", "");
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  EXPECT_EQ(JobIdentity(base->resolved), JobIdentity(other->resolved));
  // A job.json written before the budgets existed (an explicit 2048, no batch fields).
  Json stored = base->resolved;
  stored["search"]["prefix_cache_max_mb"] = 2048;
  stored["search"].erase("eval_batch_tokens");
  stored["search"].erase("eval_max_batch_size");
  EXPECT_EQ(JobIdentity(stored), JobIdentity(base->resolved));
  j["search"]["kl_examples"] = 5;
  auto differs = ParseJobSpec(j.dump(), "job.json", "");
  ASSERT_TRUE(differs.ok());
  EXPECT_NE(JobIdentity(base->resolved), JobIdentity(differs->resolved));
}

TEST(JobSpecTest, SchemaIsCompiledIn) {
  auto j = ParseJson(JobSchemaText(), "schema");
  ASSERT_TRUE(j.ok());
  EXPECT_EQ((*j)["title"], "hybridize job");
}

}  // namespace
}  // namespace hyb
