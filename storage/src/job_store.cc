#include "hyb/storage/job_store.h"

#include <sqlite3.h>

#include <array>
#include <map>
#include <utility>

namespace hyb::storage {
namespace {

// The schema, one migration per version: migration i takes user_version i to i + 1.
const std::array<const char*, JobStore::kSchemaVersion> kMigrations = {R"sql(
CREATE TABLE jobs (
  id TEXT PRIMARY KEY,
  spec TEXT NOT NULL,
  spec_hash TEXT NOT NULL,
  state TEXT NOT NULL,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  progress TEXT NOT NULL DEFAULT '{}',
  error TEXT NOT NULL DEFAULT '',
  retries_used INTEGER NOT NULL DEFAULT 0,
  retry_budget INTEGER NOT NULL,
  created_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL
);
CREATE TABLE tasks (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  job_id TEXT NOT NULL REFERENCES jobs(id),
  kind TEXT NOT NULL,
  payload TEXT NOT NULL,
  state TEXT NOT NULL,
  worker_id TEXT NOT NULL DEFAULT '',
  lease_expires_ms INTEGER NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0,
  result TEXT NOT NULL DEFAULT 'null',
  error TEXT NOT NULL DEFAULT '',
  progress TEXT NOT NULL DEFAULT 'null',
  created_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL
);
CREATE INDEX tasks_by_state ON tasks(state, seq);
CREATE INDEX tasks_by_job ON tasks(job_id);
CREATE TABLE events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id TEXT NOT NULL,
  time_ms INTEGER NOT NULL,
  event TEXT NOT NULL
);
CREATE INDEX events_by_job ON events(job_id, seq);
CREATE TABLE workers (
  id TEXT PRIMARY KEY,
  info TEXT NOT NULL,
  registered_ms INTEGER NOT NULL,
  last_seen_ms INTEGER NOT NULL,
  task_id TEXT NOT NULL DEFAULT ''
);
)sql"};

constexpr std::array<std::pair<TaskState, std::string_view>, 5> kTaskStates = {{
    {TaskState::kQueued, "QUEUED"},
    {TaskState::kLeased, "LEASED"},
    {TaskState::kDone, "DONE"},
    {TaskState::kFailed, "FAILED"},
    {TaskState::kCancelled, "CANCELLED"},
}};

TaskState ParseTaskState(std::string_view s) {
  for (const auto& [state, name] : kTaskStates) {
    if (name == s) return state;
  }
  return TaskState::kFailed;
}

// A prepared statement (RAII). Bind parameters are 1-based, columns 0-based.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& Bind(int i, const std::string& v) {
    if (rc_ == SQLITE_OK) {
      rc_ = sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    }
    return *this;
  }
  Statement& Bind(int i, int64_t v) {
    if (rc_ == SQLITE_OK) rc_ = sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  // One step: true while a row is available. Errors are kept for status().
  bool Step() {
    if (rc_ != SQLITE_OK && rc_ != SQLITE_ROW && rc_ != SQLITE_DONE) return false;
    rc_ = sqlite3_step(stmt_);
    return rc_ == SQLITE_ROW;
  }
  // Runs a statement that returns no rows.
  Status Run(const char* what) {
    Step();
    return status(what);
  }
  Status status(const char* what) const {
    if (rc_ == SQLITE_OK || rc_ == SQLITE_ROW || rc_ == SQLITE_DONE) return Status::Ok();
    return IoError(std::string("job store: ") + what + ": " + sqlite3_errmsg(db_));
  }
  std::string Text(int col) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, col));
    return p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(stmt_, col))) : "";
  }
  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  Json JsonCol(int col) const {
    Json j = Json::parse(Text(col), nullptr, /*allow_exceptions=*/false);
    return j.is_discarded() ? Json(nullptr) : j;
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_ = SQLITE_OK;
};

