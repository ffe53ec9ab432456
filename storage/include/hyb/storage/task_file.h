// Task files: what a job scores candidates on (task.validation, task.test). JSONL, one example
// per line:
//   lm               {"text": "..."}
//   multiple_choice  {"context": "...", "choices": ["...", ...], "label": 0}
//   generate         {"prompt": "...", "answer": "...", "stop": ["\n"]}
//   kl_to_teacher    {"text": "..."}
// Every line may also carry an "id". Torch-free: the coordinator validates these files before
// any teacher is loaded; the scorers (worker/task_scoring.h) run on what they hold.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "hyb/common/status.h"

namespace hyb::storage {

enum class TaskKind { kLm, kMultipleChoice, kGenerate, kKlToTeacher };

// "lm", "multiple_choice", "generate", "kl_to_teacher": the job spec's task.type.
std::string TaskKindName(TaskKind kind);
// InvalidArgument naming `name` and the known kinds.
StatusOr<TaskKind> ParseTaskKind(const std::string& name);

struct TaskExample {
  std::string text;                  // lm, kl_to_teacher
  std::string context;               // multiple_choice
  std::vector<std::string> choices;  // multiple_choice
  int64_t label = -1;                // multiple_choice
  std::string prompt;                // generate
  std::string answer;                // generate
  std::vector<std::string> stop;     // generate (default: a newline)
};

// Reads and validates a task file; errors name the file, line and field, and a file without
// examples is InvalidArgument. Unknown fields are rejected so a typo does not silently change
// what is scored.
StatusOr<std::vector<TaskExample>> LoadTaskExamples(const std::string& path, TaskKind kind);

}  // namespace hyb::storage
