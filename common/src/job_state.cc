#include "hyb/common/job_state.h"

#include <array>

namespace hyb {
namespace {

constexpr std::array<std::pair<JobState, std::string_view>, 9> kNames = {{
    {JobState::kQueued, "QUEUED"},
    {JobState::kValidating, "VALIDATING"},
    {JobState::kDistilling, "DISTILLING"},
    {JobState::kSearching, "SEARCHING"},
    {JobState::kExporting, "EXPORTING"},
    {JobState::kSucceeded, "SUCCEEDED"},
    {JobState::kStopping, "STOPPING"},
    {JobState::kFailed, "FAILED"},
    {JobState::kCancelled, "CANCELLED"},
}};

// Position along the forward path QUEUED .. SUCCEEDED; -1 off it.
int Order(JobState s) {
  switch (s) {
    case JobState::kQueued:
      return 0;
    case JobState::kValidating:
      return 1;
    case JobState::kDistilling:
      return 2;
    case JobState::kSearching:
      return 3;
    case JobState::kExporting:
      return 4;
    case JobState::kSucceeded:
      return 5;
    default:
      return -1;
  }
}

}  // namespace

std::string_view JobStateName(JobState state) {
  for (const auto& [s, name] : kNames) {
    if (s == state) return name;
  }
  return "UNKNOWN";
}

StatusOr<JobState> ParseJobState(std::string_view name) {
  for (const auto& [s, n] : kNames) {
    if (n == name) return s;
  }
  return InvalidArgument("unknown job state '" + std::string(name) + "'");
}

bool IsTerminal(JobState state) {
  return state == JobState::kSucceeded || state == JobState::kFailed ||
         state == JobState::kCancelled;
}

bool IsPhase(JobState state) {
  return state == JobState::kValidating || state == JobState::kDistilling ||
         state == JobState::kSearching || state == JobState::kExporting;
}

Status CheckTransition(JobState from, JobState to) {
  bool ok = false;
  if (from == to) {
    ok = true;
  } else if (IsTerminal(from)) {
    ok = false;
  } else if (to == JobState::kFailed || to == JobState::kStopping) {
    ok = true;
  } else if (to == JobState::kCancelled) {
    ok = from == JobState::kStopping || from == JobState::kQueued;
  } else if (from == JobState::kStopping) {
    ok = false;
  } else {
    // Forward along the phases, one step at a time (SUCCEEDED only after EXPORTING).
    ok = Order(to) == Order(from) + 1;
  }
  if (ok) return Status::Ok();
  return FailedPrecondition("a job cannot go from " + std::string(JobStateName(from)) + " to " +
                            std::string(JobStateName(to)));
}

}  // namespace hyb
