#include "hyb/worker/worker_agent.h"

#include <torch/cuda.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>

#include "hyb/common/tasks.h"
#include "hyb/storage/job_layout.h"
#include "hyb/worker/communicator.h"
#include "hyb/worker/gang.h"
#include "hyb/worker/local_executor.h"

namespace hyb::worker {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string DefaultWorkerId() {
  char host[256] = {0};
  if (gethostname(host, sizeof(host) - 1) != 0) std::snprintf(host, sizeof(host), "worker");
  return std::string(host) + "-" + std::to_string(getpid());
}

void Log(const std::string& id, const std::string& line) {
  std::fprintf(stderr, "[worker %s] %s\n", id.c_str(), line.c_str());
}

}  // namespace

WorkerAgent::WorkerAgent(WorkerOptions options) : options_(std::move(options)) {
  if (options_.worker_id.empty()) options_.worker_id = DefaultWorkerId();
}

WorkerAgent::~WorkerAgent() = default;

StatusOr<http::ClientResponse> WorkerAgent::Post(const std::string& target, const Json& body) {
  const auto start = Clock::now();
  double backoff = 0.2;
  while (true) {
    auto r = client_->Request("POST", target, body.dump());
    if (r.ok() && r->status < 500) return r;
    const std::string why =
        r.ok() ? "HTTP " + std::to_string(r->status) + " " + r->body : r.status().message();
    if (Since(start) > options_.reconnect_seconds) {
      return Unavailable("coordinator " + options_.coordinator_url + " unreachable for " +
                         std::to_string(static_cast<int>(options_.reconnect_seconds)) +
                         " s: " + why);
    }
    if (stop_ && target.find("/lease") != std::string::npos) return Cancelled("stopping");
    Log(options_.worker_id, "POST " + target + ": " + why + "; retrying");
    std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(backoff * 1000)));
    backoff = std::min(backoff * 2, 5.0);
  }
}

Status WorkerAgent::Run() {
  http::ClientOptions co;
  co.bearer_token = options_.token;
  co.ca_file = options_.ca_file;
  co.timeout_s = options_.poll_seconds + 30;
  HYB_ASSIGN_OR_RETURN(http::Client client, http::Client::Create(options_.coordinator_url, co));
  client_ = std::make_unique<http::Client>(std::move(client));
  char host[256] = {0};
  (void)gethostname(host, sizeof(host) - 1);
  const Json info = {{"worker_id", options_.worker_id},
                     {"host", host},
                     {"pid", static_cast<int64_t>(getpid())},
                     {"storage_root", options_.storage_root},
                     {"cpus", static_cast<int64_t>(std::thread::hardware_concurrency())},
                     {"memory_bytes", static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) *
                                          static_cast<int64_t>(sysconf(_SC_PAGE_SIZE))},
                     {"cuda_devices", static_cast<int64_t>(torch::cuda::device_count())}};
  HYB_ASSIGN_OR_RETURN(auto reg, Post("/v1/worker/register", info));
  if (reg.status != 200) {
    return FailedPrecondition("registering with " + options_.coordinator_url + ": HTTP " +
                              std::to_string(reg.status) + " " + reg.body);
  }
  Json r = Json::parse(reg.body, nullptr, false);
  if (r.is_object()) heartbeat_seconds_ = r.value("heartbeat_seconds", heartbeat_seconds_);
  Log(options_.worker_id, "registered with " + options_.coordinator_url);
  int64_t done = 0;
  while (!stop_) {
    auto lease = Post("/v1/worker/lease",
                      {{"worker_id", options_.worker_id}, {"wait_seconds", options_.poll_seconds}});
    if (!lease.ok()) {
      if (stop_) break;
      return lease.status();
    }
    if (lease->status == 204) continue;
    if (lease->status == 404) {  // a coordinator with a new database: register again
      HYB_RETURN_IF_ERROR(Post("/v1/worker/register", info).status());
      continue;
    }
    if (lease->status != 200) {
      return FailedPrecondition("leasing from " + options_.coordinator_url + ": HTTP " +
                                std::to_string(lease->status) + " " + lease->body);
    }
    Json body = Json::parse(lease->body, nullptr, false);
    if (!body.is_object() || !body.contains("task")) {
      return DataLoss("lease answer is not a task: " + lease->body.substr(0, 200));
    }
    heartbeat_seconds_ = body.value("heartbeat_seconds", heartbeat_seconds_);
    HYB_RETURN_IF_ERROR(RunTask(body["task"]));
    if (options_.max_tasks > 0 && ++done >= options_.max_tasks) break;
  }
  return Status::Ok();
}