Status Exec(sqlite3* db, const char* sql, const char* what) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) == SQLITE_OK) return Status::Ok();
  std::string msg = err ? err : sqlite3_errmsg(db);
  sqlite3_free(err);
  return IoError(std::string("job store: ") + what + ": " + msg);
}

// BEGIN IMMEDIATE ... COMMIT, rolled back unless Commit() succeeded.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) {
    began_ = Exec(db, "BEGIN IMMEDIATE", "begin transaction");
  }
  ~Transaction() {
    if (began_.ok() && !done_) (void)Exec(db_, "ROLLBACK", "rollback");
  }
  const Status& began() const { return began_; }
  Status Commit() {
    done_ = true;
    return Exec(db_, "COMMIT", "commit");
  }

 private:
  sqlite3* db_;
  Status began_;
  bool done_ = false;
};

constexpr const char* kJobColumns =
    "id, spec, spec_hash, state, cancel_requested, progress, error, retries_used, retry_budget, "
    "created_ms, updated_ms";

JobRow ReadJob(const Statement& s) {
  JobRow j;
  j.id = s.Text(0);
  j.spec = s.JsonCol(1);
  j.spec_hash = s.Text(2);
  auto state = ParseJobState(s.Text(3));
  j.state = state.ok() ? *state : JobState::kFailed;
  j.cancel_requested = s.Int(4) != 0;
  j.progress = s.JsonCol(5);
  j.error = s.Text(6);
  j.retries_used = s.Int(7);
  j.retry_budget = s.Int(8);
  j.created_ms = s.Int(9);
  j.updated_ms = s.Int(10);
  return j;
}

constexpr const char* kTaskColumns =
    "id, job_id, kind, payload, state, worker_id, lease_expires_ms, attempts, result, error, "
    "progress, created_ms, updated_ms";

TaskRow ReadTask(const Statement& s) {
  TaskRow t;
  t.id = s.Text(0);
  t.job_id = s.Text(1);
  t.kind = s.Text(2);
  t.payload = s.JsonCol(3);
  t.state = ParseTaskState(s.Text(4));
  t.worker_id = s.Text(5);
  t.lease_expires_ms = s.Int(6);
  t.attempts = s.Int(7);
  t.result = s.JsonCol(8);
  t.error = s.Text(9);
  t.progress = s.JsonCol(10);
  t.created_ms = s.Int(11);
  t.updated_ms = s.Int(12);
  return t;
}

StatusOr<std::optional<TaskRow>> GetTaskLocked(sqlite3* db, const std::string& id) {
  Statement s(db, (std::string("SELECT ") + kTaskColumns + " FROM tasks WHERE id = ?").c_str());
  s.Bind(1, id);
  if (s.Step()) return std::optional<TaskRow>(ReadTask(s));
  HYB_RETURN_IF_ERROR(s.status("reading task"));
  return std::optional<TaskRow>();
}

StatusOr<std::optional<JobRow>> GetJobLocked(sqlite3* db, const std::string& id) {
  Statement s(db, (std::string("SELECT ") + kJobColumns + " FROM jobs WHERE id = ?").c_str());
  s.Bind(1, id);
  if (s.Step()) return std::optional<JobRow>(ReadJob(s));
  HYB_RETURN_IF_ERROR(s.status("reading job"));
  return std::optional<JobRow>();
}

Status SetTaskState(sqlite3* db, const std::string& id, TaskState state, int64_t now_ms) {
  Statement s(db, "UPDATE tasks SET state = ?, updated_ms = ? WHERE id = ?");
  s.Bind(1, std::string(TaskStateName(state))).Bind(2, now_ms).Bind(3, id);
  return s.Run("updating task");
}

}  // namespace

std::string_view TaskStateName(TaskState state) {
  for (const auto& [s, name] : kTaskStates) {
    if (s == state) return name;
  }
  return "UNKNOWN";
}

StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::string& path) {
  std::unique_ptr<JobStore> store(new JobStore());
  store->path_ = path;
  if (sqlite3_open_v2(path.c_str(), &store->db_,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    const std::string msg = store->db_ ? sqlite3_errmsg(store->db_) : "out of memory";
    return IoError("job store " + path + ": cannot open: " + msg);
  }
  sqlite3_busy_timeout(store->db_, 5000);
  // WAL: readers never block the writer; FULL sync: a committed transition survives power loss.
  if (Status s = Exec(store->db_,
                      "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
                      "PRAGMA foreign_keys=ON;",
                      "configuring");
      !s.ok()) {
    return DataLoss(path + ": " + s.message());
  }
  HYB_RETURN_IF_ERROR(store->Migrate());
  return store;
}

JobStore::~JobStore() { sqlite3_close_v2(db_); }

Status JobStore::Migrate() {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t version = 0;
  {
    Statement s(db_, "PRAGMA user_version");
    if (s.Step()) version = s.Int(0);
    if (Status st = s.status("reading the schema version"); !st.ok()) {
      return DataLoss(path_ + " is not a job store (" + st.message() + ")");
    }
  }
  if (version > kSchemaVersion) {
    return DataLoss(path_ + " has schema version " + std::to_string(version) +
                    ", newer than this binary's " + std::to_string(kSchemaVersion) +
                    "; run a newer hybridize");
  }
  for (int64_t v = version; v < kSchemaVersion; ++v) {
    Transaction tx(db_);
    HYB_RETURN_IF_ERROR(tx.began());
    HYB_RETURN_IF_ERROR(
        Exec(db_, kMigrations[static_cast<size_t>(v)], "migrating").WithContext(path_));
    HYB_RETURN_IF_ERROR(Exec(db_, ("PRAGMA user_version = " + std::to_string(v + 1)).c_str(),
                             "setting the schema version"));
    HYB_RETURN_IF_ERROR(tx.Commit());
  }
  schema_version_ = kSchemaVersion;
  return Status::Ok();
}

Status JobStore::InsertJob(const JobRow& job) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  HYB_RETURN_IF_ERROR(tx.began());
  HYB_ASSIGN_OR_RETURN(auto existing, GetJobLocked(db_, job.id));
  if (existing) return AlreadyExists("job '" + job.id + "' exists");
  Statement s(db_,
              "INSERT INTO jobs (id, spec, spec_hash, state, progress, error, retry_budget, "
              "created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
  s.Bind(1, job.id)
      .Bind(2, job.spec.dump())
      .Bind(3, job.spec_hash)
      .Bind(4, std::string(JobStateName(job.state)))
      .Bind(5, job.progress.dump())
      .Bind(6, job.error)
      .Bind(7, job.retry_budget)
      .Bind(8, job.created_ms)
      .Bind(9, job.updated_ms);
  HYB_RETURN_IF_ERROR(s.Run("inserting job"));
  return tx.Commit();
}

StatusOr<std::optional<JobRow>> JobStore::GetJob(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  return GetJobLocked(db_, id);
}

StatusOr<std::vector<JobRow>> JobStore::ListJobs() {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(
      db_,
      (std::string("SELECT ") + kJobColumns + " FROM jobs ORDER BY created_ms DESC, id").c_str());
  std::vector<JobRow> out;
  while (s.Step()) out.push_back(ReadJob(s));
  HYB_RETURN_IF_ERROR(s.status("listing jobs"));
  return out;
}

Status JobStore::SetJobState(const std::string& id, JobState to, const std::string& error,
                             int64_t now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  HYB_RETURN_IF_ERROR(tx.began());
  HYB_ASSIGN_OR_RETURN(auto job, GetJobLocked(db_, id));
  if (!job) return NotFound("no job '" + id + "'");
  HYB_RETURN_IF_ERROR(CheckTransition(job->state, to).WithContext("job '" + id + "'"));
  Statement s(db_,
              "UPDATE jobs SET state = ?, error = CASE WHEN ? = '' THEN error ELSE ? END, "
              "updated_ms = ? WHERE id = ?");
  s.Bind(1, std::string(JobStateName(to)))
      .Bind(2, error)
      .Bind(3, error)
      .Bind(4, now_ms)
      .Bind(5, id);
  HYB_RETURN_IF_ERROR(s.Run("updating job state"));
  return tx.Commit();
}

Status JobStore::SetJobProgress(const std::string& id, const Json& progress, int64_t now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_, "UPDATE jobs SET progress = ?, updated_ms = ? WHERE id = ?");
  s.Bind(1, progress.dump()).Bind(2, now_ms).Bind(3, id);
  return s.Run("updating job progress");
}

