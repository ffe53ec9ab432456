#include "hyb/common/job_state.h"

#include <gtest/gtest.h>

namespace hyb {
namespace {

TEST(JobStateTest, NamesRoundTrip) {
  for (JobState s : {JobState::kQueued, JobState::kValidating, JobState::kDistilling,
                     JobState::kSearching, JobState::kExporting, JobState::kSucceeded,
                     JobState::kStopping, JobState::kFailed, JobState::kCancelled}) {
    auto parsed = ParseJobState(JobStateName(s));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, s);
  }
  EXPECT_EQ(JobStateName(JobState::kDistilling), "DISTILLING");
  auto bad = ParseJobState("RUNNING");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("RUNNING"), std::string::npos);
}

TEST(JobStateTest, PhasesMoveForwardOneStep) {
  EXPECT_TRUE(CheckTransition(JobState::kQueued, JobState::kValidating).ok());
  EXPECT_TRUE(CheckTransition(JobState::kValidating, JobState::kDistilling).ok());
  EXPECT_TRUE(CheckTransition(JobState::kDistilling, JobState::kSearching).ok());
  EXPECT_TRUE(CheckTransition(JobState::kSearching, JobState::kExporting).ok());
  EXPECT_TRUE(CheckTransition(JobState::kExporting, JobState::kSucceeded).ok());
  EXPECT_TRUE(CheckTransition(JobState::kSearching, JobState::kSearching).ok());
  EXPECT_FALSE(CheckTransition(JobState::kSearching, JobState::kDistilling).ok());
  EXPECT_FALSE(CheckTransition(JobState::kQueued, JobState::kSearching).ok());
  EXPECT_FALSE(CheckTransition(JobState::kDistilling, JobState::kSucceeded).ok());
  auto s = CheckTransition(JobState::kSearching, JobState::kValidating);
  EXPECT_NE(s.message().find("SEARCHING to VALIDATING"), std::string::npos) << s.ToString();
}

TEST(JobStateTest, StoppingFailingAndTerminalStates) {
  EXPECT_TRUE(CheckTransition(JobState::kDistilling, JobState::kStopping).ok());
  EXPECT_TRUE(CheckTransition(JobState::kStopping, JobState::kCancelled).ok());
  EXPECT_TRUE(CheckTransition(JobState::kStopping, JobState::kFailed).ok());
  EXPECT_TRUE(CheckTransition(JobState::kQueued, JobState::kCancelled).ok());
  EXPECT_TRUE(CheckTransition(JobState::kExporting, JobState::kFailed).ok());
  EXPECT_FALSE(CheckTransition(JobState::kSearching, JobState::kCancelled).ok());
  EXPECT_FALSE(CheckTransition(JobState::kStopping, JobState::kSearching).ok());
  for (JobState t : {JobState::kSucceeded, JobState::kFailed, JobState::kCancelled}) {
    EXPECT_TRUE(IsTerminal(t));
    EXPECT_FALSE(CheckTransition(t, JobState::kQueued).ok());
    EXPECT_FALSE(CheckTransition(t, JobState::kFailed).ok() && t != JobState::kFailed);
  }
  EXPECT_FALSE(IsTerminal(JobState::kStopping));
  EXPECT_TRUE(IsPhase(JobState::kSearching));
  EXPECT_FALSE(IsPhase(JobState::kQueued));
}

}  // namespace
}  // namespace hyb
