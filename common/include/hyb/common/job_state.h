// A job's life cycle (DESIGN.md §3), shared by the embedded `hybridize run`, the coordinator
// service and its clients. Torch-free.
//
//   QUEUED -> VALIDATING -> DISTILLING -> SEARCHING -> EXPORTING -> SUCCEEDED
//   any non-terminal state -> FAILED
//   any non-terminal state -> STOPPING -> CANCELLED (or FAILED)
//   QUEUED -> CANCELLED (nothing ran yet)
//
// The phases only move forward; a resumed job re-enters them from the start, and moving to
// the state it is already in is allowed (a no-op for the store).
#pragma once

#include <string>
#include <string_view>

#include "hyb/common/status.h"

namespace hyb {

enum class JobState {
  kQueued,
  kValidating,
  kDistilling,
  kSearching,
  kExporting,
  kSucceeded,
  kStopping,
  kFailed,
  kCancelled,
};

// "QUEUED", "VALIDATING", ...
std::string_view JobStateName(JobState state);
// InvalidArgument naming the text for an unknown state.
StatusOr<JobState> ParseJobState(std::string_view name);
// SUCCEEDED, FAILED, CANCELLED.
bool IsTerminal(JobState state);
// One of the four working phases (VALIDATING .. EXPORTING).
bool IsPhase(JobState state);
// Ok when `from -> to` is allowed (see the header comment); FailedPrecondition naming both
// states otherwise.
Status CheckTransition(JobState from, JobState to);

}  // namespace hyb