StatusOr<JobState> JobStore::RequestCancel(const std::string& id, int64_t now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  HYB_RETURN_IF_ERROR(tx.began());
  HYB_ASSIGN_OR_RETURN(auto job, GetJobLocked(db_, id));
  if (!job) return NotFound("no job '" + id + "'");
  if (IsTerminal(job->state)) return job->state;
  const JobState to = job->state == JobState::kQueued ? JobState::kCancelled : JobState::kStopping;
  {
    Statement s(db_,
                "UPDATE jobs SET state = ?, cancel_requested = 1, updated_ms = ? WHERE id = ?");
    s.Bind(1, std::string(JobStateName(to))).Bind(2, now_ms).Bind(3, id);
    HYB_RETURN_IF_ERROR(s.Run("cancelling job"));
  }
  {
    Statement s(db_,
                "UPDATE tasks SET state = 'CANCELLED', updated_ms = ? WHERE job_id = ? AND "
                "state = 'QUEUED'");
    s.Bind(1, now_ms).Bind(2, id);
    HYB_RETURN_IF_ERROR(s.Run("cancelling queued tasks"));
  }
  HYB_RETURN_IF_ERROR(tx.Commit());
  return to;
}

StatusOr<int64_t> JobStore::AppendEvent(const std::string& job_id, const Json& event,
                                        int64_t now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_, "INSERT INTO events (job_id, time_ms, event) VALUES (?, ?, ?)");
  s.Bind(1, job_id).Bind(2, now_ms).Bind(3, event.dump());
  HYB_RETURN_IF_ERROR(s.Run("appending event"));
  return static_cast<int64_t>(sqlite3_last_insert_rowid(db_));
}

StatusOr<std::vector<EventRow>> JobStore::Events(const std::string& job_id, int64_t after_seq,
                                                 int64_t limit) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_,
              "SELECT seq, job_id, time_ms, event FROM events WHERE job_id = ? AND seq > ? "
              "ORDER BY seq LIMIT ?");
  s.Bind(1, job_id).Bind(2, after_seq).Bind(3, limit);
  std::vector<EventRow> out;
  while (s.Step()) out.push_back({s.Int(0), s.Text(1), s.Int(2), s.JsonCol(3)});
  HYB_RETURN_IF_ERROR(s.status("reading events"));
  return out;
}

StatusOr<TaskRow> JobStore::EnqueueTask(const std::string& id, const std::string& job_id,
                                        const std::string& kind, const Json& payload,
                                        int64_t now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  HYB_RETURN_IF_ERROR(tx.began());
  HYB_ASSIGN_OR_RETURN(auto existing, GetTaskLocked(db_, id));
  if (existing) return *existing;
  Statement s(db_,
              "INSERT INTO tasks (id, job_id, kind, payload, state, created_ms, updated_ms) "
              "VALUES (?, ?, ?, ?, 'QUEUED', ?, ?)");
  s.Bind(1, id)
      .Bind(2, job_id)
      .Bind(3, kind)
      .Bind(4, payload.dump())
      .Bind(5, now_ms)
      .Bind(6, now_ms);
  HYB_RETURN_IF_ERROR(s.Run("enqueueing task"));
  HYB_ASSIGN_OR_RETURN(auto row, GetTaskLocked(db_, id));
  HYB_RETURN_IF_ERROR(tx.Commit());
  return *row;
}

