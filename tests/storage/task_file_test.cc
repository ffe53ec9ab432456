#include "hyb/storage/task_file.h"

#include <gtest/gtest.h>

#include <fstream>

#include "testing/temp_dir.h"

namespace hyb::storage {
namespace {

TEST(TaskFileTest, TaskFilesAreValidatedWithLineNumbers) {
  hyb::testing::TempDir dir;
  auto write = [&](const std::string& body) {
    std::ofstream(dir.File("t.jsonl"), std::ios::trunc) << body;
    return dir.File("t.jsonl");
  };
  auto mc =
      LoadTaskExamples(write("{\"context\": \"q\", \"choices\": [\"a\", \"b\"], \"label\": 1}\n"),
                       TaskKind::kMultipleChoice);
  ASSERT_TRUE(mc.ok()) << mc.status().ToString();
  EXPECT_EQ((*mc)[0].label, 1);
  auto bad =
      LoadTaskExamples(write("{\"context\": \"q\", \"choices\": [\"a\", \"b\"], \"label\": 1}\n"
                             "{\"context\": \"q\", \"choices\": [\"a\", \"b\"], \"label\": 2}\n"),
                       TaskKind::kMultipleChoice);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("t.jsonl:2: field 'label'"), std::string::npos)
      << bad.status().message();
  bad = LoadTaskExamples(write("{\"txt\": \"x\"}\n"), TaskKind::kLm);
  EXPECT_NE(bad.status().message().find("'txt' is not a known field"), std::string::npos);
  bad = LoadTaskExamples(write("{\"prompt\": \"p\"}\n"), TaskKind::kGenerate);
  EXPECT_NE(bad.status().message().find("'answer' is required"), std::string::npos);
  bad = LoadTaskExamples(write("\n\n"), TaskKind::kLm);
  EXPECT_NE(bad.status().message().find("no examples"), std::string::npos);
  EXPECT_FALSE(ParseTaskKind("qa").ok());
  EXPECT_EQ(*ParseTaskKind("kl_to_teacher"), TaskKind::kKlToTeacher);
}

}  // namespace
}  // namespace hyb::storage