// The coordinator's /v1/worker/kv routes as a rendezvous store.
class CoordinatorRendezvous final : public RendezvousStore {
 public:
  using PostFn = std::function<StatusOr<http::ClientResponse>(const std::string&, const Json&)>;
  explicit CoordinatorRendezvous(PostFn post) : post_(std::move(post)) {}
  Status Set(const std::string& key, const std::string& value) override {
    HYB_ASSIGN_OR_RETURN(auto r, post_("/v1/worker/kv/set", {{"key", key}, {"value", value}}));
    if (r.status != 200) {
      return Unavailable("setting rendezvous key '" + key + "': HTTP " + std::to_string(r.status) +
                         " " + r.body);
    }
    return Status::Ok();
  }
  StatusOr<std::string> Get(const std::string& key, std::chrono::milliseconds timeout) override {
    const auto deadline = Clock::now() + timeout;
    while (true) {
      const double left =
          std::chrono::duration<double>(deadline - Clock::now()).count();
      HYB_ASSIGN_OR_RETURN(auto r, post_("/v1/worker/kv/get",
                                         {{"key", key}, {"wait_seconds", std::max(0.0, std::min(left, 10.0))}}));
      if (r.status == 200) {
        Json j = Json::parse(r.body, nullptr, false);
        if (j.is_object() && j.contains("value") && j["value"].is_string()) return j["value"].get<std::string>();
        return DataLoss("rendezvous key '" + key + "': malformed answer " + r.body.substr(0, 200));
      }
      if (r.status != 404) {
        return Unavailable("reading rendezvous key '" + key + "': HTTP " + std::to_string(r.status));
      }
      if (Clock::now() >= deadline) {
        return Unavailable("rendezvous key '" + key + "' was not set in time (a gang member did "
                           "not start)");
      }
    }
  }

 private:
  PostFn post_;
};

StatusOr<Json> WorkerAgent::RunGangMember(LocalExecutor& executor, const std::string& task_id,
                                          const Json& payload, const ProgressFn& progress) {
  HYB_ASSIGN_OR_RETURN(DistillTask task,
                       DistillTask::FromJson(payload.value("task", Json()), "task " + task_id));
  const Json gang = payload.value("gang", Json::object());
  const std::string key = gang.value("key", "");
  const int rank = gang.value("rank", -1), size = gang.value("size", 0);
  if (key.empty() || size < 1 || rank < 0 || rank >= size) {
    return InvalidArgument("task " + task_id + ": malformed gang " + gang.dump());
  }
  const auto timeout =
      std::chrono::milliseconds(static_cast<int64_t>(options_.comm_timeout_seconds * 1000));
  CoordinatorRendezvous store(
      [this](const std::string& target, const Json& body) { return Post(target, body); });
  std::string host = options_.advertise_address;
  if (host.empty()) {
    char name[256] = {0};
    (void)gethostname(name, sizeof(name) - 1);
    host = name;
  }
  // CPU tensors and the control values over TCP; on CUDA the stages' tensors over NCCL.
  HYB_ASSIGN_OR_RETURN(auto tcp, TcpConnect(store, key, rank, size, host, timeout, "gang"));
  Log(options_.worker_id, "task " + task_id + ": joined gang " + key + " as rank " +
                              std::to_string(rank) + " of " + std::to_string(size));
  std::unique_ptr<Communicator> nccl;
  Communicator* device_world = tcp.get();
  const std::string& device = executor.runtime().device;
  if (device.rfind("cuda", 0) == 0) {
    // The id's 128 bytes travel hex-encoded (the key-value routes carry JSON strings).
    static const char kHex[] = "0123456789abcdef";
    std::string id;
    if (rank == 0) {
      HYB_ASSIGN_OR_RETURN(id, NcclNewUniqueId());
      std::string hex;
      for (unsigned char c : id) {
        hex += kHex[c >> 4];
        hex += kHex[c & 15];
      }
      HYB_RETURN_IF_ERROR(store.Set(key + "/nccl-id", hex));
    } else {
      HYB_ASSIGN_OR_RETURN(std::string hex, store.Get(key + "/nccl-id", timeout));
      auto nibble = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
      for (size_t i = 0; i + 1 < hex.size(); i += 2) {
        id += static_cast<char>(nibble(hex[i]) << 4 | nibble(hex[i + 1]));
      }
    }
    const int index = device.size() > 5 ? std::stoi(device.substr(5)) : 0;
    HYB_ASSIGN_OR_RETURN(nccl, NcclConnect(id, rank, size, index, timeout, "gang"));
    device_world = nccl.get();
  }
  HYB_ASSIGN_OR_RETURN(DistillResult r,
                       DistillGangPart(executor, tcp.get(), device_world, task, progress));
  return r.ToJson();
}

StatusOr<LocalExecutor*> WorkerAgent::ExecutorFor(const std::string& job_id, bool defer_teacher) {
  if (executor_ && job_id_ == job_id && !defer_teacher) return executor_.get();
  executor_.reset();  // one job's teacher in memory at a time
  job_id_.clear();
  const storage::JobLayout layout(options_.storage_root, job_id);
  HYB_ASSIGN_OR_RETURN(std::string text, ReadFileToString(layout.JobSpec()));
  HYB_ASSIGN_OR_RETURN(JobSpec spec, ParseJobSpec(text, layout.JobSpec(), ""));
  if (options_.threads > 0) spec.threads = options_.threads;
  auto executor = std::make_unique<LocalExecutor>(layout.dir(), defer_teacher);
  HYB_RETURN_IF_ERROR(
      executor->Validate(ResolvePaths(spec, options_.storage_root)).WithContext("job " + job_id));
  executor_ = std::move(executor);
  job_id_ = job_id;
  return executor_.get();
}