StatusOr<std::optional<TaskRow>> JobStore::GetTask(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  return GetTaskLocked(db_, id);
}

StatusOr<std::vector<TaskRow>> JobStore::JobTasks(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_,
              (std::string("SELECT ") + kTaskColumns + " FROM tasks WHERE job_id = ? ORDER BY seq")
                  .c_str());
  s.Bind(1, job_id);
  std::vector<TaskRow> out;
  while (s.Step()) out.push_back(ReadTask(s));
  HYB_RETURN_IF_ERROR(s.status("listing tasks"));
  return out;
}

StatusOr<std::optional<TaskRow>> JobStore::LeaseTask(const std::string& worker_id, int64_t now_ms,
                                                     int64_t lease_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  HYB_RETURN_IF_ERROR(tx.began());
  std::string id;
  {
    Statement s(db_,
                "SELECT t.id FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.state = "
                "'QUEUED' AND t.kind != 'distill_member' AND j.cancel_requested = 0 "
                "ORDER BY t.seq LIMIT 1");
    if (s.Step()) id = s.Text(0);
    HYB_RETURN_IF_ERROR(s.status("finding a queued task"));
  }
  if (id.empty()) return std::optional<TaskRow>();
  {
    Statement s(db_,
                "UPDATE tasks SET state = 'LEASED', worker_id = ?, lease_expires_ms = ?, "
                "attempts = attempts + 1, progress = 'null', updated_ms = ? WHERE id = ?");
    s.Bind(1, worker_id).Bind(2, now_ms + lease_ms).Bind(3, now_ms).Bind(4, id);
    HYB_RETURN_IF_ERROR(s.Run("leasing task"));
  }
  {
    Statement s(db_, "UPDATE workers SET task_id = ?, last_seen_ms = ? WHERE id = ?");
    s.Bind(1, id).Bind(2, now_ms).Bind(3, worker_id);
    HYB_RETURN_IF_ERROR(s.Run("recording the worker's task"));
  }
  HYB_ASSIGN_OR_RETURN(auto row, GetTaskLocked(db_, id));
  HYB_RETURN_IF_ERROR(tx.Commit());
  return row;
}

StatusOr<std::vector<TaskRow>> JobStore::LeaseGang(const std::vector<std::string>& workers,
                                                   int64_t now_ms, int64_t lease_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  HYB_RETURN_IF_ERROR(tx.began());
  // Queued, never-leased members by gang, oldest gang first.
  std::vector<std::string> order;
  std::map<std::string, std::vector<TaskRow>> gangs;
  {
    Statement s(db_, (std::string("SELECT ") + kTaskColumns +
                      " FROM tasks t WHERE t.kind = 'distill_member' AND t.state = 'QUEUED' AND "
                      "t.attempts = 0 AND (SELECT cancel_requested FROM jobs j WHERE j.id = "
                      "t.job_id) = 0 ORDER BY t.seq")
                         .c_str());
    while (s.Step()) {
      TaskRow t = ReadTask(s);
      const std::string key = t.payload.value("gang", Json::object()).value("key", "");
      if (!gangs.count(key)) order.push_back(key);
      gangs[key].push_back(std::move(t));
    }
    HYB_RETURN_IF_ERROR(s.status("finding queued gangs"));
  }
  for (const std::string& key : order) {
    std::vector<TaskRow>& members = gangs[key];
    const int64_t size = members.front().payload["gang"].value("size", int64_t{0});
    if (static_cast<int64_t>(members.size()) != size) continue;  // still being enqueued
    if (size > static_cast<int64_t>(workers.size())) continue;
    std::vector<TaskRow> leased;
    for (const TaskRow& m : members) {
      const int64_t rank = m.payload["gang"].value("rank", int64_t{-1});
      if (rank < 0 || rank >= size) return DataLoss("task '" + m.id + "' has no gang rank");
      const std::string& worker = workers[static_cast<size_t>(rank)];
      {
        Statement u(db_,
                    "UPDATE tasks SET state = 'LEASED', worker_id = ?, lease_expires_ms = ?, "
                    "attempts = attempts + 1, progress = 'null', updated_ms = ? WHERE id = ?");
        u.Bind(1, worker).Bind(2, now_ms + lease_ms).Bind(3, now_ms).Bind(4, m.id);
        HYB_RETURN_IF_ERROR(u.Run("leasing a gang member"));
      }
      {
        Statement u(db_, "UPDATE workers SET task_id = ?, last_seen_ms = ? WHERE id = ?");
        u.Bind(1, m.id).Bind(2, now_ms).Bind(3, worker);
        HYB_RETURN_IF_ERROR(u.Run("recording the worker's task"));
      }
      HYB_ASSIGN_OR_RETURN(auto row, GetTaskLocked(db_, m.id));
      leased.push_back(std::move(*row));
    }
    HYB_RETURN_IF_ERROR(tx.Commit());
    return leased;
  }
  return std::vector<TaskRow>();
}

