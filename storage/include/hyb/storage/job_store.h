// The coordinator's durable state in one SQLite database (WAL): jobs, their tasks and leases,
// results, progress events and workers. Every change is committed before the call returns, so
// a coordinator killed at any point and restarted on the same file continues every unfinished
// job. Large artefacts (checkpoints, exports, reports) live in the storage directory; this file
// holds only what the scheduler and the API need.
//
// Tasks move QUEUED -> LEASED -> DONE, or back to QUEUED when their lease expires or the worker
// reports a failure while the job's retry budget lasts (FAILED once it is spent), or CANCELLED
// with their job. Task ids are deterministic (the job driver derives them from the work), so
// enqueueing a task that exists returns the existing row: a restarted driver finds the results
// of work done while it was away.
//
// Thread-safe: one connection guarded by one mutex. Times are milliseconds since the epoch,
// passed in by the caller (tests use their own clock).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "hyb/common/job_state.h"
#include "hyb/common/json_util.h"
#include "hyb/common/status.h"

struct sqlite3;

namespace hyb::storage {

struct JobRow {
  std::string id;
  Json spec;              // as submitted, defaults filled (paths relative to the storage root)
  std::string spec_hash;  // of spec.dump(): the same id with another hash is a conflict
  JobState state = JobState::kQueued;
  bool cancel_requested = false;
  Json progress = Json::object();
  std::string error;
  int64_t retries_used = 0;
  int64_t retry_budget = 3;
  int64_t created_ms = 0, updated_ms = 0;
};

enum class TaskState { kQueued, kLeased, kDone, kFailed, kCancelled };
std::string_view TaskStateName(TaskState state);

struct TaskRow {
  std::string id;
  std::string job_id;
  std::string kind;  // "distill", "evaluate", "export"
  Json payload;
  TaskState state = TaskState::kQueued;
  std::string worker_id;  // the worker holding (or that last held) the lease
  int64_t lease_expires_ms = 0;
  int64_t attempts = 0;  // leases handed out
  Json result;           // DONE: the result document
  std::string error;     // FAILED: why; also the last failure of a retried task
  Json progress;         // the last progress event a heartbeat carried (null: none)
  int64_t created_ms = 0, updated_ms = 0;
};

struct EventRow {
  int64_t seq = 0;  // increasing over the whole database
  std::string job_id;
  int64_t time_ms = 0;
  Json event;
};

struct WorkerRow {
  std::string id;
  Json info;  // what it registered: host, devices, memory
  int64_t registered_ms = 0, last_seen_ms = 0;
  std::string task_id;  // the task it holds now ("" when idle)
};

class JobStore {
 public:
  // Opens or creates the database at `path` and migrates its schema to the current version.
  // IoError naming the file when it cannot be opened; DataLoss when it is not a database of
  // this program or is newer than this binary.
  static StatusOr<std::unique_ptr<JobStore>> Open(const std::string& path);
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  static constexpr int64_t kSchemaVersion = 1;
  int64_t schema_version() const { return schema_version_; }

  // --- jobs ---
  // AlreadyExists when a job with this id exists (nothing changes).
  Status InsertJob(const JobRow& job);
  StatusOr<std::optional<JobRow>> GetJob(const std::string& id);
  StatusOr<std::vector<JobRow>> ListJobs();  // newest first
  // Moves the job to `to` (CheckTransition's rules; FailedPrecondition otherwise, nothing
  // changes). `error` is stored when not empty. NotFound for an unknown job.
  Status SetJobState(const std::string& id, JobState to, const std::string& error, int64_t now_ms);
  Status SetJobProgress(const std::string& id, const Json& progress, int64_t now_ms);
  // Marks the job to stop: QUEUED -> CANCELLED at once; a working job -> STOPPING; its queued
  // tasks -> CANCELLED. Returns the job's state afterwards (terminal jobs are left as they are).
  StatusOr<JobState> RequestCancel(const std::string& id, int64_t now_ms);

  // --- events ---
  StatusOr<int64_t> AppendEvent(const std::string& job_id, const Json& event, int64_t now_ms);
  // Events of the job with seq > after_seq, oldest first, at most `limit`.
  StatusOr<std::vector<EventRow>> Events(const std::string& job_id, int64_t after_seq,
                                         int64_t limit);

