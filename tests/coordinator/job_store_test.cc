// The job store on a real SQLite file: what survives a reopen, leases and their expiry, the
// retry budget, cancellation, idempotent enqueue and completion, schema versioning.
#include "hyb/storage/job_store.h"

#include <gtest/gtest.h>

#include <fstream>

#include "testing/temp_dir.h"

namespace hyb::storage {
namespace {

using hyb::testing::TempDir;

JobRow Job(const std::string& id, int64_t budget = 2) {
  JobRow j;
  j.id = id;
  j.spec = {{"job_id", id}};
  j.spec_hash = "h-" + id;
  j.retry_budget = budget;
  j.created_ms = j.updated_ms = 1000;
  return j;
}

std::unique_ptr<JobStore> OpenStore(const std::string& path) {
  auto s = JobStore::Open(path);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

TEST(JobStoreTest, JobsSurviveAReopenWithTheirStateAndProgress) {
  TempDir dir;
  const std::string db = dir.File("jobs.db");
  {
    auto s = OpenStore(db);
    EXPECT_EQ(s->schema_version(), JobStore::kSchemaVersion);
    ASSERT_TRUE(s->InsertJob(Job("a")).ok());
    EXPECT_EQ(s->InsertJob(Job("a")).code(), StatusCode::kAlreadyExists);
    ASSERT_TRUE(s->SetJobState("a", JobState::kValidating, "", 2000).ok());
    ASSERT_TRUE(s->SetJobState("a", JobState::kDistilling, "", 2001).ok());
    ASSERT_TRUE(s->SetJobProgress("a", {{"distill", {{"step", 7}}}}, 2002).ok());
    // A transition the state machine forbids changes nothing.
    auto bad = s->SetJobState("a", JobState::kSucceeded, "", 2003);
    EXPECT_EQ(bad.code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(bad.message().find("DISTILLING to SUCCEEDED"), std::string::npos) << bad.ToString();
    ASSERT_TRUE(s->AppendEvent("a", {{"event", "phase"}}, 2004).ok());
    ASSERT_TRUE(s->AppendEvent("a", {{"event", "distill_step"}}, 2005).ok());
  }
  auto s = OpenStore(db);
  auto job = s->GetJob("a");
  ASSERT_TRUE(job.ok() && job->has_value());
  EXPECT_EQ((*job)->state, JobState::kDistilling);
  EXPECT_EQ((*job)->progress["distill"]["step"], 7);
  EXPECT_EQ((*job)->spec["job_id"], "a");
  auto events = s->Events("a", 0, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[1].event["event"], "distill_step");
  auto after = s->Events("a", (*events)[0].seq, 10);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->size(), 1u);
}

TEST(JobStoreTest, LeasesGoOldestFirstAndExpireIntoRetriesUntilTheBudgetIsSpent) {
  TempDir dir;
  auto s = OpenStore(dir.File("jobs.db"));
  ASSERT_TRUE(s->InsertJob(Job("j", /*budget=*/1)).ok());
  ASSERT_TRUE(s->RegisterWorker("w1", {{"host", "h"}}, 0).ok());
  ASSERT_TRUE(s->RegisterWorker("w2", {{"host", "h"}}, 0).ok());
  ASSERT_TRUE(s->EnqueueTask("j:1", "j", "evaluate", {{"n", 1}}, 10).ok());
  ASSERT_TRUE(s->EnqueueTask("j:2", "j", "evaluate", {{"n", 2}}, 11).ok());
  // Enqueueing an existing id returns it unchanged.
  auto again = s->EnqueueTask("j:1", "j", "evaluate", {{"n", 99}}, 12);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->payload["n"], 1);

  auto t1 = s->LeaseTask("w1", 100, 50);
  ASSERT_TRUE(t1.ok() && t1->has_value());
  EXPECT_EQ((*t1)->id, "j:1");
  EXPECT_EQ((*t1)->attempts, 1);
  auto t2 = s->LeaseTask("w2", 100, 50);
  ASSERT_TRUE(t2.ok() && t2->has_value());
  EXPECT_EQ((*t2)->id, "j:2");
  auto none = s->LeaseTask("w1", 100, 50);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());

  // w1 heartbeats (and so keeps its lease); w2 goes silent.
  auto hb = s->Heartbeat("j:1", "w1", {{"step", 3}}, 140, 50);
  ASSERT_TRUE(hb.ok());
  EXPECT_EQ(hb->state, TaskState::kLeased);
  EXPECT_EQ(hb->progress["step"], 3);
  auto expired = s->ExpireLeases(160);
  ASSERT_TRUE(expired.ok());
  EXPECT_EQ(*expired, std::vector<std::string>{"j:2"});
  auto t2row = s->GetTask("j:2");
  EXPECT_EQ((*t2row)->state, TaskState::kQueued);
  EXPECT_NE((*t2row)->error.find("lease expired"), std::string::npos);
  // A heartbeat from the worker that lost the lease does not take it back.
  auto late = s->Heartbeat("j:2", "w2", Json(), 161, 50);
  ASSERT_TRUE(late.ok());
  EXPECT_EQ(late->state, TaskState::kQueued);