Status JobStore::CancelTask(const std::string& task_id, const std::string& why, int64_t now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  HYB_RETURN_IF_ERROR(tx.began());
  HYB_ASSIGN_OR_RETURN(auto task, GetTaskLocked(db_, task_id));
  if (!task) return NotFound("no task '" + task_id + "'");
  if (task->state != TaskState::kQueued && task->state != TaskState::kLeased) return Status::Ok();
  {
    Statement s(db_,
                "UPDATE tasks SET state = 'CANCELLED', error = ?, lease_expires_ms = 0, "
                "updated_ms = ? WHERE id = ?");
    s.Bind(1, why).Bind(2, now_ms).Bind(3, task_id);
    HYB_RETURN_IF_ERROR(s.Run("cancelling task"));
  }
  {
    Statement s(db_, "UPDATE workers SET task_id = '' WHERE id = ? AND task_id = ?");
    s.Bind(1, task->worker_id).Bind(2, task_id);
    HYB_RETURN_IF_ERROR(s.Run("freeing the worker"));
  }
  return tx.Commit();
}

StatusOr<TaskRow> JobStore::Heartbeat(const std::string& task_id, const std::string& worker_id,
                                      const Json& progress, int64_t now_ms, int64_t lease_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  HYB_RETURN_IF_ERROR(tx.began());
  HYB_ASSIGN_OR_RETURN(auto task, GetTaskLocked(db_, task_id));
  if (!task) return NotFound("no task '" + task_id + "'");
  if (task->state == TaskState::kLeased && task->worker_id == worker_id) {
    Statement s(db_,
                "UPDATE tasks SET lease_expires_ms = ?, progress = CASE WHEN ? = 'null' THEN "
                "progress ELSE ? END, updated_ms = ? WHERE id = ?");
    const std::string p = progress.dump();
    s.Bind(1, now_ms + lease_ms).Bind(2, p).Bind(3, p).Bind(4, now_ms).Bind(5, task_id);
    HYB_RETURN_IF_ERROR(s.Run("extending lease"));
    HYB_ASSIGN_OR_RETURN(task, GetTaskLocked(db_, task_id));
  }
  {
    Statement s(db_, "UPDATE workers SET last_seen_ms = ? WHERE id = ?");
    s.Bind(1, now_ms).Bind(2, worker_id);
    HYB_RETURN_IF_ERROR(s.Run("recording the worker's heartbeat"));
  }
  HYB_RETURN_IF_ERROR(tx.Commit());
  return *task;
}

