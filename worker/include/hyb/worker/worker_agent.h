// The worker process behind `hybridize worker --coordinator URL` (DESIGN.md §2): registers with
// the coordinator, long-polls for tasks, runs each with an in-process LocalExecutor on the
// shared storage, heartbeats while it works (carrying progress; the answer says whether to go
// on), and uploads the result. Stateless apart from caches: the executor of the last job it
// worked on stays loaded (teacher, distilled mixers, the prefix cache) for that job's next task.
//
// A task told to stop (its job cancelled, or its lease lost) checkpoints where it can
// (distillation) and is reported back as stopped. Transport failures are retried with backoff
// for `reconnect_seconds`, so a coordinator restart does not lose the work in progress.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "hyb/common/http.h"
#include "hyb/common/tasks.h"
#include "hyb/common/status.h"

namespace hyb::worker {

class LocalExecutor;

struct WorkerOptions {
  std::string coordinator_url;     // http(s)://host:port
  std::string token;               // the worker token
  std::string ca_file;             // https: the coordinator's certificate or CA
  std::string storage_root;        // where this worker mounts the shared storage
  std::string worker_id;           // "" = <hostname>-<pid>
  double poll_seconds = 20;        // long-poll length per lease request
  double reconnect_seconds = 300;  // give up after the coordinator is unreachable this long
  int64_t max_tasks = 0;           // exit after this many tasks (0: run until stopped)
  // LibTorch CPU threads for every task, overriding the spec's `threads` (0: the spec's). Lets
  // several workers share one machine without oversubscribing its cores.
  int64_t threads = 0;
  // Distillation gangs: the address other workers reach this one at (its pod IP on Kubernetes;
  // "" = this machine's hostname), and the bound on every wait for another member's tensors.
  std::string advertise_address;
  double comm_timeout_seconds = 600;
};

class WorkerAgent {
 public:
  explicit WorkerAgent(WorkerOptions options);
  ~WorkerAgent();

  // Registers, then leases and runs tasks until Stop() is called (returns Ok), max_tasks are
  // done, or the coordinator stays unreachable past reconnect_seconds (Unavailable).
  Status Run();
  // Asks Run to return after the task in progress (which is told to stop at its next
  // heartbeat). Thread-safe; callable from a signal-handling thread.
  void Stop() { stop_ = true; }

 private:
  // POST `target` with `body` and retries transport failures (and 5xx) until reconnect_seconds.
  StatusOr<http::ClientResponse> Post(const std::string& target, const Json& body);
  Status RunTask(const Json& task);
  // The job's executor; with `defer_teacher` (a gang member) the teacher is not loaded whole.
  StatusOr<LocalExecutor*> ExecutorFor(const std::string& job_id, bool defer_teacher = false);
  // One member of a distillation gang: joins the gang's communicator through the coordinator's
  // key-value routes and distills its pipeline stage.
  StatusOr<Json> RunGangMember(LocalExecutor& executor, const std::string& task_id,
                               const Json& payload, const ProgressFn& progress);

  WorkerOptions options_;
  std::unique_ptr<http::Client> client_;
  std::atomic<bool> stop_{false};
  double heartbeat_seconds_ = 10;
  std::string job_id_;  // the job whose executor is loaded
  std::unique_ptr<LocalExecutor> executor_;
};

}  // namespace hyb::worker