  // --- tasks ---
  // Inserts a QUEUED task, or returns the existing row with this id unchanged.
  StatusOr<TaskRow> EnqueueTask(const std::string& id, const std::string& job_id,
                                const std::string& kind, const Json& payload, int64_t now_ms);
  StatusOr<std::optional<TaskRow>> GetTask(const std::string& id);
  StatusOr<std::vector<TaskRow>> JobTasks(const std::string& job_id);
  // Leases the oldest QUEUED task (of a job that is not stopping) to `worker_id` until
  // now + lease_ms. Empty when none is queued. Gang members (kind "distill_member") are never
  // leased one by one: see LeaseGang.
  StatusOr<std::optional<TaskRow>> LeaseTask(const std::string& worker_id, int64_t now_ms,
                                             int64_t lease_ms);
  // All or none: the oldest gang (the "distill_member" tasks whose payload names the same
  // gang.key, all QUEUED and never leased, of a job that is not stopping) with at most
  // workers.size() members is leased, member k (payload gang.rank) to workers[k]. Empty when no
  // gang fits.
  StatusOr<std::vector<TaskRow>> LeaseGang(const std::vector<std::string>& workers,
                                           int64_t now_ms, int64_t lease_ms);
  // Cancels a QUEUED or LEASED task (its worker's next heartbeat says stop) with `why`, without
  // spending a retry. Other states are left as they are.
  Status CancelTask(const std::string& task_id, const std::string& why, int64_t now_ms);
  // Extends the lease held by `worker_id` and records `progress` (unless null). Returns the
  // row; its state tells the worker whether to go on (LEASED by it) or stop (anything else:
  // cancelled, re-queued after an expiry, or done).
  StatusOr<TaskRow> Heartbeat(const std::string& task_id, const std::string& worker_id,
                              const Json& progress, int64_t now_ms, int64_t lease_ms);
  // Records a result: the task becomes DONE whoever held it (results are deterministic and a
  // late report of a re-queued task is as good as the retry's). A task already DONE stays as
  // it is (idempotent). NotFound for an unknown task; FailedPrecondition for a CANCELLED one.
  Status CompleteTask(const std::string& task_id, const std::string& worker_id, const Json& result,
                      int64_t now_ms);
  // A failure reported by the worker holding the task: one of the job's retries is spent and
  // the task is QUEUED again, or FAILED when the budget is gone. `cancelled`: the worker
  // stopped on request, and no retry is spent: the task is CANCELLED if its job is being
  // cancelled, else QUEUED again (the worker shut down). Reports
  // from a worker that no longer holds the lease are ignored. Returns the task's new state.
  StatusOr<TaskState> FailTask(const std::string& task_id, const std::string& worker_id,
                               const std::string& error, bool cancelled, int64_t now_ms);
  // Every LEASED task whose lease ended before now is treated as a failure of its worker
  // ("lease expired"). Returns the ids of the tasks affected.
  StatusOr<std::vector<std::string>> ExpireLeases(int64_t now_ms);
  // Moves every lease's end to at least `until_ms`: a restarted coordinator gives the workers
  // that held leases while it was down time to reconnect before their tasks are re-queued.
  Status RenewLeases(int64_t until_ms);
  // Number of tasks of the job in `state`.
  StatusOr<int64_t> CountTasks(const std::string& job_id, TaskState state);
  // Number of the job's tasks in every state (one query; states without tasks are 0).
  StatusOr<std::map<TaskState, int64_t>> CountTasksByState(const std::string& job_id);

  // --- workers ---
  Status RegisterWorker(const std::string& id, const Json& info, int64_t now_ms);
  // Records that the worker was seen, holding `task_id` ("" when idle). NotFound when the
  // worker never registered.
  Status TouchWorker(const std::string& id, const std::string& task_id, int64_t now_ms);
  StatusOr<std::vector<WorkerRow>> ListWorkers();

 private:
  JobStore() = default;
  Status Migrate();
  // Fails the task (spending a retry) inside an open transaction.
  StatusOr<TaskState> FailLocked(const TaskRow& task, const std::string& error, int64_t now_ms);

  std::mutex mu_;  // guards db_
  sqlite3* db_ = nullptr;
  std::string path_;
  int64_t schema_version_ = 0;
};

}  // namespace hyb::storage
