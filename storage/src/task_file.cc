#include "hyb/storage/task_file.h"

#include <sstream>

#include "hyb/common/json_util.h"

namespace hyb::storage {

std::string TaskKindName(TaskKind kind) {
  switch (kind) {
    case TaskKind::kLm:
      return "lm";
    case TaskKind::kMultipleChoice:
      return "multiple_choice";
    case TaskKind::kGenerate:
      return "generate";
    case TaskKind::kKlToTeacher:
      return "kl_to_teacher";
  }
  return "?";
}

StatusOr<TaskKind> ParseTaskKind(const std::string& name) {
  for (auto k :
       {TaskKind::kLm, TaskKind::kMultipleChoice, TaskKind::kGenerate, TaskKind::kKlToTeacher}) {
    if (TaskKindName(k) == name) return k;
  }
  return InvalidArgument("task type '" + name +
                         "' is not one of lm, multiple_choice, generate, kl_to_teacher");
}

StatusOr<std::vector<TaskExample>> LoadTaskExamples(const std::string& path, TaskKind kind) {
  HYB_ASSIGN_OR_RETURN(std::string contents, ReadFileToString(path));
  std::vector<TaskExample> out;
  std::stringstream lines(contents);
  std::string line;
  int64_t number = 0;
  while (std::getline(lines, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(number);
    HYB_ASSIGN_OR_RETURN(Json j, ParseJson(line, where));
    if (!j.is_object()) return InvalidArgument(where + ": not a JSON object");
    JsonObject o(j, where);
    TaskExample e;
    switch (kind) {
      case TaskKind::kLm:
      case TaskKind::kKlToTeacher: {
        HYB_RETURN_IF_ERROR(o.CheckKnownKeys({"text", "id"}));
        HYB_ASSIGN_OR_RETURN(e.text, o.String("text"));
        if (e.text.empty()) return o.FieldError("text", "is empty");
        break;
      }
      case TaskKind::kMultipleChoice: {
        HYB_RETURN_IF_ERROR(o.CheckKnownKeys({"context", "choices", "label", "id"}));
        HYB_ASSIGN_OR_RETURN(e.context, o.String("context"));
        if (!o.Has("choices") || !j["choices"].is_array() || j["choices"].size() < 2) {
          return o.FieldError("choices", "must be a list of at least two strings");
        }
        for (const Json& c : j["choices"]) {
          if (!c.is_string() || c.get<std::string>().empty()) {
            return o.FieldError("choices", "must hold non-empty strings");
          }
          e.choices.push_back(c.get<std::string>());
        }
        HYB_ASSIGN_OR_RETURN(e.label, o.Int("label"));
        if (e.label < 0 || e.label >= static_cast<int64_t>(e.choices.size())) {
          return o.FieldError(
              "label", "must index into choices (0.." + std::to_string(e.choices.size() - 1) + ")");
        }
        break;
      }
      case TaskKind::kGenerate: {
        HYB_RETURN_IF_ERROR(o.CheckKnownKeys({"prompt", "answer", "stop", "id"}));
        HYB_ASSIGN_OR_RETURN(e.prompt, o.String("prompt"));
        HYB_ASSIGN_OR_RETURN(e.answer, o.String("answer"));
        e.stop = {"\n"};
        if (o.Has("stop")) {
          if (!j["stop"].is_array()) return o.FieldError("stop", "must be a list of strings");
          e.stop.clear();
          for (const Json& s : j["stop"]) {
            if (!s.is_string() || s.get<std::string>().empty()) {
              return o.FieldError("stop", "must hold non-empty strings");
            }
            e.stop.push_back(s.get<std::string>());
          }
        }
        break;
      }
    }
    out.push_back(std::move(e));
  }
  if (out.empty()) return InvalidArgument(path + ": no examples");
  return out;
}

}  // namespace hyb::storage
