// The coordinator service behind `hybridize serve` (DESIGN.md §2, docs/service.md): the HTTP
// API for users and workers, durable job state in SQLite, one driver thread per running job,
// and a reaper that re-queues the tasks of workers that stopped reporting. Torch-free.
//
// A job's driver runs the same JobRunner as `hybridize run` with a RemoteExecutor that puts
// tasks in the store's queue instead of running them: workers lease them over HTTP, report
// progress with heartbeats and upload results. The job directory under the storage root holds
// everything the runner needs to resume (job.json, inputs.json, distillation checkpoints,
// evaluation results, exports), and the database holds the queue, leases, results and events,
// so a coordinator restarted on the same database and storage continues every unfinished job.
//
// Request handling (Handle) is a plain function of the request: the HTTP server calls it from
// many threads at once.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "hyb/common/http.h"
#include "hyb/common/job_spec.h"
#include "hyb/storage/job_store.h"

namespace hyb::coordinator {

struct ServiceOptions {
  // Shared storage: job directories, and the root relative input paths in specs refer to.
  std::string storage_root;
  std::string database;           // the SQLite file; "" = <storage_root>/hybridize.db
  std::string api_token;          // users' bearer token (every route but /healthz, /readyz)
  std::string worker_token;       // workers' bearer token (/v1/worker/...)
  double lease_seconds = 30;      // a worker that misses this long loses its task
  double long_poll_seconds = 20;  // how long a lease request waits for a task
  int64_t retry_budget = 3;       // task failures (lost workers included) a job survives
  double reaper_interval_seconds = 1;
  // SSE streams end after this long without a new event (clients reconnect with a cursor).
  double event_stream_seconds = 300;
};

// The SQLite file the service opens: options.database, or <storage_root>/hybridize.db.
inline std::string DatabasePath(const ServiceOptions& options) {
  return options.database.empty() ? options.storage_root + "/hybridize.db" : options.database;
}

class Service {
 public:
  // Opens (or creates) the database. IoError/DataLoss naming the file.
  static StatusOr<std::unique_ptr<Service>> Create(ServiceOptions options);
  ~Service();

  // Starts a driver for every unfinished job in the database and the lease reaper.
  Status Start();
  // The whole HTTP API. Thread-safe.
  http::Response Handle(const http::Request& request);
  // Drains: new jobs and leases are refused (503), drivers stop without changing their jobs'
  // states (a restarted coordinator resumes them), threads are joined. Idempotent.
  void Stop();
  bool ready() const { return started_ && !stopping_; }

  // Used by job drivers (remote_executor.h): wait until a task changed (completed, failed,
  // heartbeat, expired) or `timeout_ms` passed.
  void WaitForTaskChange(int64_t timeout_ms);
  void NotifyTaskChange();
  storage::JobStore& store() { return *store_; }
  bool stopping() const { return stopping_; }
  const ServiceOptions& options() const { return options_; }

 private:
  explicit Service(ServiceOptions options) : options_(std::move(options)) {}
  void StartDriver(const std::string& job_id);
  void DriveJob(const std::string& job_id);
  void ReapLoop();
  void ReapFinishedDrivers();
  // How often workers report: a third of the lease (so two can be lost), at most 5 s (progress).
  double HeartbeatSeconds() const;
  // Folds a runner event into the job's state and progress, and records it.
  void RecordEvent(const std::string& job_id, const Json& event, Json* progress);

  // Routes.
  http::Response SubmitJob(const http::Request& r);
  http::Response ListJobs(const http::Request& r);
  http::Response GetJob(const std::string& id);
  http::Response CancelJob(const std::string& id);
  http::Response JobEvents(const http::Request& r, const std::string& id);
  http::Response JobReport(const std::string& id, bool html);
  http::Response ListWorkers();
  http::Response WorkerRegister(const http::Request& r);
  http::Response WorkerLease(const http::Request& r);
  http::Response WorkerTaskReport(const http::Request& r, const std::string& task_id,
                                  const std::string& action);
  // Rendezvous of distillation gangs: POST /v1/worker/kv/set {key, value} and
  // POST /v1/worker/kv/get {key, wait_seconds} (404 when the key is not set in time). Keys are
  // scoped by the gang ("<job>/distill/g<attempt>/..."), so a re-formed gang never reads the
  // previous attempt's values. Kept in memory: a restarted coordinator re-forms its gangs.
  http::Response WorkerKv(const http::Request& r, const std::string& action);
  // A gang member waiting for its gang to form: the lease handler parks the worker here until
  // enough workers wait for the oldest queued gang, then leases all members at once.
  std::optional<storage::TaskRow> JoinGangWaitingRoom(const std::string& worker);
  void LeaveGangWaitingRoom(const std::string& worker);

  ServiceOptions options_;
  std::unique_ptr<storage::JobStore> store_;
  std::atomic<bool> started_{false};
  std::atomic<bool> stopping_{false};

  std::mutex drivers_mu_;  // guards drivers_
  struct Driver {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::map<std::string, Driver> drivers_;

  std::mutex task_mu_;  // guards task_version_; task_cv_ waits on it
  std::condition_variable task_cv_;
  uint64_t task_version_ = 0;

  std::mutex kv_mu_;  // guards kv_; kv_cv_ waits on it
  std::condition_variable kv_cv_;
  std::map<std::string, std::string> kv_;

  std::mutex gang_mu_;  // guards waiting_ and assigned_
  std::vector<std::string> waiting_;                       // workers in arrival order
  std::map<std::string, storage::TaskRow> assigned_;       // worker -> its gang member task

  std::mutex reaper_mu_;  // guards reaper wake-ups
  std::condition_variable reaper_cv_;
  std::thread reaper_;
};

// Milliseconds since the epoch.
int64_t NowMs();

}  // namespace hyb::coordinator