Status JobStore::CompleteTask(const std::string& task_id, const std::string& worker_id,
                              const Json& result, int64_t now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  HYB_RETURN_IF_ERROR(tx.began());
  HYB_ASSIGN_OR_RETURN(auto task, GetTaskLocked(db_, task_id));
  if (!task) return NotFound("no task '" + task_id + "'");
  if (task->state == TaskState::kDone) return Status::Ok();
  if (task->state == TaskState::kCancelled) {
    return FailedPrecondition("task '" + task_id + "' was cancelled");
  }
  {
    Statement s(db_,
                "UPDATE tasks SET state = 'DONE', result = ?, worker_id = ?, updated_ms = ? "
                "WHERE id = ?");
    s.Bind(1, result.dump()).Bind(2, worker_id).Bind(3, now_ms).Bind(4, task_id);
    HYB_RETURN_IF_ERROR(s.Run("completing task"));
  }
  {
    Statement s(db_,
                "UPDATE workers SET task_id = '', last_seen_ms = ? WHERE id = ? AND task_id = ?");
    s.Bind(1, now_ms).Bind(2, worker_id).Bind(3, task_id);
    HYB_RETURN_IF_ERROR(s.Run("freeing the worker"));
  }
  return tx.Commit();
}

StatusOr<TaskState> JobStore::FailLocked(const TaskRow& task, const std::string& error,
                                         int64_t now_ms) {
  HYB_ASSIGN_OR_RETURN(auto job, GetJobLocked(db_, task.job_id));
  if (!job) return NotFound("task '" + task.id + "' has no job");
  const bool retry = job->retries_used < job->retry_budget && !job->cancel_requested;
  const TaskState to = job->cancel_requested ? TaskState::kCancelled
                                             : (retry ? TaskState::kQueued : TaskState::kFailed);
  {
    Statement s(db_,
                "UPDATE tasks SET state = ?, error = ?, lease_expires_ms = 0, updated_ms = ? "
                "WHERE id = ?");
    s.Bind(1, std::string(TaskStateName(to))).Bind(2, error).Bind(3, now_ms).Bind(4, task.id);
    HYB_RETURN_IF_ERROR(s.Run("failing task"));
  }
  if (!job->cancel_requested) {
    Statement s(db_,
                "UPDATE jobs SET retries_used = retries_used + 1, updated_ms = ? WHERE id = ?");
    s.Bind(1, now_ms).Bind(2, task.job_id);
    HYB_RETURN_IF_ERROR(s.Run("spending a retry"));
  }
  {
    Statement s(db_, "UPDATE workers SET task_id = '' WHERE id = ? AND task_id = ?");
    s.Bind(1, task.worker_id).Bind(2, task.id);
    HYB_RETURN_IF_ERROR(s.Run("freeing the worker"));
  }
  return to;
}

StatusOr<TaskState> JobStore::FailTask(const std::string& task_id, const std::string& worker_id,
                                       const std::string& error, bool cancelled, int64_t now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  HYB_RETURN_IF_ERROR(tx.began());
  HYB_ASSIGN_OR_RETURN(auto task, GetTaskLocked(db_, task_id));
  if (!task) return NotFound("no task '" + task_id + "'");
  if (task->state != TaskState::kLeased || task->worker_id != worker_id) return task->state;
  TaskState to = TaskState::kCancelled;
  if (cancelled) {
    // Stopped on request: cancelled with its job, or handed back (a worker shutting down) to
    // run elsewhere; neither spends a retry.
    HYB_ASSIGN_OR_RETURN(auto job, GetJobLocked(db_, task->job_id));
    to = job && job->cancel_requested ? TaskState::kCancelled : TaskState::kQueued;
    HYB_RETURN_IF_ERROR(SetTaskState(db_, task_id, to, now_ms));
    Statement s(db_, "UPDATE workers SET task_id = '' WHERE id = ? AND task_id = ?");
    s.Bind(1, worker_id).Bind(2, task_id);
    HYB_RETURN_IF_ERROR(s.Run("freeing the worker"));
  } else {
    HYB_ASSIGN_OR_RETURN(to, FailLocked(*task, error, now_ms));
  }
  HYB_RETURN_IF_ERROR(tx.Commit());
  return to;
}