  // The retry budget (1) is spent: the next failure is final.
  auto t2b = s->LeaseTask("w1", 200, 50);
  ASSERT_TRUE(t2b.ok() && t2b->has_value());
  EXPECT_EQ((*t2b)->attempts, 2);
  auto failed = s->FailTask("j:2", "w1", "out of memory", false, 210);
  ASSERT_TRUE(failed.ok());
  EXPECT_EQ(*failed, TaskState::kFailed);
  auto job = s->GetJob("j");
  EXPECT_EQ((*job)->retries_used, 2);

  // Completion is idempotent, and a late result from a former holder is accepted.
  ASSERT_TRUE(s->CompleteTask("j:1", "w1", {{"score", 0.5}}, 220).ok());
  ASSERT_TRUE(s->CompleteTask("j:1", "w2", {{"score", 0.7}}, 221).ok());
  auto t1row = s->GetTask("j:1");
  EXPECT_EQ((*t1row)->state, TaskState::kDone);
  EXPECT_EQ((*t1row)->result["score"], 0.5);
  EXPECT_EQ((*t1row)->worker_id, "w1");
}

TEST(JobStoreTest, CancelDropsQueuedTasksAndStopsLeasing) {
  TempDir dir;
  auto s = OpenStore(dir.File("jobs.db"));
  ASSERT_TRUE(s->InsertJob(Job("q")).ok());
  auto st = s->RequestCancel("q", 5);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(*st, JobState::kCancelled);  // nothing ran: cancelled at once

  ASSERT_TRUE(s->InsertJob(Job("r")).ok());
  ASSERT_TRUE(s->RegisterWorker("w", Json::object(), 0).ok());
  ASSERT_TRUE(s->SetJobState("r", JobState::kValidating, "", 1).ok());
  ASSERT_TRUE(s->EnqueueTask("r:a", "r", "distill", Json::object(), 1).ok());
  ASSERT_TRUE(s->EnqueueTask("r:b", "r", "evaluate", Json::object(), 1).ok());
  ASSERT_TRUE(s->LeaseTask("w", 2, 1000).ok());
  st = s->RequestCancel("r", 3);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(*st, JobState::kStopping);
  EXPECT_EQ((*s->GetTask("r:b"))->state, TaskState::kCancelled);
  EXPECT_EQ((*s->GetTask("r:a"))->state, TaskState::kLeased);
  // The running worker reports that it stopped: no retry is spent.
  auto f = s->FailTask("r:a", "w", "stopped at step 4", true, 4);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(*f, TaskState::kCancelled);
  EXPECT_EQ((*s->GetJob("r"))->retries_used, 0);
  ASSERT_TRUE(s->SetJobState("r", JobState::kCancelled, "", 5).ok());
  EXPECT_EQ(*s->CountTasks("r", TaskState::kCancelled), 2);
  auto counts = s->CountTasksByState("r");
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ(counts->at(TaskState::kCancelled), 2);
  EXPECT_EQ(counts->at(TaskState::kQueued), 0);
  EXPECT_EQ(s->CompleteTask("r:b", "w", Json::object(), 6).code(), StatusCode::kFailedPrecondition);
}

TEST(JobStoreTest, AWorkerThatShutsDownHandsItsTaskBackWithoutSpendingARetry) {
  TempDir dir;
  auto s = OpenStore(dir.File("jobs.db"));
  ASSERT_TRUE(s->InsertJob(Job("h")).ok());
  ASSERT_TRUE(s->RegisterWorker("w", Json::object(), 0).ok());
  ASSERT_TRUE(s->EnqueueTask("h:distill", "h", "distill", Json::object(), 1).ok());
  ASSERT_TRUE(s->LeaseTask("w", 2, 1000).ok());
  auto st = s->FailTask("h:distill", "w", "stopped at step 9", /*cancelled=*/true, 3);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(*st, TaskState::kQueued);
  EXPECT_EQ((*s->GetJob("h"))->retries_used, 0);
  auto again = s->LeaseTask("w", 4, 1000);
  ASSERT_TRUE(again.ok() && again->has_value());
  EXPECT_EQ((*again)->attempts, 2);
  auto workers = s->ListWorkers();
  ASSERT_TRUE(workers.ok());
  EXPECT_EQ((*workers)[0].task_id, "h:distill");
}

TEST(JobStoreTest, RefusesFilesThatAreNotItsDatabase) {
  TempDir dir;
  std::ofstream(dir.File("junk.db")) << "this is not a database, just text that is long enough";
  auto s = JobStore::Open(dir.File("junk.db"));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("junk.db"), std::string::npos) << s.status().ToString();
  auto missing = JobStore::Open(dir.File("no/such/dir/x.db"));
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("no/such/dir/x.db"), std::string::npos);
}

}  // namespace
}  // namespace hyb::storage