Status WorkerAgent::RunTask(const Json& task) {
  const std::string id = task.value("id", "");
  const std::string kind = task.value("kind", "");
  const std::string job_id = task.value("job_id", "");
  const Json payload = task.value("payload", Json::object());
  Log(options_.worker_id,
      "task " + id + " (" + kind + ", attempt " + std::to_string(task.value("attempt", 0)) + ")");
  const auto start = Clock::now();

  std::mutex mu;  // guards progress, finished, outcome, result
  std::condition_variable cv;
  Json progress;
  bool finished = false;
  Status outcome;
  Json result;
  std::atomic<bool> stop_task{false};

  std::thread runner([&] {
    Status s;
    Json out;
    auto executor = ExecutorFor(job_id, kind == "distill_member");
    if (!executor.ok()) {
      s = executor.status();
    } else if (kind == "distill_member") {
      auto r = RunGangMember(**executor, id, payload, [&](const Json& e) {
        {
          std::lock_guard<std::mutex> lock(mu);
          progress = e;
        }
        return !stop_task;
      });
      if (r.ok()) out = *r;
      s = r.status();
      // The stage's teacher was loaded for this task only: the next task loads what it needs.
      executor_.reset();
      job_id_.clear();
    } else if (kind == "distill") {
      auto t = DistillTask::FromJson(payload, "task " + id);
      if (!t.ok()) {
        s = t.status();
      } else {
        auto r = (*executor)->Distill(*t, [&](const Json& e) {
          {
            std::lock_guard<std::mutex> lock(mu);
            progress = e;
          }
          return !stop_task;
        });
        if (r.ok()) out = r->ToJson();
        s = r.status();
      }
    } else if (kind == "evaluate") {
      auto t = EvaluateTask::FromJson(payload, "task " + id);
      if (!t.ok()) {
        s = t.status();
      } else {
        auto r = (*executor)->Evaluate(*t);
        if (r.ok()) out = r->ToJson();
        s = r.status();
      }
    } else if (kind == "export") {
      auto t = ExportTask::FromJson(payload, "task " + id);
      s = t.ok() ? (*executor)->Export(*t) : t.status();
    } else {
      s = InvalidArgument("task " + id + ": unknown kind '" + kind + "'");
    }
    if (!s.ok()) {
      // A failed task may leave the executor's caches half-built: load the job afresh.
      executor_.reset();
      job_id_.clear();
    }
    std::lock_guard<std::mutex> lock(mu);
    finished = true;
    outcome = s;
    result = std::move(out);
    cv.notify_all();
  });

  // Heartbeats until the task finishes; the answer can tell it to stop.
  Status transport;
  {
    std::unique_lock<std::mutex> lock(mu);
    while (!finished) {
      cv.wait_for(lock, std::chrono::milliseconds(static_cast<int64_t>(heartbeat_seconds_ * 1000)),
                  [&] { return finished; });
      if (finished) break;
      const Json p = progress;
      lock.unlock();
      auto hb = Post("/v1/worker/tasks/" + id + "/heartbeat",
                     {{"worker_id", options_.worker_id}, {"progress", p}});
      if (!hb.ok()) {
        transport = hb.status();
        stop_task = true;
      } else if (hb->status == 200) {
        Json a = Json::parse(hb->body, nullptr, false);
        if (a.is_object() && !a.value("continue", true)) {
          if (!stop_task) Log(options_.worker_id, "task " + id + ": told to stop");
          stop_task = true;
        }
      }
      if (stop_) stop_task = true;
      lock.lock();
    }
  }
  runner.join();
  if (!transport.ok()) return transport;

  const double seconds = Since(start);
  if (outcome.ok()) {
    Log(options_.worker_id, "task " + id + " done in " + std::to_string(seconds) + " s");
    auto r = Post("/v1/worker/tasks/" + id + "/complete",
                  {{"worker_id", options_.worker_id}, {"result", result}});
    if (!r.ok()) return r.status();
    if (r->status != 200) {
      Log(options_.worker_id,
          "task " + id + ": result refused: HTTP " + std::to_string(r->status) + " " + r->body);
    }
    return Status::Ok();
  }
  const bool cancelled = outcome.code() == StatusCode::kCancelled;
  Log(options_.worker_id,
      "task " + id + (cancelled ? " stopped: " : " failed: ") + outcome.ToString());
  auto r = Post(
      "/v1/worker/tasks/" + id + "/fail",
      {{"worker_id", options_.worker_id}, {"error", outcome.ToString()}, {"cancelled", cancelled}});
  return r.status();
}

}  // namespace hyb::worker