StatusOr<std::vector<std::string>> JobStore::ExpireLeases(int64_t now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  HYB_RETURN_IF_ERROR(tx.began());
  std::vector<TaskRow> expired;
  {
    Statement s(db_, (std::string("SELECT ") + kTaskColumns +
                      " FROM tasks WHERE state = 'LEASED' AND lease_expires_ms < ? ORDER BY seq")
                         .c_str());
    s.Bind(1, now_ms);
    while (s.Step()) expired.push_back(ReadTask(s));
    HYB_RETURN_IF_ERROR(s.status("finding expired leases"));
  }
  std::vector<std::string> ids;
  for (const TaskRow& t : expired) {
    HYB_RETURN_IF_ERROR(
        FailLocked(t, "lease expired: worker '" + t.worker_id + "' stopped reporting", now_ms)
            .status());
    ids.push_back(t.id);
  }
  HYB_RETURN_IF_ERROR(tx.Commit());
  return ids;
}

Status JobStore::RenewLeases(int64_t until_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_,
              "UPDATE tasks SET lease_expires_ms = ? WHERE state = 'LEASED' AND "
              "lease_expires_ms < ?");
  s.Bind(1, until_ms).Bind(2, until_ms);
  return s.Run("renewing leases");
}

StatusOr<int64_t> JobStore::CountTasks(const std::string& job_id, TaskState state) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_, "SELECT COUNT(*) FROM tasks WHERE job_id = ? AND state = ?");
  s.Bind(1, job_id).Bind(2, std::string(TaskStateName(state)));
  int64_t n = 0;
  if (s.Step()) n = s.Int(0);
  HYB_RETURN_IF_ERROR(s.status("counting tasks"));
  return n;
}

StatusOr<std::map<TaskState, int64_t>> JobStore::CountTasksByState(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_, "SELECT state, COUNT(*) FROM tasks WHERE job_id = ? GROUP BY state");
  s.Bind(1, job_id);
  std::map<TaskState, int64_t> counts;
  for (const auto& [state, name] : kTaskStates) counts[state] = 0;
  while (s.Step()) counts[ParseTaskState(s.Text(0))] = s.Int(1);
  HYB_RETURN_IF_ERROR(s.status("counting tasks"));
  return counts;
}

Status JobStore::RegisterWorker(const std::string& id, const Json& info, int64_t now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_,
              "INSERT INTO workers (id, info, registered_ms, last_seen_ms) VALUES (?, ?, ?, ?) "
              "ON CONFLICT(id) DO UPDATE SET info = excluded.info, last_seen_ms = "
              "excluded.last_seen_ms");
  s.Bind(1, id).Bind(2, info.dump()).Bind(3, now_ms).Bind(4, now_ms);
  return s.Run("registering worker");
}

Status JobStore::TouchWorker(const std::string& id, const std::string& task_id, int64_t now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_, "UPDATE workers SET last_seen_ms = ?, task_id = ? WHERE id = ?");
  s.Bind(1, now_ms).Bind(2, task_id).Bind(3, id);
  HYB_RETURN_IF_ERROR(s.Run("recording the worker"));
  if (sqlite3_changes(db_) == 0) return NotFound("worker '" + id + "' is not registered");
  return Status::Ok();
}

StatusOr<std::vector<WorkerRow>> JobStore::ListWorkers() {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_,
              "SELECT id, info, registered_ms, last_seen_ms, task_id FROM workers ORDER BY id");
  std::vector<WorkerRow> out;
  while (s.Step()) out.push_back({s.Text(0), s.JsonCol(1), s.Int(2), s.Int(3), s.Text(4)});
  HYB_RETURN_IF_ERROR(s.status("listing workers"));
  return out;
}

}  // namespace hyb::storage
